"""Single-turn agent rewards, the LMM-R1 way: the model answers the whole move list at once, and
the answer is replayed in the environment of the row's ``env`` field.

Why shaped and not just "solved or not": with a tiny model almost no answer solves a level at
first, so LMM-R1 pays progress (the best env return over any prefix of the replay), a well-formed
answer, a sensible number of moves and some thinking.  Exact rules: docs/rewards.md#sokoban.
Each of these rewards also reports ``success_of`` (the replay solved the task), which
``lmmr1 score`` writes as the row's top-level ``success`` and ``lmmr1 eval`` averages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmmr1.envs.base import EnvError
from lmmr1.rewards.answer import format_ok, last_answer_block, too_long
from lmmr1.rewards.base import RowError, Sample, Verdict, register

MAX_ACTIONS = 50  # LMM-R1 replays the first 50 actions of an answer ...
MAX_ENV_STEPS = 120  # ... in an episode of at most 120 env steps
FORMAT_WEIGHT = 0.5
THINK_PER_WORD, THINK_CAP = 0.001, 0.2
ACTION_FLOOR = -1.0  # the length penalty is quadratic: unclamped, one runaway answer would dominate a batch


def think_words(completion: str) -> int:
    """Words inside the first ``<think>…</think>`` block (0 without one)."""
    a = completion.find("<think>")
    b = completion.find("</think>", a + 7) if a >= 0 else -1
    return len(completion[a + 7:b].split()) if b >= 0 else 0


def thinking_bonus(completion: str) -> float:
    """0.001 per thinking word, at most 0.2 (LMM-R1)."""
    return min(THINK_CAP, THINK_PER_WORD * think_words(completion))


def is_repetitive(actions: Sequence[str]) -> bool:
    """A k-gram (k = 1..4) repeated back to back at least 3 times and covering at least 8 actions,
    e.g. eight ``Left`` in a row or ``Left, Right`` four times: the collapse to one repeated move
    that a format-paid policy falls into.  A 7x7 level's interior is 5 cells wide, so no useful
    answer on LMM-R1's levels contains such a run."""
    n = len(actions)
    for k in range(1, 5):
        need = max(3, -(-8 // k))  # repetitions that make it repetitive
        for start in range(n - need * k + 1):
            # stops at ``need``: linear in n (answers are untrusted and can hold 200,000 moves)
            if all(actions[start + r * k:start + (r + 1) * k] == actions[start:start + k] for r in range(1, need)):
                return True
    return False


def action_bonus(actions: Sequence[str]) -> float:
    """LMM-R1's answer-length shaping: 0.05·n below 20 moves, then 1 − 0.2·((n − 20)/30)², never
    below −1 (from ~115 moves on); 0 for a repetitive answer (see :func:`is_repetitive`) and for no moves."""
    n = len(actions)
    if n == 0 or is_repetitive(actions):
        return 0.0
    return 0.05 * n if n < 20 else max(ACTION_FLOOR, 1.0 - 0.2 * ((n - 20) / 30) ** 2)


def best_prefix_return(rewards: Sequence[float]) -> float:
    """max(0, the best cumulative return over any prefix of the replay)."""
    best = run = 0.0
    for r in rewards:
        run += r
        best = max(best, run)
    return best


@dataclass
class AgentScore:
    total: float
    task: float = 0.0
    format: float = 0.0
    actions: float = 0.0
    thinking: float = 0.0
    success: bool = False
    n_actions: int = 0
    ret: float = 0.0  # the replay's plain episode return (sum of env rewards; 0 without an answer)


def sokoban_score(completion: str, env: dict[str, Any]) -> AgentScore:
    """Score one completion against the Sokoban level of ``env`` (the row's env field).

    No ``<answer>`` block, or one that is not a comma-separated list of Up/Down/Left/Right
    (case-insensitive): total 0, never a success (no format, action or thinking pay: paying a
    malformed answer is what collapses rollouts).  Otherwise total = task + 0.5·format + action
    bonus + thinking bonus, with the task replayed over the first 50 moves in at most 120 steps.
    """
    from lmmr1.envs.sokoban import Level, SokobanEnv, parse_actions, replay

    if not isinstance(env, dict) or env.get("name") != "sokoban":
        raise EnvError("the sokoban reward needs an env with name 'sokoban'")
    spec = SokobanEnv.from_spec(env)  # validates every option
    level = spec.level0
    if level is None:
        seed = env.get("seed")
        if not isinstance(seed, int):
            raise EnvError("a generated sokoban env needs an integer 'seed' to be replayed")
        spec.reset(seed)
        level = spec.start
    assert isinstance(level, Level)
    block = None if too_long(completion) else last_answer_block(completion)
    actions = parse_actions(block) if block else None
    if actions is None:
        return AgentScore(0.0)
    rep = replay(level, actions[:MAX_ACTIONS], min(spec.max_steps, MAX_ENV_STEPS))
    task = best_prefix_return(rep.rewards)
    fmt = 1.0 if format_ok(completion) else 0.0
    act = action_bonus(actions)
    think = thinking_bonus(completion)
    return AgentScore(task + FORMAT_WEIGHT * fmt + act + think, task, fmt, act, think, rep.solved, len(actions),
                      sum(rep.rewards))


class _EnvReward:
    """Shared plumbing: read the row's ``env`` field, score, turn a bad field into a RowError."""

    name = ""

    def _score(self, s: Sample) -> AgentScore | RowError:
        env = s.fields.get("env", s.columns.get("env"))
        if isinstance(env, str):  # a parquet/CSV column may carry the field as JSON text
            import json

            try:
                env = json.loads(env)
            except json.JSONDecodeError:
                return RowError("field 'env' is text but not JSON")
        if env is None:
            return RowError(f"the {self.name} reward needs the row's 'env' field (write rows with lmmr1 data synth {self.name})")
        try:
            return self.score_one(s.completion, env)
        except EnvError as e:
            return RowError(f"field 'env': {e}")

    def score_one(self, completion: str, env: dict[str, Any]) -> AgentScore:
        raise NotImplementedError

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        out: list[Verdict] = []
        for s in samples:
            r = self._score(s)
            out.append(r if isinstance(r, RowError) else r.total)
        return out

    def success_of(self, samples: Sequence[Sample]) -> list[bool | None]:
        """Per sample: did the replay solve the task (None for a row that cannot be scored)."""
        out: list[bool | None] = []
        for s in samples:
            r = self._score(s)
            out.append(None if isinstance(r, RowError) else r.success)
        return out


@register("sokoban", default_weight=1.0)
class SokobanReward(_EnvReward):
    """LMM-R1's shaped Sokoban reward: best prefix return of the replayed moves + 0.5·format + action and thinking bonuses."""

    name = "sokoban"

    def score_one(self, completion: str, env: dict[str, Any]) -> AgentScore:
        return sokoban_score(completion, env)


def football_score(completion: str, env: dict[str, Any]) -> AgentScore:
    """MageBench's Global mode: the answer's action list replayed from the scenario; the score is
    the episode return (can be negative: a lost ball costs 20), success = a goal.  No parsable
    answer: 0 and no success.  Actions past the episode's end are ignored."""
    from lmmr1.envs.football import FootballEnv, parse_actions

    if not isinstance(env, dict) or env.get("name") != "football":
        raise EnvError("the football reward needs an env with name 'football'")
    game = FootballEnv.from_spec(env)
    seed = env.get("seed", 0)
    if game.scenario0 is None and not isinstance(seed, int):
        raise EnvError("a generated football env needs an integer 'seed' to be replayed")
    block = None if too_long(completion) else last_answer_block(completion)
    actions = parse_actions(block) if block else None
    if actions is None:
        return AgentScore(0.0)
    game.reset(seed if isinstance(seed, int) else 0)
    ret, success = 0.0, False
    for a in actions:
        r = game.step(a)
        ret += r.reward
        success = r.success
        if r.done:
            break
    return AgentScore(ret, task=ret, success=success, n_actions=len(actions), ret=ret)


@register("football", default_weight=1.0)
class FootballReward(_EnvReward):
    """MageBench Football, Global mode: the return of replaying the whole action list (goal = success)."""

    name = "football"

    def score_one(self, completion: str, env: dict[str, Any]) -> AgentScore:
        return football_score(completion, env)


SCORERS = {"sokoban": sokoban_score, "football": football_score}


def env_score(completion: str, env: dict[str, Any]) -> AgentScore:
    """The single-turn score of ``completion`` in the env a row names (``lmmr1 eval`` on env suites)."""
    name = env.get("name") if isinstance(env, dict) else None
    if name not in SCORERS:
        raise EnvError(f"no single-turn scorer for env {name!r}; known: {', '.join(sorted(SCORERS))}")
    return SCORERS[name](completion, env)
