"""Sokoban: XSB levels, gym-sokoban's move/push rules and rewards, and the env behind the protocol.

Why gym-sokoban's numbers: LMM-R1 trains on gym-sokoban levels and scores answers by replaying
them in gym-sokoban, so its rewards (−0.1 per step, +1 box onto a goal, −1 box off a goal, +10
when solved, 120 steps per episode) are what the published results were trained against.  Two
deliberate choices on top: the episode *ends* when every box is on a goal (later actions are
ignored: no reward, no state change), and a step whose text is not one of the four moves is
*invalid*: no state change, no step counted, reward 0, ``info["valid"] = False`` (the trainer or
the single-turn reward decides what an invalid answer costs).

Levels are standard XSB text: ``#`` wall, `` `` (or ``-``/``_``) floor, ``.`` goal, ``$`` box,
``*`` box on goal, ``@`` player, ``+`` player on goal.  Cells outside the grid, and past the end of
a shorter line, count as walls (written back as ``#``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmmr1.envs.base import EnvError, Observation, StepResult

Pos = tuple[int, int]

MOVES: dict[str, Pos] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
"""The four actions (case-insensitive names) and their (row, column) offsets."""
ACTION_NAMES = {k: k.capitalize() for k in MOVES}  # canonical spelling: Up, Down, Left, Right

STEP_PENALTY = -0.1
BOX_ON_GOAL = 1.0
BOX_OFF_GOAL = -1.0
SOLVED = 10.0
MAX_STEPS = 120  # gym-sokoban's default episode length

_FLOOR = {" ", "-", "_"}


@dataclass(frozen=True)
class Level:
    """A static level (walls, goals, size) plus a state (player, boxes).  Immutable and hashable,
    so it is its own BFS node key and GiGPO anchor."""

    height: int
    width: int
    walls: frozenset[Pos]
    goals: frozenset[Pos]
    boxes: frozenset[Pos]
    player: Pos

    # ---------------------------------------------------------------- XSB
    @classmethod
    def from_xsb(cls, lines: Sequence[str] | str, where: str = "level") -> Level:
        """Parse XSB; one clear error naming the line and column for anything malformed."""
        if isinstance(lines, str):
            lines = lines.split("\n")
        if not isinstance(lines, (list, tuple)) or not all(isinstance(x, str) for x in lines):
            raise EnvError(f"{where}: a level must be a list of XSB text lines")
        rows = [ln.rstrip("\r\n") for ln in lines]
        while rows and not rows[-1].strip():
            rows.pop()
        while rows and not rows[0].strip():
            rows.pop(0)
        if not rows:
            raise EnvError(f"{where}: empty level")
        walls, goals, boxes, players = set(), set(), set(), []
        for r, row in enumerate(rows):
            for c, ch in enumerate(row):
                p = (r, c)
                if ch == "#":
                    walls.add(p)
                elif ch in _FLOOR:
                    pass
                elif ch == ".":
                    goals.add(p)
                elif ch == "$":
                    boxes.add(p)
                elif ch == "*":
                    boxes.add(p)
                    goals.add(p)
                elif ch == "@":
                    players.append(p)
                elif ch == "+":
                    players.append(p)
                    goals.add(p)
                else:
                    raise EnvError(f"{where}: line {r + 1}, column {c + 1}: {ch!r} is not XSB "
                                   "(use # wall, space floor, . goal, $ box, * box on goal, @ player, + player on goal)")
        if len(players) != 1:
            raise EnvError(f"{where}: a level needs exactly one player (@ or +), found {len(players)}")
        if not boxes:
            raise EnvError(f"{where}: a level needs at least one box ($ or *)")
        if len(boxes) != len(goals):
            raise EnvError(f"{where}: {len(boxes)} boxes but {len(goals)} goals; XSB levels have one goal per box")
        width = max(len(r) for r in rows)
        walls |= {(r, c) for r, row in enumerate(rows) for c in range(len(row), width)}  # ragged ends: outside
        return cls(len(rows), width, frozenset(walls), frozenset(goals), frozenset(boxes),
                   players[0])

    def to_xsb(self, floor: str = " ") -> list[str]:
        """The XSB lines (trailing spaces stripped), the inverse of :meth:`from_xsb`.  ``floor="_"``
        writes floor as ``_`` (also valid XSB): prompts use it because tokenisers merge runs of
        spaces, which would hide the grid's columns from the model."""
        out = []
        for r in range(self.height):
            chars = []
            for c in range(self.width):
                p = (r, c)
                if p in self.walls:
                    chars.append("#")
                elif p == self.player:
                    chars.append("+" if p in self.goals else "@")
                elif p in self.boxes:
                    chars.append("*" if p in self.goals else "$")
                else:
                    chars.append("." if p in self.goals else floor)
            out.append("".join(chars).rstrip())
        return out

    # ---------------------------------------------------------------- rules
    def is_wall(self, p: Pos) -> bool:
        r, c = p
        return p in self.walls or not (0 <= r < self.height and 0 <= c < self.width)

    @property
    def solved(self) -> bool:
        return self.boxes <= self.goals

    @property
    def boxes_on_goals(self) -> int:
        return len(self.boxes & self.goals)

    def move(self, d: Pos) -> tuple[Level, bool]:
        """The state after moving the player by ``d`` (pushing a box if there is one), and whether
        anything moved.  Into a wall or into a box backed by a wall/box: a no-op (gym-sokoban)."""
        r, c = self.player
        nxt = (r + d[0], c + d[1])
        if self.is_wall(nxt):
            return self, False
        if nxt in self.boxes:
            beyond = (nxt[0] + d[0], nxt[1] + d[1])
            if self.is_wall(beyond) or beyond in self.boxes:
                return self, False
            return Level(self.height, self.width, self.walls, self.goals, (self.boxes - {nxt}) | {beyond}, nxt), True
        return Level(self.height, self.width, self.walls, self.goals, self.boxes, nxt), True

    @property
    def anchor(self) -> tuple[Pos, tuple[Pos, ...]]:
        """A hashable key of the dynamic state (player, sorted boxes): equal states, equal anchors."""
        return (self.player, tuple(sorted(self.boxes)))


def parse_action(text: str) -> str | None:
    """``"up"``, ``" Left "``, ``"RIGHT."`` -> the canonical move name, anything else -> None."""
    if not isinstance(text, str):
        return None
    t = text.strip().strip(".").strip().lower()
    return ACTION_NAMES.get(t)


def parse_actions(text: str) -> list[str] | None:
    """A comma-separated move list (case-insensitive) -> canonical names, or None if any item is not
    a move.  An empty list is None: "no answer" is not "zero moves"."""
    items = [x for x in (p.strip() for p in text.replace("\n", ",").split(",")) if x]
    names = [parse_action(x) for x in items]
    if not names or any(n is None for n in names):
        return None
    return names  # type: ignore[return-value]


def step_reward(before: Level, after: Level) -> float:
    """gym-sokoban's reward for one step: −0.1, ±1 per change in boxes on goals, +10 when solved."""
    reward = STEP_PENALTY
    b0, b1 = before.boxes_on_goals, after.boxes_on_goals
    if b1 > b0:
        reward += BOX_ON_GOAL
    elif b1 < b0:
        reward += BOX_OFF_GOAL
    if after.solved:
        reward += SOLVED
    return reward


@dataclass
class Replay:
    """The outcome of replaying a move list: per-step rewards and whether the level got solved."""

    rewards: list[float]
    solved: bool
    steps: int
    final: Level


def replay(level: Level, actions: Sequence[str], max_steps: int = MAX_STEPS) -> Replay:
    """Apply canonical ``actions`` from ``level`` with the env's rules (stop when solved or after
    ``max_steps``).  The single-turn reward and ``lmmr1 score`` both use this."""
    state, rewards = level, []
    for name in actions:
        if state.solved or len(rewards) >= max_steps:
            break
        nxt, _ = state.move(MOVES[name.lower()])
        rewards.append(step_reward(state, nxt))
        state = nxt
    return Replay(rewards, state.solved, len(rewards), state)


# ------------------------------------------------------------------------------------------- env
VIEWS = ("text", "image", "both")


class SokobanEnv:
    """The protocol env.  Spec (a data row's ``env`` field)::

        {"name": "sokoban", "level": ["#####", "#@$.#", "#####"],   # fixed level, or
         "generate": {"size": 7, "boxes": 2, "min_moves": 4, "max_moves": 20},  # one level per seed
         "view": "text" | "image" | "both", "max_steps": 120, "tile": 16}

    With ``level`` the seed is ignored (the level is the episode); with ``generate`` the seed picks
    the level (:func:`lmmr1.envs.sokoban_gen.generate`), so held-out seeds are held-out levels.
    """

    def __init__(self, level: Level | None = None, generate: dict[str, Any] | None = None, view: str = "text",
                 max_steps: int = MAX_STEPS, tile: int = 16):
        if level is None and generate is None:
            raise EnvError("sokoban: give a 'level' (XSB lines) or 'generate' options")
        if view not in VIEWS:
            raise EnvError(f"sokoban: view must be one of {', '.join(VIEWS)}, got {view!r}")
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise EnvError(f"sokoban: max_steps must be a positive integer, got {max_steps!r}")
        if not isinstance(tile, int) or isinstance(tile, bool) or not 4 <= tile <= 128:
            raise EnvError(f"sokoban: tile must be an integer in 4..128 (pixels per cell), got {tile!r}")
        self.level0 = level
        self.generate = dict(generate) if generate is not None else None
        if self.generate is not None:
            from lmmr1.envs.sokoban_gen import GenConfig

            GenConfig.from_dict(self.generate)  # bad options fail here, not at the first reset
        self.view, self.max_steps, self.tile = view, max_steps, tile
        self.state: Level | None = None
        self.start: Level | None = None
        self.steps = 0
        self.done = False

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SokobanEnv:
        known = {"name", "level", "generate", "view", "max_steps", "tile", "optimal_moves", "solution", "seed",
                 "mode"}  # the last four describe the row (mode: how the prompt asks), not the dynamics
        extra = sorted(set(spec) - known)
        if extra:
            raise EnvError(f"sokoban: unknown env option(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")
        level = Level.from_xsb(spec["level"], "sokoban level") if "level" in spec else None
        gen = spec.get("generate")
        if gen is not None and not isinstance(gen, dict):
            raise EnvError("sokoban: 'generate' must be an object like {\"size\": 7, \"boxes\": 2}")
        return cls(level, gen, spec.get("view", "text"), spec.get("max_steps", MAX_STEPS), spec.get("tile", 16))

    def reset(self, seed: int) -> Observation:
        if self.level0 is not None:
            self.start = self.level0
        else:
            from lmmr1.envs.sokoban_gen import GenConfig, generate

            self.start = generate(GenConfig.from_dict(self.generate or {}), seed).level
        self.state, self.steps, self.done = self.start, 0, False
        return self.observe()

    def observe(self) -> Observation:
        if self.state is None:
            raise EnvError("sokoban: call reset(seed) before step/observe")
        text = "\n".join(self.state.to_xsb(floor="_")) if self.view in ("text", "both") else ""
        images = []
        if self.view in ("image", "both"):
            from lmmr1.envs.render import render_sokoban

            images.append(render_sokoban(self.state, self.tile))
        return Observation(text, images)

    def step(self, action_text: str) -> StepResult:
        if self.state is None:
            raise EnvError("sokoban: call reset(seed) before step")
        before = self.state
        info: dict[str, Any] = {"anchor": before.anchor, "valid": True, "success": before.solved}
        if self.done:  # the episode is over: later actions are ignored
            return StepResult(self.observe(), 0.0, True, info)
        name = parse_action(action_text)
        if name is None:
            info["valid"] = False
            return StepResult(self.observe(), 0.0, False, info)
        after, moved = before.move(MOVES[name.lower()])
        reward = step_reward(before, after)
        self.state, self.steps = after, self.steps + 1
        self.done = after.solved or self.steps >= self.max_steps
        info.update(success=after.solved, moved=moved, truncated=self.done and not after.solved)
        return StepResult(self.observe(), reward, self.done, info)
