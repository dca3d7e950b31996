"""Football: a light 2-D attacking scenario with MageBench's action names and reward terms.

Why not gfootball: its C++/OpenGL engine cannot be built here, and the paper's agent benchmark
(MageBench Football) only needs one controlled attacker, the 19 named actions and a shaped reward.
This env keeps those and replaces the physics with a few deterministic rules (positions in
gfootball's coordinates: x in [-1, 1] toward the opponents' goal at x = 1, y in [-0.42, 0.42]).
Every difference from gfootball is listed in docs/agents.md.

One step is one action of the controlled player (the ball carrier; control follows the ball after
a pass, as gfootball's auto-switch does):

- the 8 directions move the carrier 0.03 (0.045 sprinting, 0.02 dribbling) and set the facing;
  ``idle``/``release_direction`` stand still; ``sprint``/``dribble`` switch a mode on until its
  ``release_*``; ``sliding`` (a defensive action) does nothing with the ball;
- ``short_pass`` goes to the nearest teammate ahead of the facing, ``long_pass`` to the farthest
  teammate, ``high_pass`` like a long pass but in the air: a ground pass is intercepted by any
  defender within 0.04 of its line, a high pass only by one within 0.04 of the receiver;
- ``shot``: a goal unless the shooter is more than 0.45 from the goal, or a defender (0.03) or the
  keeper (0.06) is near the line to the post away from the keeper; either way the episode ends;
- then the defenders move (0.022 per step: the nearest chases the ball, the others cover the line
  to goal), the keeper tracks the ball, teammates run forward; a defender within 0.02 (0.012 when
  dribbling) of the carrier steals the ball.

The episode ends on a goal (success), a steal, an interception, a shot, the ball leaving the pitch,
or after ``max_steps`` actions.  Reward per step, MageBench's terms ×20:
``20·(0.8·Δball_x/2 + Δopponents_passed/11 + 2·goal − 1·lost + 0.05·pass_clearance + 0.1·shot_clearance)``
where ``lost`` is 1 when the ball is stolen, intercepted or carried off the pitch
(clearances in [0, 1]: the nearest defender's distance to the ball's path over 0.1, capped; the pass
term only for a pass that takes the ball further than it has been, so passing back and forth earns nothing).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from lmmr1.envs.base import EnvError, Observation, StepResult

Vec = tuple[float, float]

DIRECTIONS: dict[str, Vec] = {
    "left": (-1, 0), "top_left": (-1, -1), "top": (0, -1), "top_right": (1, -1),
    "right": (1, 0), "bottom_right": (1, 1), "bottom": (0, 1), "bottom_left": (-1, 1),
}
ACTIONS = (list(DIRECTIONS) + ["long_pass", "high_pass", "short_pass", "shot", "sprint", "release_direction",
                               "release_sprint", "sliding", "dribble", "release_dribble", "idle"])
"""gfootball's 19 default actions (its ``action_set_v1``), spelled as MageBench names them."""

X_MAX, Y_MAX = 1.0, 0.42
GOAL_HALF_WIDTH = 0.1  # gfootball's mouth is 0.044 each side; wider here, as the keeper is simpler
RUN, SPRINT, DRIBBLE = 0.03, 0.045, 0.02
DEFENDER_SPEED, TEAMMATE_SPEED = 0.022, 0.015
STEAL, STEAL_DRIBBLING = 0.02, 0.012
INTERCEPT = 0.04
SHOT_RANGE, SHOT_BLOCK, KEEPER_REACH = 0.45, 0.03, 0.06
SCALE = 20.0
MAX_STEPS = 30


def parse_action(text: str) -> str | None:
    """``"Top Right"``, ``"top-right"``, ``"SHORT_PASS"`` -> the canonical name, else None."""
    if not isinstance(text, str):
        return None
    t = "_".join(text.strip().strip(".").lower().replace("-", " ").replace("_", " ").split())
    return t if t in ACTIONS else None


def parse_actions(text: str) -> list[str] | None:
    """Comma-separated action names -> canonical names, or None if any item is not an action."""
    items = [x for x in (p.strip() for p in text.replace("\n", ",").split(",")) if x]
    names = [parse_action(x) for x in items]
    if not names or any(n is None for n in names):
        return None
    return names  # type: ignore[return-value]


def _dist_to_segment(p: Vec, a: Vec, b: Vec) -> float:
    ax, ay = b[0] - a[0], b[1] - a[1]
    L = ax * ax + ay * ay
    t = 0.0 if L == 0 else max(0.0, min(1.0, ((p[0] - a[0]) * ax + (p[1] - a[1]) * ay) / L))
    return math.hypot(p[0] - a[0] - t * ax, p[1] - a[1] - t * ay)


def _toward(p: Vec, q: Vec, step: float) -> Vec:
    dx, dy = q[0] - p[0], q[1] - p[1]
    d = math.hypot(dx, dy)
    return q if d <= step else (p[0] + dx / d * step, p[1] + dy / d * step)


def _r(v: float) -> float:
    return round(v, 4)  # positions on a 1e-4 grid: replays are exact, anchors hashable and stable


@dataclass(frozen=True)
class Scenario:
    """Positions at kick-off of the episode: attackers (index 0 has the ball), defenders, keeper."""

    attackers: tuple[Vec, ...]
    defenders: tuple[Vec, ...]
    keeper: Vec = (0.97, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"attackers": [list(p) for p in self.attackers], "defenders": [list(p) for p in self.defenders],
                "keeper": list(self.keeper)}

    @classmethod
    def from_dict(cls, d: Any) -> Scenario:
        if not isinstance(d, dict):
            raise EnvError("football: 'scenario' must be an object {attackers, defenders, keeper}")

        def pts(key: str, v: Any, need: int) -> tuple[Vec, ...]:
            ok = isinstance(v, list) and len(v) >= need and all(
                isinstance(p, (list, tuple)) and len(p) == 2
                and all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in p)
                for p in v)
            if not ok:
                raise EnvError(f"football: scenario.{key} must be a list of at least {need} [x, y] number pairs")
            out = tuple((float(x), float(y)) for x, y in v)
            for x, y in out:
                if abs(x) > X_MAX or abs(y) > Y_MAX:
                    raise EnvError(f"football: scenario.{key} position ({x}, {y}) is off the pitch "
                                   f"(|x| <= {X_MAX}, |y| <= {Y_MAX})")
            return out

        extra = sorted(set(d) - {"attackers", "defenders", "keeper"})
        if extra:
            raise EnvError(f"football: unknown scenario key(s) {', '.join(extra)}; known: attackers, defenders, keeper")
        keeper = pts("keeper", [d.get("keeper", [0.97, 0.0])], 1)[0]
        return cls(pts("attackers", d.get("attackers"), 1), pts("defenders", d.get("defenders", []), 0), keeper)


@dataclass(frozen=True)
class GenConfig:
    """Knobs of the scenario generator: attackers (incl. the controlled one) and defenders (+ keeper)."""

    attackers: int = 2
    defenders: int = 2

    def check_values(self) -> None:
        if not (isinstance(self.attackers, int) and 1 <= self.attackers <= 5):
            raise EnvError(f"football generate: attackers must be 1..5, got {self.attackers!r}")
        if not (isinstance(self.defenders, int) and 0 <= self.defenders <= 6):
            raise EnvError(f"football generate: defenders must be 0..6, got {self.defenders!r}")


def generate(cfg: GenConfig, seed: int) -> Scenario:
    """The scenario of ``seed``: the carrier between x 0.2 and 0.6, teammates ahead and wide,
    defenders between the ball and the goal."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise EnvError(f"football: the seed must be an integer, got {seed!r}")
    cfg.check_values()
    rng = random.Random(f"football:{cfg.attackers}:{cfg.defenders}:{seed}")
    bx, by = rng.uniform(0.2, 0.6), rng.uniform(-0.2, 0.2)
    att = [(bx, by)]
    for _ in range(cfg.attackers - 1):
        att.append((min(0.9, bx + rng.uniform(0.05, 0.25)), rng.choice((-1, 1)) * rng.uniform(0.1, 0.3)))
    dfs = [(rng.uniform(bx + 0.08, 0.9), rng.uniform(-0.25, 0.25)) for _ in range(cfg.defenders)]
    r2 = lambda p: (_r(p[0]), _r(p[1]))  # noqa: E731
    return Scenario(tuple(map(r2, att)), tuple(map(r2, dfs)), (0.97, _r(max(-0.05, min(0.05, by * 0.2)))))


@dataclass
class _State:
    attackers: list[Vec]
    defenders: list[Vec]
    keeper: Vec
    carrier: int = 0
    facing: Vec = (1.0, 0.0)
    sprint: bool = False
    dribble: bool = False
    steps: int = 0
    done: bool = False
    success: bool = False
    outcome: str = ""
    passed: int = 0
    best_x: float = -X_MAX  # furthest the ball has been: only passes beyond it earn the pass term

    @property
    def ball(self) -> Vec:
        return self.attackers[self.carrier]

    def anchor(self) -> tuple:
        return (tuple(self.attackers), tuple(self.defenders), self.keeper, self.carrier, self.facing, self.sprint,
                self.dribble)


def opponents_passed(s: _State) -> int:
    """Defenders and keeper behind the ball (smaller x than the ball's)."""
    bx = s.ball[0]
    return sum(p[0] < bx for p in s.defenders) + (s.keeper[0] < bx)


def _clearance(s: _State, a: Vec, b: Vec) -> float:
    if not s.defenders:
        return 1.0
    return min(1.0, min(_dist_to_segment(d, a, b) for d in s.defenders) / 0.1)


class FootballEnv:
    """The protocol env.  Spec (a data row's ``env`` field)::

        {"name": "football", "scenario": {"attackers": [[x, y], ...], "defenders": [...], "keeper": [x, y]},
         # or "generate": {"attackers": 2, "defenders": 2} (the seed picks the scenario)
         "mode": "global" | "online", "view": "text" | "image" | "both", "max_steps": 30, "width": 168}

    ``mode`` only changes how the task is asked (all actions at once, or one per turn); the
    dynamics are the same, so a Global answer is scored by replaying it step by step.
    """

    def __init__(self, scenario: Scenario | None = None, generate_cfg: GenConfig | None = None, mode: str = "global",
                 view: str = "text", max_steps: int = MAX_STEPS, width: int = 168):
        if scenario is None and generate_cfg is None:
            raise EnvError("football: give a 'scenario' or 'generate' options")
        if mode not in ("global", "online"):
            raise EnvError(f"football: mode must be global or online, got {mode!r}")
        if view not in ("text", "image", "both"):
            raise EnvError(f"football: view must be one of text, image, both, got {view!r}")
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise EnvError(f"football: max_steps must be a positive integer, got {max_steps!r}")
        if not isinstance(width, int) or isinstance(width, bool) or not 32 <= width <= 1024:
            raise EnvError(f"football: width must be an integer in 32..1024 pixels, got {width!r}")
        self.scenario0, self.gen = scenario, generate_cfg
        self.mode, self.view, self.max_steps, self.width = mode, view, max_steps, width
        self.s: _State | None = None
        self.start: Scenario | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FootballEnv:
        known = {"name", "scenario", "generate", "mode", "view", "max_steps", "width", "seed"}
        extra = sorted(set(spec) - known)
        if extra:
            raise EnvError(f"football: unknown env option(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")
        sc = Scenario.from_dict(spec["scenario"]) if "scenario" in spec else None
        gen = None
        if "generate" in spec:
            g = spec["generate"]
            if not isinstance(g, dict) or set(g) - {"attackers", "defenders"}:
                raise EnvError("football: 'generate' must be an object with attackers and/or defenders")
            gen = GenConfig(**g)
            gen.check_values()
        return cls(sc, gen, spec.get("mode", "global"), spec.get("view", "text"), spec.get("max_steps", MAX_STEPS),
                   spec.get("width", 168))

    def reset(self, seed: int) -> Observation:
        self.start = self.scenario0 if self.scenario0 is not None else generate(self.gen or GenConfig(), seed)
        sc = self.start
        self.s = _State(list(sc.attackers), list(sc.defenders), sc.keeper)
        self.s.passed, self.s.best_x = opponents_passed(self.s), self.s.ball[0]
        return self.observe()

    # ------------------------------------------------------------------ observation
    def describe(self) -> str:
        s = self._need()
        fmt = lambda p: f"({p[0]:.2f}, {p[1]:.2f})"  # noqa: E731
        mates = [fmt(p) for i, p in enumerate(s.attackers) if i != s.carrier]
        lines = [f"You have the ball at {fmt(s.ball)}, facing {fmt(s.facing)}"
                 + (", sprinting" if s.sprint else "") + (", dribbling" if s.dribble else "") + ".",
                 "Teammates: " + (", ".join(mates) if mates else "none") + ".",
                 "Defenders: " + (", ".join(fmt(p) for p in s.defenders) if s.defenders else "none") + ".",
                 f"Keeper: {fmt(s.keeper)}. The goal is at x = 1.00 between y = -{GOAL_HALF_WIDTH:.2f} and "
                 f"{GOAL_HALF_WIDTH:.2f}; the pitch spans x -1..1, y -0.42..0.42 (y grows downward)."]
        return "\n".join(lines)

    def observe(self) -> Observation:
        s = self._need()
        text = self.describe() if self.view in ("text", "both") else ""
        images = []
        if self.view in ("image", "both"):
            from lmmr1.envs.render import render_football

            images.append(render_football(s.attackers, s.carrier, s.defenders, s.keeper, self.width))
        return Observation(text, images)

    def _need(self) -> _State:
        if self.s is None:
            raise EnvError("football: call reset(seed) before step/observe")
        return self.s

    # ------------------------------------------------------------------ dynamics
    def step(self, action_text: str) -> StepResult:
        s = self._need()
        info: dict[str, Any] = {"anchor": s.anchor(), "valid": True, "success": s.success}
        if s.done:
            return StepResult(self.observe(), 0.0, True, info)
        name = parse_action(action_text)
        if name is None:
            info["valid"] = False
            return StepResult(self.observe(), 0.0, False, info)
        bx0, passed0 = s.ball[0], s.passed
        terms = {"goal": 0.0, "lost": 0.0, "pass": 0.0, "shot": 0.0}
        self._act(s, name, terms)
        if not s.done:
            self._world(s, terms)
        s.steps += 1
        if not s.done and s.steps >= self.max_steps:
            s.done, s.outcome = True, "time"
        progress = (s.ball[0] - bx0) / 2 if not terms["lost"] else 0.0
        s.passed = opponents_passed(s) if not terms["lost"] else s.passed
        s.best_x = max(s.best_x, s.ball[0])
        reward = SCALE * (0.8 * progress + (s.passed - passed0) / 11 + 2 * terms["goal"] - terms["lost"]
                          + 0.05 * terms["pass"] + 0.1 * terms["shot"])
        info.update(success=s.success, outcome=s.outcome, terms=terms)
        return StepResult(self.observe(), reward, s.done, info)

    def _act(self, s: _State, name: str, terms: dict[str, float]) -> None:
        if name in DIRECTIONS:
            dx, dy = DIRECTIONS[name]
            n = math.hypot(dx, dy)
            s.facing = (_r(dx / n), _r(dy / n))
            speed = DRIBBLE if s.dribble else SPRINT if s.sprint else RUN
            x, y = s.ball
            nx, ny = x + s.facing[0] * speed, y + s.facing[1] * speed
            if abs(ny) > Y_MAX or nx < -X_MAX or (nx > X_MAX and abs(ny) > GOAL_HALF_WIDTH):
                s.done, s.outcome, terms["lost"] = True, "out", 1.0
                return
            s.attackers[s.carrier] = (_r(nx), _r(ny))
            if nx > X_MAX:  # walked the ball into the goal
                s.done, s.success, s.outcome, terms["goal"] = True, True, "goal", 1.0
        elif name in ("sprint", "release_sprint"):
            s.sprint = name == "sprint"
        elif name in ("dribble", "release_dribble"):
            s.dribble = name == "dribble"
        elif name in ("short_pass", "long_pass", "high_pass"):
            self._pass(s, name, terms)
        elif name == "shot":
            self._shot(s, terms)
        # idle, release_direction, sliding: the carrier stands still

    def _pass(self, s: _State, kind: str, terms: dict[str, float]) -> None:
        mates = [i for i in range(len(s.attackers)) if i != s.carrier]
        if not mates:
            return  # nobody to pass to: the ball stays (gfootball would kick it into space)
        src = s.ball
        if kind == "short_pass":
            ahead = [i for i in mates if (s.attackers[i][0] - src[0]) * s.facing[0]
                     + (s.attackers[i][1] - src[1]) * s.facing[1] > 0] or mates
            to = min(ahead, key=lambda i: (math.dist(src, s.attackers[i]), i))
        else:
            to = max(mates, key=lambda i: (math.dist(src, s.attackers[i]), -i))
        dst = s.attackers[to]
        if kind == "high_pass":
            cut = any(math.dist(d, dst) < INTERCEPT for d in s.defenders)
        else:
            cut = any(_dist_to_segment(d, src, dst) < INTERCEPT for d in s.defenders)
        if cut:
            s.done, s.outcome, terms["lost"] = True, "intercepted", 1.0
            return
        if dst[0] > s.best_x:  # back-and-forth passing must not farm the pass term
            terms["pass"] = _clearance(s, src, dst)
        s.carrier, s.sprint, s.dribble = to, False, False

    def _shot(self, s: _State, terms: dict[str, float]) -> None:
        """Aimed at the post away from the keeper.  A missed shot ends the episode without the
        "ball lost" penalty: punishing every attempt would teach the policy never to shoot."""
        post = -GOAL_HALF_WIDTH * 0.8 if s.keeper[1] >= 0 else GOAL_HALF_WIDTH * 0.8
        target = (X_MAX, post)
        far = math.dist(s.ball, (X_MAX, 0.0)) > SHOT_RANGE
        terms["shot"] = 0.0 if far else _clearance(s, s.ball, target)  # no pay for hopeful long shots
        blocked = any(_dist_to_segment(d, s.ball, target) < SHOT_BLOCK for d in s.defenders)
        saved = _dist_to_segment(s.keeper, s.ball, target) < KEEPER_REACH
        s.done = True
        if far or blocked or saved:
            s.outcome = "shot_far" if far else "shot_blocked" if blocked else "saved"
        else:
            s.success, s.outcome, terms["goal"] = True, "goal", 1.0

    def _world(self, s: _State, terms: dict[str, float]) -> None:
        ball = s.ball
        goal = (X_MAX, 0.0)
        if s.defenders:
            chaser = min(range(len(s.defenders)), key=lambda i: (math.dist(s.defenders[i], ball), i))
            moved = []
            for i, d in enumerate(s.defenders):
                tgt = ball if i == chaser else (ball[0] + (goal[0] - ball[0]) / 3, ball[1] + (goal[1] - ball[1]) / 3)
                p = _toward(d, tgt, DEFENDER_SPEED)
                moved.append((_r(p[0]), _r(p[1])))
            s.defenders = moved
        ky = max(-GOAL_HALF_WIDTH, min(GOAL_HALF_WIDTH, ball[1]))
        k = _toward(s.keeper, (0.97, ky), DEFENDER_SPEED)
        s.keeper = (_r(k[0]), _r(k[1]))
        for i, p in enumerate(s.attackers):
            if i != s.carrier:
                s.attackers[i] = (_r(min(0.85, p[0] + TEAMMATE_SPEED)), p[1])
        reach = STEAL_DRIBBLING if s.dribble else STEAL
        if any(math.dist(d, s.ball) < reach for d in s.defenders) or math.dist(s.keeper, s.ball) < reach:
            s.done, s.outcome, terms["lost"] = True, "stolen", 1.0


PLAN_ACTIONS = ("right", "top_right", "bottom_right", "top", "bottom", "sprint", "dribble", "short_pass",
                "long_pass", "high_pass", "shot")


def plan(env: FootballEnv, seed: int, beam: int = 16, depth: int = 20) -> tuple[list[str], float, bool]:
    """A good action list for the scenario of ``seed``: beam search over the deterministic dynamics
    (the env is copied, never stepped), keeping the ``beam`` best partial returns.  Used as the
    worked answer of synthetic rows and as a reference score; returns (actions, return, goal)."""
    import copy

    env.reset(seed)
    frontier = [(0.0, [], env.s)]
    best: tuple[float, list[str], bool] = (-math.inf, [], False)
    for _ in range(min(depth, env.max_steps)):
        nxt = []
        for ret, acts, state in frontier:
            for a in PLAN_ACTIONS:
                env.s = copy.deepcopy(state)
                r = env.step(a)
                total = ret + r.reward
                if r.done:
                    if (total, r.success) > (best[0], best[2]):
                        best = (total, acts + [a], r.success)
                else:
                    nxt.append((total, acts + [a], env.s))
        if not nxt:
            break
        nxt.sort(key=lambda t: -t[0])
        frontier = nxt[:beam]
        if frontier[0][0] > best[0] and not best[2]:
            best = (frontier[0][0], frontier[0][1], False)
    env.reset(seed)
    return best[1], best[0], best[2]
