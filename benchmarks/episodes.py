"""Multi-turn rollout speed against single-turn: generated tokens/s of ``play_episodes`` vs ``sample``.

    python benchmarks/episodes.py                      # tiny VLM, text and image views
    python benchmarks/episodes.py --size small --rows 8 --n 4 --turns 4

Why: a multi-turn rollout samples turn by turn, and each turn prefills its whole context again
(the per-turn rows are what the trainer scores, and the sampler's KV cache is not kept across
turns), while a single-turn rollout prefills each prompt once and decodes every answer in one
batch.  This measures what that costs in generated tokens per second for the same rows, n and
per-answer token budget, and how much the context mode (``full`` history vs ``current``
observation only) matters.  The model is a tiny checkpoint built offline with random weights,
so answers run to the token budget (no early stop); all runs sample at temperature 1, seed 0.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from lmmr1.data.dataset import Example
from lmmr1.envs.sokoban_gen import GenConfig, generate
from lmmr1.models import load_model, make_tiny
from lmmr1.rollout import SamplingParams, sample
from lmmr1.rollout.episodes import contexts_batch, play_episodes
from lmmr1.trainer.config import EpisodeConfig


def rows(k: int, view: str) -> tuple[list[Example], list[list]]:
    out = []
    for s in range(k):
        lv = generate(GenConfig(size=7, boxes=2), s).level
        grid = "\n".join(lv.to_xsb(floor="_"))
        content = f"You are playing Sokoban. Give your next move inside <answer></answer>.\n{grid}"
        if view == "image":
            content = [{"type": "image"}, {"type": "text", "text": content}]
        out.append(Example(messages=[{"role": "user", "content": content}], answer=None, source=f"level {s}",
                           datasource="sokoban", fields={"env": {"name": "sokoban", "level": lv.to_xsb(), "view": view,
                                                                 "tile": 16}}))
    if view == "image":
        from lmmr1.envs.render import render_sokoban
        from lmmr1.envs.sokoban import Level

        return out, [[render_sokoban(Level.from_xsb(e.fields["env"]["level"]), 16)] for e in out]
    return out, [[] for _ in out]


def single_turn(lm, exs, ims, n: int, tokens: int) -> dict:
    from lmmr1.rollout.episodes import _first_segments

    prompts = contexts_batch(lm.processor, [[s] for s in _first_segments(lm.processor, exs, ims)])
    t = time.perf_counter()
    ro = sample(lm, prompts, SamplingParams(n=n, max_new_tokens=tokens, seed=0))
    dt = time.perf_counter() - t
    return {"tokens": ro.num_tokens, "seconds": round(dt, 3), "tokens_per_s": round(ro.num_tokens / dt, 1)}


def multi_turn(lm, exs, ims, n: int, tokens: int, turns: int, context: str) -> dict:
    cfg = EpisodeConfig(turns=turns, context=context, last_k=1, invalid_reward=0.0)
    t = time.perf_counter()
    eb = play_episodes(lm, exs, ims, cfg, SamplingParams(n=n, max_new_tokens=tokens, seed=0))
    dt = time.perf_counter() - t
    ro = eb.rollout
    ctx = float(ro.prompts.attention_mask.sum(-1).float().mean())
    return {"tokens": ro.num_tokens, "turn_rows": ro.num_rows, "seconds": round(dt, 3),
            "tokens_per_s": round(ro.num_tokens / dt, 1), "mean_context_tokens": round(ctx, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=16, help="token budget per answer (per turn)")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the table as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        lm = load_model(make_tiny(Path(d) / "m", size=a.size, seed=0))
        table = {}
        for view in ("text", "image"):
            exs, ims = rows(a.rows, view)
            single_turn(lm, exs, ims, a.n, a.tokens)  # warm-up
            table[f"{view}/single_turn"] = single_turn(lm, exs, ims, a.n, a.tokens)
            for ctx in ("full", "current"):
                table[f"{view}/multi_turn_{ctx}"] = multi_turn(lm, exs, ims, a.n, a.tokens, a.turns, ctx)
    print(f"{a.size} model, {a.rows} rows x n={a.n}, {a.tokens} tokens per answer, {a.turns} turns, "
          f"{a.threads} thread(s), {lm.device}")
    for k, v in table.items():
        print(f"  {k:28s} " + "  ".join(f"{kk} {vv}" for kk, vv in v.items()))
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": table}, indent=1))


if __name__ == "__main__":
    main()
