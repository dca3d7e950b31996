"""Peak memory of token log-probs + entropy, forward and backward, against completion tokens (CPU).

    python benchmarks/logprob_memory.py                       # the table in docs/benchmarks.md
    python benchmarks/logprob_memory.py --tokens 512 2048 --chunks 256 --vocab 151936 --hidden 256

Each cell runs in a fresh subprocess: the real ``LoadedModel.token_logprobs`` on an ``lm_head`` of
Qwen's vocabulary size (151,936) and a small hidden size (the head's weight is not what is
measured), forward then backward of sum(lp) + sum(entropy).  "Peak" is the process's peak
resident memory during forward + backward minus its resident memory just before (glibc and
torch's CPU allocator return large blocks to the OS, so the peak is what the machine had to hold).
Modes: ``kept`` = the former behaviour (each chunk's log-softmax kept for backward), ``+ent`` =
with an entropy graph (the former default whenever entropy was logged), ``recompute`` = per-chunk
recomputation in backward (the default now), entropy without a graph unless ``+ent``.
On a GPU the same script reports ``torch.cuda.max_memory_allocated`` with ``--device cuda``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

MODES = {"kept+ent": (False, True), "kept": (False, False), "recompute": (True, False), "recompute+ent": (True, True)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def cell(tokens: int, chunk: int, vocab: int, hidden: int, mode: str, device: str) -> float:
    """Peak extra memory (MiB) of one forward + backward; runs in the calling process."""
    import torch

    from lmmr1.models.loader import LoadedModel

    torch.set_num_threads(1)
    torch.manual_seed(0)

    class Head:  # the real methods, on a bare lm_head
        logits, token_logprobs, _chunk_terms = LoadedModel.logits, LoadedModel.token_logprobs, LoadedModel._chunk_terms

        def __init__(self):
            self.lm_head = torch.nn.Linear(hidden, vocab, bias=False, device=device)
            self.suppress_ids = []

    head = Head()
    h = torch.randn(tokens, hidden, device=device, requires_grad=True)
    y = torch.randint(0, vocab, (tokens,), device=device)
    recompute, ent_grad = MODES[mode]
    lp, ent = head.token_logprobs(h[:8], y[:8], chunk_tokens=chunk, with_entropy=True)  # warm-up
    (lp.sum() + ent.sum()).backward()
    h.grad = head.lm_head.weight.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mb()
    lp, ent = head.token_logprobs(h, y, chunk_tokens=chunk, with_entropy=True, entropy_grad=ent_grad,
                                  recompute=recompute)
    loss = lp.sum() + (ent.sum() if ent_grad else 0.0)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--chunks", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cell:
        t, c, mode = a.cell.split(",")
        print(json.dumps(cell(int(t), int(c), a.vocab, a.hidden, mode, a.device)))
        return
    print(f"vocab {a.vocab}, hidden {a.hidden}, {a.device}: peak extra memory (MiB) of forward + backward")
    print("| completion tokens | chunk | " + " | ".join(MODES) + " |")
    print("|---|---|" + "---|" * len(MODES))
    for t in a.tokens:
        for c in a.chunks:
            row = []
            for mode in MODES:
                out = subprocess.run([sys.executable, __file__, "--cell", f"{t},{c},{mode}", "--vocab", str(a.vocab),
                                      "--hidden", str(a.hidden), "--device", a.device],
                                     capture_output=True, text=True)
                row.append(f"{float(out.stdout.strip()):.0f}" if out.returncode == 0 else "failed")
            print(f"| {t} | {c} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
