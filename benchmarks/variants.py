"""The neighbouring papers' methods against GRPO on the CPU counting demo, one table (issue 13).

    python benchmarks/variants.py --fre RUN/1_fre_text_rl --jobs 2       # reuse a finished demo FRE stage
    python benchmarks/variants.py                                         # runs SFT + FRE first (~6 min alone)
    python benchmarks/variants.py --steps 40 --prompts 24 --seeds 0 1 2 --only grpo ema_grpo

What it measures, and why this budget.  The demo's full budget (SFT -> FRE -> 300 MGT steps of 40
prompts, ~11 min per run alone on 2 cores) x 3 seeds x 7 variants is ~4 hours: it does not fit.
All the variants change only the RL step (advantages, losses, rewards), and the demo's interesting
RL stage for them is MGT (pictures, where the FRE model starts near chance), so every run here is
**the MGT stage only, from one shared FRE checkpoint** (the demo's ``1_fre_text_rl/final``: same
model, data, eval suites), **shortened** to ``--steps`` steps of ``--prompts`` prompts (default 200 x
40: in the demo's MGT the picture accuracy takes off between steps 140 and 200; everything else,
``freeze_vision: encoder`` included, as ``recipes/demo_cpu.yaml``'s MGT stage), with
``train.num_threads=1``, ``--jobs`` runs at a time (default 1; 2 on a 2-core machine).
"Seed" is ``train.seed`` (rollout sampling and data order), not the model seed: the starting
weights are the same for every run.  Held-out accuracy is the greedy ``counting_text`` /
``counting_image`` test suites (200 problems each) after the stage.  Wall time is per run
(model loading, training and both evaluations); CPU time (user + system of the subprocess) is
less sensitive to other jobs on a shared machine.

Each variant is GRPO plus one change (``VARIANTS``); the APO variant also moves the KL from the
reward to the loss (DADS weights the KL *loss* term), which is a second change and is stated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo_cpu.yaml"

# name -> (overrides of the MGT stage, what changes against GRPO)
VARIANTS: dict[str, tuple[dict, str]] = {
    "grpo": ({}, "the demo's MGT stage (GRPO, accuracy + 0.5 format, KL 1e-3 in the reward)"),
    "ema_grpo": ({"algo": {"advantage": "ema_grpo"}}, "EMA-GRPO: per-task running std (OneThinker)"),
    "observe_grpo": ({"algo": {"advantage": "observe_grpo"}}, "Observe-R1 difficulty weight 7.2 p(1-p)"),
    "apo": ({"algo": {"dads": True, "stcr": True, "kl_in_reward": False, "kl_estimator": "k3"}},
            "APO DADS + STCR (KL moved to the loss, k3)"),
    "papo": ({"algo": {"papo_coef": 0.01}}, "PAPO gamma 0.01 (masked-image KL)"),
    "accuracy_strict": ({"reward": [{"name": "accuracy_strict"}]}, "Vision-R1 hard reward only"),
    "shortest_bonus": ({"reward": [{"name": "accuracy"}, {"name": "format"}, {"name": "shortest_correct_bonus"}]},
                       "+0.2 for a group's shortest correct answer (Observe-R1)"),
}


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def mgt_recipe(fre_dir: Path, out: Path, steps: int, prompts: int, seed: int, change: dict) -> dict:
    """A one-stage pipeline: the demo's MGT stage from ``fre_dir/final`` (data in ``fre_dir/../data``)."""
    demo = yaml.safe_load(DEMO.read_text())
    data_dir = fre_dir.parent / "data"
    mgt = next(s for s in demo["stages"] if s["name"].startswith("mgt"))
    stage = {k: v for k, v in mgt.items() if k != "data"}
    stage["data"] = [{**d, "path": str(data_dir / (d["path"].split(":", 1)[1] + ".jsonl"))} for d in mgt["data"]]
    base = {k: v for k, v in demo.items() if k not in ("stages", "synth", "eval", "output_dir", "model")}
    recipe = deep_merge(base, {k: v for k, v in stage.items() if k != "name"})
    recipe = deep_merge(recipe, {"train": {"steps": steps, "prompts_per_step": prompts, "seed": seed,
                                           "num_threads": 1, "save_every": 0}})
    recipe = deep_merge(recipe, change)
    ev = dict(demo["eval"])
    ev["suites"] = {"counting_text": str(data_dir / "counting_test_text.jsonl"),
                    "counting_image": str(data_dir / "counting_test_image.jsonl")}
    # the demo's model settings (e.g. ``freeze_vision: encoder``), loaded from the FRE checkpoint
    model = {k: v for k, v in demo["model"].items() if k not in ("tiny", "tiny_seed", "path")}
    return {"output_dir": str(out), "model": {**model, "path": str(fre_dir / "final")},
            "eval": ev, **recipe, "stages": [{"name": "mgt"}]}


def run(recipe: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "variant.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    with (out / "benchmark.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lmmr1.cli", "train", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        # this child's own CPU time (wait4), not RUSAGE_CHILDREN: with --jobs > 1 that mixes the runs
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
    res = {"wall_s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime}
    if rc != 0 or not (out / "summary.json").exists():
        return {**res, "error": f"exit {rc}, see {out / 'benchmark.log'}"}
    ev = json.loads((out / "summary.json").read_text())["stages"][-1]["eval"]
    return {**res, "text": ev["counting_text"]["accuracy"], "image": ev["counting_image"]["accuracy"]}


def ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def table(results: dict[str, list[dict]], start: dict | None) -> str:
    lines = ["| variant | change against GRPO | seeds | text acc | picture acc | Δ picture vs GRPO | wall s / run | "
             "CPU s / run | failed |", "|---|---|---|---|---|---|---|---|---|"]
    if start:
        lines.append(f"| FRE checkpoint (start) | – | – | {start['text']:.3f} | {start['image']:.3f} | | | | |")
    base = [r["image"] for r in results.get("grpo", []) if "error" not in r]
    for name, rs in results.items():
        ok = [r for r in rs if "error" not in r]
        img = [r["image"] for r in ok]
        delta = f"{statistics.mean(img) - statistics.mean(base):+.3f}" if img and base and name != "grpo" else "–"
        lines.append(f"| {name} | {VARIANTS[name][1]} | {len(rs)} | {ms([r['text'] for r in ok])} | {ms(img)} | {delta} | "
                     f"{statistics.mean(r['wall_s'] for r in rs):.0f} | {statistics.mean(r['cpu_s'] for r in rs):.0f} | "
                     f"{len(rs) - len(ok)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fre", type=Path, help="a finished FRE stage directory (with final/ and ../data); "
                                             "default: run the demo's SFT + FRE into OUT/prefix first")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "variants")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one thread; <= cores)")
    ap.add_argument("--report", action="store_true", help="only rewrite the table from OUT/variants.json")
    a = ap.parse_args()
    if a.report:
        saved = json.loads((a.out / "variants.json").read_text())
        seeds = sorted({r["seed"] for rs in saved["results"].values() for r in rs})
        md = (f"MGT only, {a.steps} steps x {a.prompts} prompts x n=8, seeds {seeds} (as run), num_threads=1\n\n"
              + table(saved["results"], saved["start"]))
        (a.out / "variants.md").write_text(md + "\n")
        print(md)
        return
    fre = a.fre
    if fre is None:
        demo = yaml.safe_load(DEMO.read_text())
        demo["stages"] = [s for s in demo["stages"] if not s["name"].startswith("mgt")]
        demo["output_dir"] = str(a.out / "prefix")
        demo["train"]["num_threads"] = 1
        (a.out).mkdir(parents=True, exist_ok=True)
        (a.out / "prefix.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
        subprocess.run([sys.executable, "-m", "lmmr1.cli", "train", str(a.out / "prefix.yaml")], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), TOKENIZERS_PARALLELISM="false"))
        fre = a.out / "prefix" / "1_fre_text_rl"
    start = None
    if (fre / "eval.json").exists():
        e = json.loads((fre / "eval.json").read_text())
        start = {"text": e["counting_text"]["accuracy"], "image": e["counting_image"]["accuracy"]}
    results: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    # seed-major: a cut-short invocation still has every variant on the first seeds
    todo = [(seed, name) for seed in a.seeds for name in a.only]

    def one(job: tuple[int, str]) -> tuple[int, str, dict]:
        seed, name = job
        out = a.out / f"{name}_seed{seed}"
        return seed, name, run(mgt_recipe(fre, out, a.steps, a.prompts, seed, VARIANTS[name][0]), out)

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        for seed, name, r in pool.map(one, todo):
            results.setdefault(name, []).append({**r, "seed": seed})
            print(f"{name} seed {seed}: {json.dumps(r)}", flush=True)
            (a.out / "variants.json").write_text(json.dumps({"start": start, "results": results}, indent=1))
    md = (f"MGT only from {fre}/final, {a.steps} steps x {a.prompts} prompts x n=8, seeds {a.seeds}, "
          f"num_threads=1, {a.jobs} at a time; total {time.perf_counter() - t0:.0f} s\n\n" + table(results, start))
    (a.out / "variants.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
