"""Peak memory of a rollout vs its size, with and without a budget (rollout.max_rows_in_flight).

    python benchmarks/rollout_memory.py                 # small model, 16 vs 256 rows, table on stdout
    python benchmarks/rollout_memory.py --size tiny --max-new-tokens 32

Each cell runs in a fresh subprocess: build/load the model, warm up on one row, read the resident
set (VmRSS), sample the batch, read the high-water mark (VmHWM).  "above loaded" = HWM - RSS after
warm-up: what the rollout itself added (KV cache, logits, decode buffers, outputs).  Prompts are
text-only, n = 16 samples each, temperature 1, no stop strings (rows run to max_new_tokens unless
the model emits EOS).  With a budget the cache is sized by the budget, so the 256-row rollout
needs what the 16-row one needs plus its outputs; without one it grows with the batch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _mem_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(key)


def cell(a) -> dict:
    import torch

    from lmmr1.models import load_model
    from lmmr1.rollout import SamplingParams, sample

    torch.set_num_threads(a.threads)
    lm = load_model(a.model)
    n = 16
    msgs = [[{"role": "user", "content": [{"type": "text", "text": f"Count to twenty and explain. Case {i}."}]}]
            for i in range(a.rows // n)]
    params = SamplingParams(n=n, max_new_tokens=a.max_new_tokens, seed=0, max_rows_in_flight=a.budget)
    sample(lm, lm.processor(msgs[:1]), SamplingParams(n=1, max_new_tokens=2, seed=0))  # warm-up
    base = _mem_mb("VmRSS")
    t0 = time.perf_counter()
    ro = sample(lm, lm.processor(msgs), params)
    dt = time.perf_counter() - t0
    return {"rows": a.rows, "budget": a.budget, "loaded_mb": base, "peak_mb": _mem_mb("VmHWM"),
            "tokens": ro.num_tokens, "seconds": dt}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--budget", type=int, default=16, help="max_rows_in_flight of the bounded cells")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cell:
        print(json.dumps(cell(a)))
        return
    from lmmr1.models import make_tiny

    model = make_tiny(Path(tempfile.mkdtemp(prefix="rollout_mem_")) / a.size, size=a.size, seed=0)
    rows_out = []
    for rows, budget in ((16, a.budget), (256, a.budget), (16, 0), (256, 0)):
        cmd = [sys.executable, __file__, "--cell", f"--rows={rows}", f"--budget={budget}", f"--model={model}",
               f"--max-new-tokens={a.max_new_tokens}", f"--threads={a.threads}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows_out.append(json.loads(out))
    print(f"rollout peak memory, `{a.size}` model, n=16 per prompt, max {a.max_new_tokens} new tokens, "
          f"{a.threads} threads")
    print("| rows | rollout.max_rows_in_flight | RSS loaded MB | peak MB | above loaded MB | tokens | s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows_out:
        print(f"| {r['rows']} | {r['budget'] or 'none'} | {r['loaded_mb']:.0f} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - r['loaded_mb']:.0f} | {r['tokens']} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
