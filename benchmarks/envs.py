"""Environment speed: steps/s of each env (text view and image view), generator and solver cost.

    python benchmarks/envs.py                 # 20,000 steps per cell
    python benchmarks/envs.py --steps 5000

Why: in multi-turn RL every turn is one env step plus (image view) one rendered frame, and the
single-turn rewards replay up to 50 steps per completion; this shows the env is never the
bottleneck next to generation (hundreds of tokens/s on CPU).  Actions are drawn uniformly from
each env's action names with a fixed seed; an episode that ends is reset with the next seed.
"""

from __future__ import annotations

import argparse
import random
import time

from lmmr1.envs import make_env
from lmmr1.envs.football import ACTIONS
from lmmr1.envs.sokoban_gen import GenConfig, generate


def steps_per_s(spec: dict, actions: list[str], steps: int) -> float:
    env = make_env(spec)
    rng = random.Random(0)
    seed = 0
    env.reset(seed)
    t = time.perf_counter()
    for _ in range(steps):
        if env.step(rng.choice(actions)).done:
            seed += 1
            env.reset(seed)
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20000)
    n = ap.parse_args().steps
    sok = {"name": "sokoban", "generate": {"size": 7, "boxes": 2}}
    fb = {"name": "football", "generate": {"attackers": 2, "defenders": 2}}
    moves = ["Up", "Down", "Left", "Right"]
    print(f"{'env':10s} {'view':6s} {'steps/s':>10s}")
    for name, spec, acts in (("sokoban", sok, moves), ("football", fb, list(ACTIONS))):
        for view in ("text", "image"):
            k = n if view == "text" else max(1, n // 10)
            print(f"{name:10s} {view:6s} {steps_per_s({**spec, 'view': view}, acts, k):10.0f}", flush=True)
    for boxes in (2, 3):
        t = time.perf_counter()
        for s in range(50):
            generate(GenConfig(size=7, boxes=boxes), s)
        print(f"sokoban 7x7, {boxes} boxes: generate + BFS-solve {50 / (time.perf_counter() - t):.0f} levels/s")


if __name__ == "__main__":
    main()
