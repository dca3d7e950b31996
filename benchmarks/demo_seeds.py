"""The CPU demo across model seeds: FRE -> MGT (recipes/demo_cpu.yaml) and direct SFT -> MGT
(recipes/demo_cpu_direct.yaml), one table.  Not part of CI: each run takes 8-15 minutes on 2 cores.

    python benchmarks/demo_seeds.py                              # seeds 0 1 2, both recipes
    python benchmarks/demo_seeds.py --seeds 2 --no-direct --out runs/demo_seeds
    python benchmarks/demo_seeds.py --seeds 1 -- train.num_threads=1   # extra overrides for every run
    python benchmarks/demo_seeds.py --set-fre stages.2.train.steps=300 --set-direct stages.1.train.steps=300

Why a script: one seed is an anecdote.  The demo's claim (RL raises held-out accuracy by >= 10 points
over the SFT checkpoint on both the text and the picture suite) must hold for every model seed the
shipped recipe is run with, and the direct baseline shows what FRE adds.

Runs go one after another (each in its own subprocess, so one crash is recorded and the rest still
run) into ``{out}/{recipe}_seed{k}``; a run directory that already holds finished stages is resumed
by the pipeline, so re-invoking after a kill only does what is missing.  Wall time per stage comes
from the stage's ``STAGE_COMPLETE`` marker (training + its evaluations); "pipeline" is the wall time
measured around the subprocess (synthesis, model building and all stages) for a run done in one
invocation, else the sum of the stages; "CPU" is the user + system time of that subprocess — on a shared
machine the wall time grows with the load, the CPU time much less (with ``train.num_threads=1`` it is
close to what the run takes alone on one core).
The table shows the held-out test suites (``counting_text`` / ``counting_image``) and, where the
recipe evaluates them, the validation suites the recipe was tuned on (``val_text`` / ``val_image``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"demo_cpu": ROOT / "recipes" / "demo_cpu.yaml", "demo_cpu_direct": ROOT / "recipes" / "demo_cpu_direct.yaml"}
BAR = 0.10  # the demo's bar: >= +10 points over the SFT checkpoint on both suites


def run_one(recipe: Path, out: Path, seed: int, overrides: list[str]) -> dict:
    """Run one pipeline in a subprocess; returns its summary (or the error) plus the measured wall."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lmmr1.cli", "train", str(recipe), f"output_dir={out}", f"model.tiny_seed={seed}",
           *overrides]
    out.mkdir(parents=True, exist_ok=True)
    resumed = any(out.glob("*/STAGE_COMPLETE"))  # finished stages are skipped: this wall is not the run's
    t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with (out / "benchmark.log").open("a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    summary_path = out / "summary.json"
    if rc != 0 or not summary_path.exists():
        return {"error": f"exit {rc}, see {out / 'benchmark.log'}", "wall_s": wall}
    summary = json.loads(summary_path.read_text())
    wall_file = out / "benchmark_wall.json"  # kept so that a later, resuming invocation still reports it
    if not resumed:  # this invocation ran every stage
        wall_file.write_text(json.dumps({"measured_wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}))
    if wall_file.exists():
        summary.update(json.loads(wall_file.read_text()))
    return summary


def _acc(stage: dict, suite: str) -> float | None:
    r = stage["eval"].get(suite)
    return None if r is None else r["accuracy"]


def _pair(stage: dict, a: str, b: str) -> str:
    x, y = _acc(stage, a), _acc(stage, b)
    return "-" if x is None or y is None else f"{x:.3f} / {y:.3f}"


def rows(name: str, seed: int, summary: dict) -> list[str]:
    """Markdown rows: one per stage, final row with the gain over SFT and the verdict."""
    if "error" in summary:
        return [f"| {name} | {seed} | - | {summary['error']} | | | | {summary['wall_s']:.0f} s |"]
    stages = summary["stages"]
    sft, out = stages[0], []
    stage_sum = sum(s.get("wall_s") or 0 for s in stages)
    for st in stages:
        gain = ""
        if st is not sft:
            d = [(_acc(st, s) - _acc(sft, s)) * 100 for s in ("counting_text", "counting_image")]
            gain = f"{d[0]:+.1f} / {d[1]:+.1f}"
        out.append(f"| {name} | {seed} | {st['name']} | {_pair(st, 'counting_text', 'counting_image')} | {gain} | "
                   f"{_pair(st, 'val_text', 'val_image')} | {st.get('wall_s') or 0:.0f} s | |")
    final = stages[-1]
    ok = all(_acc(final, s) - _acc(sft, s) >= BAR - 1e-9 for s in ("counting_text", "counting_image"))
    cpu = f" (CPU {summary['cpu_s']:.0f} s)" if "cpu_s" in summary else ""
    total = (f"{summary['measured_wall_s']:.0f} s{cpu}" if "measured_wall_s" in summary
             else f"{stage_sum:.0f} s (sum of stages; resumed run)")
    out[-1] = out[-1][:-3] + f"| {total}; {'>= +10 on both' if ok else 'BELOW +10'} |"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="demo_seeds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model.tiny_seed values (default 0 1 2)")
    ap.add_argument("--out", type=Path, default=Path("runs/demo_seeds"), help="directory for the run directories")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct SFT -> MGT baseline")
    ap.add_argument("--no-fre", action="store_true", help="skip the FRE -> MGT pipeline (run only the baseline)")
    ap.add_argument("--set-fre", action="append", default=[], metavar="KEY=VALUE",
                    help="override for the FRE -> MGT runs only (repeatable), e.g. stages.2.train.steps=300")
    ap.add_argument("--set-direct", action="append", default=[], metavar="KEY=VALUE",
                    help="override for the direct runs only (repeatable), e.g. stages.1.train.steps=300")
    ap.add_argument("overrides", nargs="*", help="dotted overrides passed to every run, e.g. train.num_threads=1")
    args = ap.parse_args(argv)
    own = {"demo_cpu": args.set_fre, "demo_cpu_direct": args.set_direct}
    names = [n for n in RECIPES if not (n == "demo_cpu_direct" and args.no_direct) and not (n == "demo_cpu" and args.no_fre)]
    table = ["| recipe | seed | stage | test text / image | gain over SFT (points) | val text / image | stage wall | pipeline |",
             "|---|---|---|---|---|---|---|---|"]
    results = {}
    for seed in args.seeds:
        for name in names:
            out = args.out / f"{name}_seed{seed}"
            print(f"running {name} seed {seed} into {out} ...", file=sys.stderr, flush=True)
            summary = run_one(RECIPES[name], out, seed, [*args.overrides, *own[name]])
            results[f"{name}_seed{seed}"] = summary
            table += rows(name, seed, summary)
            print("\n".join(table[-len(summary.get('stages', [0])):]), file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_seeds.json").write_text(json.dumps(results, indent=2))
    (args.out / "demo_seeds.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0 if all("error" not in s for s in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
