"""The README's main job: the tiny two-stage LMM-R1 run on CPU (recipes/demo_cpu.yaml).

Builds a tiny Qwen2.5-VL offline, synthesises counting problems as text and as pictures, then runs
cold-start SFT -> FRE (text RL) -> MGT (image RL), evaluating held-out text and image suites after
every stage (and the validation split the recipe is tuned on), and writes summary.json and
report.html.  About 12-14 minutes on 2 cores of an unshared machine (docs/results.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def run(out_dir: str | Path = "runs/demo_cpu", overrides: list[str] | None = None,
        recipe: str | Path = RECIPES / "demo_cpu.yaml") -> dict:
    from rich.console import Console
    from rich.table import Table
    from transformers.utils import logging as hf_logging

    from lmmr1.pipeline import run_pipeline

    hf_logging.disable_progress_bar()  # weight-loading bars are noise for local directories
    console = Console(stderr=True)
    t0 = time.perf_counter()
    summary = run_pipeline(recipe, [f"output_dir={out_dir}", *(overrides or [])], console)
    suites = sorted({s for st in summary["stages"] for s in st["eval"]})
    table = Table(title=f"held-out accuracy after each stage ({time.perf_counter() - t0:.0f} s)")
    table.add_column("stage")
    for s in suites:
        table.add_column(s, justify="right")
    first = summary["stages"][0]["eval"]
    for st in summary["stages"]:
        cells = []
        for s in suites:
            acc = st["eval"].get(s, {}).get("accuracy")
            base = first.get(s, {}).get("accuracy")
            delta = "" if st is summary["stages"][0] or acc is None else f" ({(acc - base) * 100:+.1f})"
            cells.append("-" if acc is None else f"{acc:.3f}{delta}")
        table.add_row(st["name"], *cells)
    Console().print(table)
    print(f"report: {Path(out_dir) / 'report.html'}   summary: {Path(out_dir) / 'summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="lmmr1.demo", description=__doc__)
    ap.add_argument("--out", default="runs/demo_cpu")
    ap.add_argument("--smoke", action="store_true", help="run the 1-minute GRPO smoke recipe instead")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. stages.1.train.steps=20")
    args = ap.parse_args(argv)
    if args.smoke:
        from lmmr1.trainer import load_config, train

        train(load_config(RECIPES / "smoke.yaml", [f"output_dir={args.out}", *args.overrides]))
        return 0
    run(args.out, args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
