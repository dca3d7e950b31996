"""Throughput of `lmmr1 data render` (rows/s) with 1 and 2 worker processes.

    python benchmarks/render.py [--rows 400] [--workers 1,2]

Writes DeepScaleR-like rows (a few sentences of text with 4-8 inline formulas -- fractions, roots,
powers, Greek -- and a display formula in every fifth row), renders them with the default page
(768 px, 14 pt, 100 dpi) and prints one line per worker count.  Times are end to end (reading,
worker start-up, typesetting, PNG encoding, writing), as a user of the command sees them; the CPU
seconds (this process + its workers) give the rate per fully available core on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path


def deepscaler_like(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    names = ["Alice", "Bob", "Carla", "Dmitri"]
    rows = []
    for i in range(n):
        a, b, c, d = (rng.randint(2, 99) for _ in range(4))
        who = rng.choice(names)
        q = (f"{who} picks a real number $x$ with $0 < x < {a}$ such that $\\frac{{x^2 + {b}}}{{x + {c}}} = {d}$. "
             f"Let $S$ be the sum of all such $x$, and let $\\alpha = \\sqrt{{S + {a}}}$. "
             f"If $\\alpha^2 - {b}\\alpha + {c} \\le {d}$, compute $\\lfloor 10\\alpha \\rfloor$ modulo ${a + b}$.")
        if i % 5 == 0:
            q += f"\nRecall that\n$$\\sum_{{k=1}}^{{{a}}} \\frac{{1}}{{k(k+{b})}} = \\frac{{H_{{{b}}}}}{{{b}}}.$$"
        rows.append({"message": json.dumps([{"role": "user", "content": q}]), "answer": str(a), "datasource": "bench"})
    return rows


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the spawn workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    from lmmr1.data.render_rows import render_dataset

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "deepscaler_like.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in deepscaler_like(args.rows)))
        print(f"lmmr1 data render: {args.rows} DeepScaleR-like rows, 768 px / 14 pt / 100 dpi, "
              f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}")
        for w in (int(x) for x in args.workers.split(",")):
            t0, c0 = time.perf_counter(), cpu_seconds()
            s = render_dataset(src, Path(tmp) / f"out_w{w}.jsonl", workers=w)
            dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            print(f"workers={w}: {s.rows} rows in {dt:.1f} s = {s.rows / dt:.1f} rows/s wall; "
                  f"{cpu:.1f} CPU s = {s.rows / cpu:.1f} rows per CPU-second ({len(s.fallbacks)} fall-backs; "
                  f"load average after: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":  # the spawn workers import this file; they must not run the benchmark
    main()
