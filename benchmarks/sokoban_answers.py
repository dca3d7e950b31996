"""How many different answers a Sokoban model gives on held-out levels (greedy), per view, and what
the best *constant* answer would score on the same levels.

    python benchmarks/sokoban_answers.py RUN_DIR [MODEL_DIR ...] [--max-new-tokens 64] [--max-len 8]

RUN_DIR is a pipeline output holding data/sokoban_test_{text,image}.jsonl.  Why: a success rate
can rise because a policy found a better *constant* move list rather than because it reads the
level; one distinct answer over all levels says the model ignores its input, and a success rate
at or below the best constant answer's says nothing about reading (docs/results.md "Agents").
The best constant answer is found by exhaustive search over move lists up to --max-len moves,
each level replayed within its own move budget (the row's env ``max_steps``).
"""
import argparse
import collections
import json

import torch

from lmmr1.envs.sokoban import MAX_STEPS, MOVES, Level


def best_constant_answer(levels: list[Level], budgets: list[int], max_len: int) -> tuple[int, list[str]]:
    """(levels solved, move list) of the move list of at most ``max_len`` moves that solves the most
    levels, each replayed from its start within its budget (depth-first over all 4^k lists)."""
    best: tuple[int, list[str]] = (0, [])
    names = list(MOVES)
    limit = min(max_len, max(budgets, default=0))

    def walk(states: list[Level], solved: list[bool], seq: list[str]) -> None:
        nonlocal best
        n = sum(solved)
        if n > best[0]:
            best = (n, list(seq))
        if len(seq) == limit:
            return
        for name in names:
            nxt, now = [], []
            for st, done, b in zip(states, solved, budgets, strict=True):
                if done or len(seq) >= b:
                    nxt.append(st)
                    now.append(done)
                else:
                    s2, _ = st.move(MOVES[name])
                    nxt.append(s2)
                    now.append(s2.solved)
            seq.append(name)
            walk(nxt, now, seq)
            seq.pop()

    walk(levels, [lv.solved for lv in levels], [])
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("models", nargs="*", help="model directories to count the greedy answers of")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=8, help="longest constant answer searched")
    args = ap.parse_args()
    torch.set_num_threads(1)
    searched: dict[tuple, tuple[int, list[str]]] = {}  # the text and image files hold the same levels: search once
    for mod in ("text", "image"):
        rows = [json.loads(x) for x in open(f"{args.run_dir}/data/sokoban_test_{mod}.jsonl")]
        key = tuple((tuple(r["env"]["level"]), min(r["env"].get("max_steps", MAX_STEPS), MAX_STEPS)) for r in rows)
        if key not in searched:
            searched[key] = best_constant_answer([Level.from_xsb(list(lv)) for lv, _ in key], [b for _, b in key],
                                                 args.max_len)
        n, plan = searched[key]
        print(f"{mod}: {len(rows)} levels, best constant answer (<= {args.max_len} moves) solves {n / len(rows):.3f}: "
              f"{', '.join(m.capitalize() for m in plan)}", flush=True)
    if not args.models:
        return
    from lmmr1.data.benchmarks import load_benchmark
    from lmmr1.models import load_model
    from lmmr1.rollout import SamplingParams, sample

    for model in args.models:
        lm = load_model(model)
        for mod in ("text", "image"):
            ds = load_benchmark(f"{args.run_dir}/data/sokoban_test_{mod}.jsonl", name=mod, system_prompt="none")
            outs = []
            for s in range(0, len(ds), 80):
                exs = ds.examples[s:s + 80]
                pb = lm.processor([e.messages for e in exs], images=[e.images() for e in exs])
                ro = sample(lm, pb, SamplingParams(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens))
                outs += [t.split("<answer>")[-1].split("</answer>")[0] for t in ro.texts]
            c = collections.Counter(outs)
            print(model.rstrip("/").split("/")[-2], mod, "distinct answers:", len(c), "of", len(outs),
                  "top:", c.most_common(3), flush=True)


if __name__ == "__main__":
    main()
