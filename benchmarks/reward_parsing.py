"""Reward parsing cost on pathological completions (the inputs that once hung `lmmr1 score`).

    python benchmarks/reward_parsing.py                  # 64 K, 1 M and 4 M characters
    python benchmarks/reward_parsing.py --sizes 8000,16000

One call per cell, wall time in seconds.  Before the linear-time rewrite (docs/rewards.md, "Limits")
the unclosed-tag case was quadratic, the box case cubic and the degree case quadratic; run this
script against an older checkout (PYTHONPATH=old/src) with small sizes to compare.
"""

from __future__ import annotations

import argparse
import time

from lmmr1.rewards.answer import format_ok, last_answer_block, normalize_math
from lmmr1.rewards.builtin import parse_box

CASES = {
    "unclosed <answer> tags (format + answer block)": (lambda n: "<answer>" * (n // 8),
                                                       lambda s: (format_ok(s), last_answer_block(s))),
    "[ + digits (iou box)": (lambda n: "[" + "1" * n, parse_box),
    "spaces before text (degree strip)": (lambda n: "1" + " " * n + "x", normalize_math),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64000,1000000,4000000")
    sizes = [int(x) for x in ap.parse_args().sizes.split(",")]
    print(f"{'case':50s} {'chars':>9s} {'seconds':>9s}")
    for name, (make, fn) in CASES.items():
        for n in sizes:
            text = make(n)
            t = time.perf_counter()
            fn(text)
            print(f"{name:50s} {n:>9d} {time.perf_counter() - t:9.3f}", flush=True)


if __name__ == "__main__":
    main()
