"""Sokoban levels from a seed (reverse play, as gym-sokoban makes them) and an optimal BFS solver.

Why reverse play: pulling boxes *off* their goals from a solved position only ever reaches states
from which pushing them back solves the level, so every generated level is solvable by
construction.  Why a BFS solver on top: reverse play says nothing about how hard a level is; the
optimal solution length (in moves, the unit LMM-R1's answers are counted in) is the difficulty
knob (``min_moves``/``max_moves``), and the solution itself is the cold-start SFT target.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, fields

from lmmr1.envs.base import EnvError
from lmmr1.envs.sokoban import ACTION_NAMES, MOVES, Level

_DIRS = list(MOVES.items())  # fixed order: up, down, left, right (BFS tie-breaking is deterministic)


@dataclass
class GenConfig:
    """Knobs of the generator.  ``size``: the square room side including the outer walls (LMM-R1: 7);
    ``boxes``: boxes per level (LMM-R1: 2-3); ``min_moves``/``max_moves``: the optimal solution
    length must fall in this range; ``reverse_steps``: random reverse-play moves; ``attempts``: tries
    per seed before giving up; ``max_nodes``: BFS budget per try."""

    size: int = 7
    boxes: int = 2
    min_moves: int = 1
    max_moves: int = 40
    reverse_steps: int = 60
    attempts: int = 200
    max_nodes: int = 200_000

    @classmethod
    def from_dict(cls, d: dict) -> GenConfig:
        names = {f.name for f in fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            raise EnvError(f"sokoban generate: unknown option(s) {', '.join(extra)}; known: {', '.join(sorted(names))}")
        cfg = cls(**d)
        cfg.check_values()
        return cfg

    def check_values(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if f.name == "min_moves" else 1):
                raise EnvError(f"sokoban generate: {f.name} must be a positive integer, got {v!r}")
        if self.size < 4:
            raise EnvError(f"sokoban generate: size must be >= 4 (the outer walls take 2), got {self.size}")
        if self.boxes * 2 + 1 > (self.size - 2) ** 2:
            raise EnvError(f"sokoban generate: {self.boxes} boxes do not fit a {self.size}x{self.size} room")
        if self.min_moves > self.max_moves:
            raise EnvError(f"sokoban generate: min_moves ({self.min_moves}) > max_moves ({self.max_moves})")


@dataclass
class Generated:
    level: Level
    solution: list[str]  # an optimal move list (canonical names)
    seed: int

    @property
    def optimal_moves(self) -> int:
        return len(self.solution)


def _topology(rng: random.Random, n: int) -> set[tuple[int, int]]:
    """Floor cells carved by a random walk inside an n x n room whose border stays wall."""
    floor: set[tuple[int, int]] = set()
    r, c = rng.randrange(1, n - 1), rng.randrange(1, n - 1)
    d = rng.choice(_DIRS)[1]
    for _ in range(int(1.5 * (n + n)) * 2):
        if rng.random() < 0.35:
            d = rng.choice(_DIRS)[1]
        nr, nc = r + d[0], c + d[1]
        if 1 <= nr < n - 1 and 1 <= nc < n - 1:
            r, c = nr, nc
        floor.add((r, c))
        if rng.random() < 0.5:  # widen the corridor so boxes can be pushed around
            dr, dc = rng.choice(_DIRS)[1]
            if 1 <= r + dr < n - 1 and 1 <= c + dc < n - 1:
                floor.add((r + dr, c + dc))
    return floor


def _reverse_play(rng: random.Random, floor: set, goals: list, player: tuple, steps: int) -> tuple[frozenset, tuple]:
    """Start solved (boxes on goals) and walk backwards, pulling a box behind the player with p=0.7."""
    boxes = set(goals)
    for _ in range(steps):
        d = rng.choice(_DIRS)[1]
        tgt = (player[0] + d[0], player[1] + d[1])
        if tgt not in floor or tgt in boxes:
            continue
        behind = (player[0] - d[0], player[1] - d[1])
        if behind in boxes and rng.random() < 0.7:
            boxes.remove(behind)
            boxes.add(player)
        player = tgt
    return frozenset(boxes), player


def solve(level: Level, max_nodes: int = 200_000) -> list[str] | None:
    """An optimal (fewest moves) solution by breadth-first search, or None when unsolvable or the
    search exceeds ``max_nodes`` states.  Boxes pushed into a non-goal corner are pruned (such a
    state is dead), which does not change optimality."""
    if level.solved:
        return []
    w = level.width
    dead = {(r, c) for r in range(level.height) for c in range(w)
            if not level.is_wall((r, c)) and (r, c) not in level.goals
            and (level.is_wall((r - 1, c)) or level.is_wall((r + 1, c)))
            and (level.is_wall((r, c - 1)) or level.is_wall((r, c + 1)))}
    start = (level.player, level.boxes)
    parent: dict = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        player, boxes = state
        for name, d in _DIRS:
            nxt = (player[0] + d[0], player[1] + d[1])
            if level.is_wall(nxt):
                continue
            nboxes = boxes
            if nxt in boxes:
                beyond = (nxt[0] + d[0], nxt[1] + d[1])
                if level.is_wall(beyond) or beyond in boxes or beyond in dead:
                    continue
                nboxes = (boxes - {nxt}) | {beyond}
            key = (nxt, nboxes)
            if key in parent:
                continue
            parent[key] = (state, name)
            if nboxes <= level.goals:
                path = []
                cur = key
                while parent[cur] is not None:
                    cur, mv = parent[cur]
                    path.append(ACTION_NAMES[mv])
                return path[::-1]
            if len(parent) > max_nodes:
                return None
            queue.append(key)
    return None


def generate(cfg: GenConfig, seed: int) -> Generated:
    """The level of ``seed`` (same config + seed -> same level, on any machine)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise EnvError(f"sokoban: the seed must be an integer, got {seed!r}")
    rng = random.Random(f"sokoban:{cfg.size}:{cfg.boxes}:{seed}")
    n = cfg.size
    for _ in range(cfg.attempts):
        floor = _topology(rng, n)
        if len(floor) < cfg.boxes + 2:
            continue
        cells = sorted(floor)
        picks = rng.sample(cells, cfg.boxes + 1)
        goals, player = picks[:-1], picks[-1]
        boxes, player = _reverse_play(rng, floor, goals, player, cfg.reverse_steps)
        walls = frozenset((r, c) for r in range(n) for c in range(n) if (r, c) not in floor)
        level = Level(n, n, walls, frozenset(goals), boxes, player)
        if level.solved:
            continue
        sol = solve(level, cfg.max_nodes)
        if sol is not None and cfg.min_moves <= len(sol) <= cfg.max_moves:
            return Generated(level, sol, seed)
    raise EnvError(f"sokoban generate: no level with an optimal solution of {cfg.min_moves}..{cfg.max_moves} moves "
                   f"after {cfg.attempts} tries (seed {seed}); widen the range or raise reverse_steps")
