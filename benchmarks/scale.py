"""Single process vs Ray workers (FSDP2 train workers + rollout workers), same recipe, one invocation.

    python benchmarks/scale.py                       # smoke recipe, 6 steps: 1 process vs 2 train + 2 rollout
    python benchmarks/scale.py --steps 10 --layouts 1x1,2x2,2x1
    python benchmarks/scale.py --recipe recipes/demo_cpu.yaml --extra rollout.max_new_tokens=64

Each layout runs ``lmmr1 train`` in its own subprocess (its own local Ray session for the
distributed ones) into a fresh output_dir and reads metrics.jsonl: seconds per step (mean over the
steps after the first, which includes warm-up), completion tokens/s, and the wall time of the
whole command (Ray start-up, actor start-up and model loads included).  "overhead/step" is the
distributed step time minus the single-process one: on one 2-core CPU there is nothing to gain
from more processes, so this measures what the scale-out costs (object transfers, weight stream,
collectives).  On a GPU machine the same command runs the workers on GPUs (one each).  It also
checks that every layout ends with the same weights (max abs difference to the first layout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_layout(recipe: str, out: Path, steps: int, train_w: int, rollout_w: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "lmmr1.cli", "train", recipe, f"output_dir={out}", f"train.steps={steps}",
           "train.save_every=0", "train.tensorboard=false", f"distributed.train_workers={train_w}",
           f"distributed.rollout_workers={rollout_w}", "distributed.cpus_per_worker=0.5", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{train_w}x{rollout_w} failed:\n{res.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    return {"layout": f"{train_w} train + {rollout_w} rollout" if (train_w, rollout_w) != (1, 1) else "1 process",
            "step_s": sum(r["time/step_s"] for r in later) / len(later),
            "rollout_s": sum(r["time/rollout_s"] for r in later) / len(later),
            "tok_s": sum(r["tokens_per_s"] for r in later) / len(later), "wall_s": wall,
            "reward_last": rows[-1]["reward/mean"], "out": out}


def max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "final/model.safetensors"), load_file(b / "final/model.safetensors")
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(ROOT / "recipes/smoke.yaml"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--layouts", default="1x1,2x2", help="train_workers x rollout_workers, comma-separated")
    ap.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every layout")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of every process (the driver and each worker): train.num_threads")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    results = []
    for lay in a.layouts.split(","):
        w, m = (int(x) for x in lay.split("x"))
        results.append(run_layout(a.recipe, tmp / lay, a.steps, w, m, [f"train.num_threads={a.threads}", *a.extra]))
    base = results[0]
    print(f"{Path(a.recipe).name}, {a.steps} steps (means over steps 2..{a.steps}), "
          f"{a.threads} torch thread(s) per process, {os.cpu_count()} cores")
    print("| layout | s/step | rollout s/step | overhead/step s | tokens/s | command wall s | "
          "max |w - w_first| |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['layout']} | {r['step_s']:.3f} | {r['rollout_s']:.3f} | {r['step_s'] - base['step_s']:+.3f} | "
              f"{r['tok_s']:.0f} | {r['wall_s']:.1f} | {max_diff(base['out'], r['out']):.2e} |")


if __name__ == "__main__":
    main()
