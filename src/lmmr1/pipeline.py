"""Multi-stage recipes: (cold-start SFT ->) FRE (text RL) -> MGT (multimodal RL), one command.

A recipe with a ``stages:`` list is a pipeline.  Its other sections (``model``, ``rollout``, ``algo``,
``optim``, ``train``, ...) are defaults that every stage deep-merges its own settings over.
Stage k trains from stage k-1's final checkpoint (the first from ``model``), in
``{output_dir}/{k}_{name}/``; a finished stage (final model saved, evaluation written) gets a
``STAGE_COMPLETE`` marker, so re-running the command after a kill skips finished stages and
resumes the interrupted one from its last checkpoint.

Optional sections: ``synth:`` generates synthetic task files into ``{output_dir}/data`` first (a
data path ``synth:NAME`` means ``{output_dir}/data/NAME.jsonl``); ``eval:`` lists held-out suites
evaluated after every stage.  The run ends with ``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import yaml
from rich.console import Console

from lmmr1.trainer.config import (
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    read_recipe,
    resolve_paths,
    to_dict,
)
from lmmr1.trainer.rundir import describe_changes, recipe_changes

PIPELINE_KEYS = ("stages", "synth", "eval")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def is_pipeline(recipe: str | Path) -> bool:
    try:
        data = read_recipe(recipe)
    except ConfigError:  # load_config then reports why the file cannot be read
        return False
    return isinstance(data, dict) and "stages" in data


def load_pipeline(recipe: str | Path, overrides: list[str] | None = None) -> dict:
    p = Path(recipe)
    data = read_recipe(p)
    base_dir = p.parent.resolve()
    resolve_paths(data, base_dir)
    for st in data.get("stages") or []:
        if isinstance(st, dict):
            resolve_paths(st, base_dir)
    data = apply_overrides(data, overrides or [])
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{p}: 'stages' must be a non-empty list")
    names = []
    for i, st in enumerate(stages):
        if not isinstance(st, dict) or not st.get("name"):
            raise ConfigError(f"{p}: stages[{i}] needs a 'name'")
        names.append(st["name"])
    if len(set(names)) != len(names):
        raise ConfigError(f"{p}: stage names must be unique, got {names}")
    return data


def _synth_path(value: str, root: Path) -> str:
    return str(root / "data" / f"{value[len('synth:'):]}.jsonl") if value.startswith("synth:") else value


def stage_configs(data: dict) -> list[tuple[str, Config]]:
    """Validated Config per stage (model paths chained at run time)."""
    root = Path(data.get("output_dir", "runs/lmmr1"))
    base = {k: v for k, v in data.items() if k not in PIPELINE_KEYS}
    out = []
    for i, st in enumerate(data["stages"]):
        name = st["name"]
        merged = deep_merge(base, {k: v for k, v in st.items() if k != "name"})
        merged["output_dir"] = str(root / f"{i}_{name}")
        for d in merged.get("data") or []:
            if isinstance(d, dict) and isinstance(d.get("path"), str):
                d["path"] = _synth_path(d["path"], root)
        try:
            cfg = from_dict(Config, merged, "")
        except ConfigError as e:
            raise ConfigError(f"stage '{name}': {e}") from None
        out.append((name, cfg))
    return out


def run_synth(data: dict, root: Path, console: Console) -> None:
    from lmmr1.data.synth import write_suite

    for spec in data.get("synth") or []:
        spec = dict(spec)
        knobs = spec.pop("knobs", {}) or {}
        suite, split = spec.pop("suite"), spec.pop("split", "train")
        n, modality = int(spec.pop("n", 100)), spec.pop("modality", "both")
        seed, size = int(spec.pop("seed", 0)), int(spec.pop("image_size", 112))
        name = spec.pop("name", None) or suite
        if spec:
            raise ConfigError(f"synth: unknown keys {sorted(spec)} "
                              "(use suite, split, n, modality, seed, image_size, name, knobs)")
        mods = ("text", "image") if modality == "both" else (modality,)
        # files from an earlier invocation are reused only if they were made from the same spec
        stamp = root / "data" / f"{name}_{split}.synth.json"
        made_from = json.dumps({"suite": suite, "n": n, "modality": modality, "seed": seed, "image_size": size,
                                "knobs": knobs}, sort_keys=True)
        if (stamp.exists() and stamp.read_text() == made_from
                and all((root / "data" / f"{name}_{split}_{m}.jsonl").exists() for m in mods)):
            continue
        written = write_suite(root / "data", suite, split, n, modality, seed=seed, image_size=size, name=name, **knobs)
        stamp.write_text(made_from)
        made = sum(1 for _ in next(iter(written.values())).open())
        console.print(f"synthesised {suite}/{split} ({made} problems, {modality}) into {root / 'data'}")
        if made < n:
            from lmmr1.data.synth import shortfall_message

            console.print(f"[yellow]warning:[/] {shortfall_message(suite, split, n, made, knobs)}", highlight=False)


def run_eval(model_dir: Path, data: dict, root: Path, out_file: Path, console: Console) -> dict:
    from lmmr1.data.benchmarks import load_benchmark
    from lmmr1.eval import EvalConfig, evaluate, write_results
    from lmmr1.models import load_model

    spec = dict(data.get("eval") or {})
    suites_spec = spec.pop("suites", {}) or {}
    if not suites_spec:
        return {}
    system = spec.pop("system_prompt", "r1")
    try:
        cfg = EvalConfig(**spec)
    except TypeError as e:
        raise ConfigError(f"eval: {e} (keys: suites, system_prompt, n, temperature, top_p, max_new_tokens, "
                          "batch_size, seed, samples_per_suite)") from None
    suites = {name: load_benchmark(_synth_path(path, root), name=name, system_prompt=system)
              for name, path in suites_spec.items()}
    lm = load_model(model_dir)
    results = evaluate(lm, suites, cfg)
    write_results(results, out_file)
    for name, r in results.items():
        console.print(f"  eval {name}: accuracy {r['accuracy']:.3f}  format {r['format_rate']:.3f}  "
                      f"len {r['mean_length']:.1f}" + (f"  return {r['mean_return']:.3f}" if "mean_return" in r else ""))
    return results


def _check_finished_stage(name: str, cfg: Config, sdir: Path) -> None:
    """A finished stage is skipped only if the recipe still asks for the same stage: after an edit
    of the recipe (or a new version of it) reusing output_dir would silently report old results."""
    saved = sdir / "config.yaml"
    if not saved.exists():
        return
    # model.path is chained from the previous stage at run time, so it is not part of the comparison
    changed = recipe_changes(yaml.safe_load(saved.read_text()), to_dict(cfg), ignore=("model.path", "model.tiny"))
    if changed:
        raise ConfigError(f"stage '{name}' in {sdir} finished with a different config (changed: "
                          f"{describe_changes(changed)}); use a new output_dir, or delete {sdir.parent} to start over")


def run_pipeline(recipe: str | Path, overrides: list[str] | None = None, console: Console | None = None) -> dict:
    from lmmr1.models import make_tiny
    from lmmr1.report import write_report
    from lmmr1.trainer.trainer import Trainer

    console = console or Console(stderr=True)
    data = load_pipeline(recipe, overrides)
    root = Path(data.get("output_dir", "runs/lmmr1"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    (root / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    stages = stage_configs(data)
    for name, cfg in stages:  # a bad value in the last stage is found now, not hours into the first
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"stage '{name}': {e}") from None
    run_synth(data, root, console)

    model = data.get("model") or {}
    prev = model.get("path")
    if not prev:
        if not model.get("tiny"):
            raise ConfigError("model.path (or model.tiny) is required")
        base = root / "base_model"
        if not (base / "config.json").exists():
            make_tiny(base, size=model["tiny"], seed=int(model.get("tiny_seed", 0)))
        prev = str(base)

    summary_stages = []
    for i, (name, cfg) in enumerate(stages):
        sdir = Path(cfg.output_dir)
        marker = sdir / "STAGE_COMPLETE"
        if marker.exists():
            _check_finished_stage(name, cfg, sdir)
            console.print(f"[dim]stage {i} '{name}' already complete; skipping[/]")
        else:
            console.rule(f"stage {i}: {name} ({cfg.type})")
            cfg.model.path, cfg.model.tiny = prev, None
            st0 = time.perf_counter()
            Trainer(cfg, console).train()
            run_eval(sdir / "final", data, root, sdir / "eval.json", console)
            marker.write_text(json.dumps({"wall_s": round(time.perf_counter() - st0, 1)}))
        prev = str(sdir / "final")
        eval_res = json.loads((sdir / "eval.json").read_text()) if (sdir / "eval.json").exists() else {}
        info = json.loads(marker.read_text())
        summary_stages.append({
            "name": name, "type": cfg.type, "dir": str(sdir), "model": prev, "wall_s": info.get("wall_s"),
            "eval": {s: {k: r[k] for k in ("accuracy", "format_rate", "mean_length", "problems", "success_rate",
                                            "mean_return") if k in r}  # the last two: env suites
                     for s, r in eval_res.items()},
        })
    summary = {"recipe": str(recipe), "output_dir": str(root), "stages": summary_stages,
               "final_model": prev, "wall_s_this_invocation": round(time.perf_counter() - t0, 1)}
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(root)
    console.print(f"summary: {root / 'summary.json'}   report: {root / 'report.html'}")
    return summary
