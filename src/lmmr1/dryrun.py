"""``lmmr1 train RECIPE --dry-run``: check everything a run needs, without loading any weights.

A run that fails after the model has loaded (minutes on a GPU) on row 31,207 of the data, on a reward
file with a typo, or on an output_dir that is a file wastes the most expensive part of the job.  The
dry run does every check that does not need the weights, in the order a run meets them:

1. the config (``Config.validate``: ranges, enums, required sections);
2. the model directory: config.json, a supported architecture, weight files present (not read),
   tokenizer files, the image processor config for a VLM; then the tokenizer and image processor
   (small files) are loaded, to count prompt tokens;
3. every data row: parsed, every image fully decoded, every prompt measured against
   ``model.max_prompt_tokens`` and the model's context (``max_position_embeddings``);
4. the rewards: built (custom reward files are imported, remote URLs parsed);
5. output_dir: not a file, and writable (nothing is created).

A pipeline recipe is checked stage by stage; stages after the first start from the previous
stage's model, which does not exist yet, so their prompts are measured with the base model's
tokenizer (a pipeline never changes the tokenizer).  ``synth:`` data that is not generated yet is
checked by drawing one problem of each spec.

Every failure is the same one-line :class:`LmmR1Error` a real run would raise, so the CLI exits 2.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmmr1.data import DataConfig, PromptDataset, model_context_tokens
from lmmr1.errors import LmmR1Error, ModelLoadError
from lmmr1.models.loader import read_model_config
from lmmr1.trainer.config import Config, ConfigError


# ------------------------------------------------------------------------------------------- model
def check_model_dir(path: str | Path) -> dict[str, Any]:
    """What ``load_model`` checks before it reads weights; returns model_type, VLM flag, context."""
    from lmmr1.models.loader import TEXT_TYPES, VLM_TYPES

    p = Path(path).expanduser()
    cfg = read_model_config(p)
    model_type = cfg.get("model_type")
    if model_type not in VLM_TYPES + TEXT_TYPES:
        raise ModelLoadError(f"unsupported architecture {model_type!r} (model_type in {p / 'config.json'}); "
                             f"supported: {', '.join(VLM_TYPES)} (vision-language), {', '.join(TEXT_TYPES)} (text-only)")
    weights = sorted(p.glob("*.safetensors")) + sorted(p.glob("pytorch_model*.bin"))
    if not weights:
        raise ModelLoadError(f"{p} has config.json but no weights (*.safetensors or pytorch_model*.bin)")
    if not ((p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists()):
        raise ModelLoadError(f"{p} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    is_vlm = model_type in VLM_TYPES
    if is_vlm and not (p / "preprocessor_config.json").exists():
        raise ModelLoadError(f"{p} is a {model_type} checkpoint without preprocessor_config.json; copy it from the "
                             "original checkpoint (it sets the image pixel budget)")
    return {"path": str(p), "model_type": model_type, "vlm": is_vlm, "context": model_context_tokens(p),
            "weight_files": len(weights), "weight_bytes": sum(w.stat().st_size for w in weights)}


def load_processor(path: str | Path, max_prompt_tokens: int | None = None):
    """The model's ChatProcessor from its tokenizer and image-processor files only (no weights)."""
    import transformers

    from lmmr1.models.loader import VLM_TYPES
    from lmmr1.models.processor import ChatProcessor

    p = Path(path).expanduser()
    is_vlm = read_model_config(p).get("model_type") in VLM_TYPES
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(p)
        image_processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(p) if is_vlm else None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the tokenizer / image processor in {p}: {str(e).splitlines()[0]}") from e
    return ChatProcessor(tokenizer, image_processor, max_prompt_tokens=max_prompt_tokens)


# -------------------------------------------------------------------------------------- output_dir
def check_output_dir(path: str | Path) -> str:
    """Refuse an output_dir that is a file or cannot be written; creates nothing.  Returns a status."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise LmmR1Error(f"output_dir {p} is a file; choose a directory path")
        if not os.access(p, os.W_OK | os.X_OK):
            raise LmmR1Error(f"output_dir {p} is not writable")
        held = [n for n in ("config.yaml", "metrics.jsonl", "checkpoints", "final", "STAGE_COMPLETE")
                if (p / n).exists()]
        return f"exists, holds {', '.join(held)}" if held else "exists, empty of runs"
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise LmmR1Error(f"output_dir {p}: {parent} is a file, so the directory cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LmmR1Error(f"output_dir {p} cannot be created: {parent} is not writable")
    return "will be created"


# ------------------------------------------------------------------------------------ data, rewards
def check_data(cfg: Config, processor, context: int | None) -> list[dict[str, Any]]:
    """Every row parsed, every image decoded, every prompt measured; one summary dict per dataset."""
    out = []
    for d in cfg.data:
        ds = PromptDataset.load(DataConfig(path=d.path, input_key=d.input_key, label_key=d.label_key,
                                           image_key=d.image_key, system_prompt=d.system_prompt,
                                           skip_invalid=d.skip_invalid, max_pixels=d.max_pixels,
                                           max_prompt_tokens=cfg.model.max_prompt_tokens, name=d.name,
                                           image_root=d.image_root))
        n_images = ds.decode_all()
        longest = ds.check_prompt_lengths(processor, context_tokens=context)
        if cfg.type == "sft":
            for ex in ds.examples:
                resp = ex.fields.get(d.response_key)
                if not isinstance(resp, str) or not resp.strip():
                    raise LmmR1Error(f"{ex.source}: SFT needs field '{d.response_key}' (the assistant's reply); "
                                     "it is missing or empty")
        out.append({"name": ds.name, "path": d.path, "rows": len(ds), "skipped": len(ds.skipped),
                    "images": n_images, "longest_prompt": longest})
    return out


def check_rewards(cfg: Config) -> list[str]:
    """Build and check the rewards as the trainer does (custom reward files imported and called
    once on a sample); returns their names."""
    from lmmr1.rewards import RewardSpec
    from lmmr1.rewards import check_rewards as build_and_check

    composite = build_and_check([RewardSpec(**asdict(r)) for r in cfg.reward])
    try:
        return [f"{n} x{w:g}" for n, w in composite.weights.items()]
    finally:
        composite.close()


# ------------------------------------------------------------------------------------------ stages
def _model(cfg: Config) -> tuple[dict, Any]:
    """(model summary, processor) of cfg.model; a model.tiny is built into a throwaway folder."""
    path, tmp = cfg.model.path, None
    try:
        if not path:  # model.tiny: built at run time; a throwaway copy gives its tokenizer
            from lmmr1.models import make_tiny

            tmp = tempfile.TemporaryDirectory(prefix="lmmr1-dry-run-")
            path = str(make_tiny(Path(tmp.name) / "tiny", size=cfg.model.tiny, seed=cfg.model.tiny_seed))
        info = check_model_dir(path)
        if not cfg.model.path:
            info["path"] = f"model.tiny={cfg.model.tiny} (built at run time)"
        return info, load_processor(path)
    finally:
        if tmp is not None:
            tmp.cleanup()


def check_config(cfg: Config, *, model: tuple[dict, Any] | None = None, label: str = "",
                 pending: tuple[str, ...] = ()) -> dict:
    """All checks for one Config.  ``model`` (summary, processor) is passed for later pipeline stages
    (whose own model is the previous stage's output); datasets in ``pending`` are generated at run
    time and not read.  Returns the summary the CLI prints; errors are prefixed with ``label``."""
    where = f"{label}: " if label else ""
    try:
        cfg.validate()
        info, processor = model or _model(cfg)
        ready = [d for d in cfg.data if d.path not in pending]
        data = check_data(dataclasses.replace(cfg, data=ready), processor, info.get("context")) if ready else []
        rewards = [] if cfg.type == "sft" or cfg.episode.turns else check_rewards(cfg)  # episodes: the env pays
        status = check_output_dir(cfg.output_dir)
    except LmmR1Error as e:
        raise type(e)(f"{where}{e}") from None
    return {"label": label, "type": cfg.type, "steps": cfg.train.steps, "model": info, "processor": processor,
            "data": data, "pending": len(cfg.data) - len(ready), "rewards": rewards,
            "output_dir": str(cfg.output_dir), "output_status": status}


SYNTH_KEYS = ("suite", "split", "n", "modality", "seed", "image_size", "name", "knobs")


def check_synth(data: dict) -> list[str]:
    """Each synth spec is drawn once (suite, split and knobs valid) without writing anything."""
    from lmmr1.data.synth import problems

    out = []
    for i, spec in enumerate(data.get("synth") or []):
        if not isinstance(spec, dict):
            raise ConfigError(f"synth[{i}] must be a mapping with keys {', '.join(SYNTH_KEYS)}")
        unknown = sorted(set(spec) - set(SYNTH_KEYS))
        if unknown:
            raise ConfigError(f"synth[{i}]: unknown keys {unknown} (use {', '.join(SYNTH_KEYS)})")
        spec = dict(spec)
        knobs = spec.pop("knobs", {}) or {}
        suite, split, n = spec.get("suite"), spec.get("split", "train"), spec.get("n", 100)
        next(iter(problems(suite, split, 1, int(spec.get("seed", 0)), **knobs)), None)
        out.append(f"{suite}/{split} x{n}")
    return out


def check_eval(data: dict) -> list[str]:
    """A pipeline's eval section: known keys, and every suite file that exists already is read and
    validated like a benchmark (``synth:`` suites are generated at run time)."""
    from lmmr1.data.benchmarks import load_benchmark
    from lmmr1.eval import EvalConfig

    spec = dict(data.get("eval") or {})
    suites = spec.pop("suites", {}) or {}
    system = spec.pop("system_prompt", "r1")
    try:
        EvalConfig(**spec)
    except TypeError as e:
        raise ConfigError(f"eval: {e} (keys: suites, system_prompt, {', '.join(EvalConfig.__dataclass_fields__)})"
                          ) from None
    out = []
    for name, path in suites.items():
        if isinstance(path, str) and path.startswith("synth:"):
            out.append(f"{name} (synth)")
            continue
        if not Path(str(path)).exists():
            raise ConfigError(f"eval.suites.{name}: {path} does not exist")
        out.append(f"{name} ({len(load_benchmark(path, name=name, system_prompt=system))} problems)")
    return out


def dry_run(recipe: str | Path, overrides: list[str] | None = None) -> list[dict]:
    """Check a single-stage or pipeline recipe; one summary per stage (raises on the first problem)."""
    from lmmr1.pipeline import is_pipeline, load_pipeline, stage_configs
    from lmmr1.trainer.config import load_config

    if not is_pipeline(recipe):
        return [check_config(load_config(recipe, overrides))]
    data = load_pipeline(recipe, overrides)
    synth_dir = Path(data.get("output_dir", "runs/lmmr1")) / "data"
    synth = check_synth(data)
    evals = check_eval(data)
    summaries: list[dict] = []
    for i, (name, cfg) in enumerate(stage_configs(data)):
        pending = tuple(d.path for d in cfg.data if Path(d.path).parent == synth_dir and not Path(d.path).exists())
        prev = summaries[-1] if summaries else None
        if prev is not None:  # trains from the previous stage's final model (same tokenizer)
            cfg.model.path, cfg.model.tiny = f"{prev['output_dir']}/final", None
        model = (dict(prev["model"], path=f"{cfg.model.path} (made by the stage before)", weight_files=None),
                 prev["processor"]) if prev else None
        summaries.append(check_config(cfg, model=model,
                                      label=f"stage {i} '{name}'", pending=pending))
    if summaries:
        summaries[0]["synth"] = synth
        summaries[0]["eval"] = evals
    return summaries


def format_summary(summaries: list[dict]) -> list[str]:
    lines = []
    for s in summaries:
        m = s["model"]
        lines.append(f"{s['label'] or 'run'}: {s['type']}, {s['steps']} steps")
        ctx = f", context {m['context']}" if m.get("context") else ""
        files = "" if m.get("weight_files") is None else f", {m['weight_files']} weight file(s) present, not loaded"
        lines.append(f"  model: {m['path']} ({m['model_type']}{ctx}{files})")
        for d in s.get("data", []):
            lines.append(f"  data {d['name']}: {d['rows']} rows ({d['skipped']} skipped), {d['images']} images "
                         f"decoded, longest prompt {d['longest_prompt']} tokens")
        if s.get("pending"):
            lines.append(f"  data: {s['pending']} synth dataset(s) generated at run time (spec checked)")
        if s.get("synth"):
            lines.append(f"  synth: {', '.join(s['synth'])}")
        if s.get("eval"):
            lines.append(f"  eval suites: {', '.join(s['eval'])}")
        if s["rewards"]:
            lines.append(f"  rewards: {', '.join(s['rewards'])}")
        lines.append(f"  output_dir: {s['output_dir']} ({s['output_status']})")
    return lines
