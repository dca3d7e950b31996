"""Agent suites for ``lmmr1 data synth``: Sokoban levels (and Football scenarios) as LMM-R1 rows.

Each row carries an ``env`` field (``{"name": "sokoban", "level": [XSB lines], ...}``) that the
``sokoban`` reward replays the answer in, and that multi-turn training and ``lmmr1 eval`` start the
environment from.  The text version shows the grid in the prompt, the image version shows the
rendered frame (LMM-R1 trains on the frame); both ask for the whole move list in one answer.
The worked ``response`` is an optimal BFS solution, the cold-start SFT target.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # lmmr1.data.synth imports this module to register the suites
    from lmmr1.data.synth import Problem

SOKOBAN_RULES = ("Push every box onto a goal. You move one cell per move and push a box by walking into it; "
                 "you cannot pull boxes or push two at once.")
ANSWER_FORMAT = ("Think inside <think></think>, then give all your moves at once, comma-separated, from Up, Down, "
                 "Left, Right, inside <answer></answer>, e.g. <answer>Left, Up, Up</answer>.")
ONLINE_FORMAT = ("Think inside <think></think>, then give your next move, one of Up, Down, Left, Right, inside "
                 "<answer></answer>, e.g. <answer>Left</answer>.")
SOKOBAN_LEGEND = "# wall, _ floor, . goal, $ box, * box on a goal, @ you, + you on a goal"
SOKOBAN_IMAGE_LEGEND = "brown walls, beige floor, red rings are goals, orange squares are boxes (green on a goal), you are the blue disc"


PROMPTS = ("full", "short")
SHORT_ASK = {"global": "Moves?", "online": "Move?"}


def _check_prompt(prompt: str) -> None:
    if prompt not in PROMPTS:
        from lmmr1.errors import LmmR1Error

        raise LmmR1Error(f"sokoban: prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")


def sokoban_text_prompt(grid: str, mode: str = "global", prompt: str = "full") -> str:
    """``prompt="short"``: the grid between two words, for models built from scratch (the CPU demo's
    tiny VLM reads nothing of the instructions, and ~90 instruction tokens cost it 4x the compute
    and most of its attention: on held-out states it learned the next move from the grid alone and
    not at all behind the full text within the same budget, docs/results.md "Agents")."""
    if prompt == "short":
        return f"Sokoban.\n{grid}\n{SHORT_ASK[mode]}"
    ask = ANSWER_FORMAT if mode == "global" else ONLINE_FORMAT
    return f"You are playing Sokoban. {SOKOBAN_RULES}\nThe level ({SOKOBAN_LEGEND}):\n{grid}\n{ask}"


def sokoban_image_prompt(mode: str = "global", prompt: str = "full") -> str:
    if prompt == "short":
        return f"Sokoban. {SHORT_ASK[mode]}"
    ask = ANSWER_FORMAT if mode == "global" else ONLINE_FORMAT
    return f"You are playing Sokoban in the image ({SOKOBAN_IMAGE_LEGEND}). {SOKOBAN_RULES}\n{ask}"


def _check_slack(slack: int | None) -> None:
    if slack is not None and (not isinstance(slack, int) or isinstance(slack, bool) or slack < 0):
        from lmmr1.errors import LmmR1Error

        raise LmmR1Error(f"sokoban: slack must be a non-negative integer (moves allowed beyond the optimal "
                         f"solution), got {slack!r}")


def _budget(env: dict, optimal: int, slack: int | None) -> dict:
    """``slack`` set: the level's move budget (the env's ``max_steps``) is its optimal length +
    slack.  Why: with gym-sokoban's 120 steps, replay ignores every move after the level is solved,
    so on small levels one fixed sweep solves many (5x5, one box, 1-4 moves: the best list of 8
    moves solves 56 %) and RL learns that sweep instead of reading the level (docs/results.md
    "Agents, fourth pass"); a budget makes the score measure planning."""
    if slack is not None:
        env["max_steps"] = optimal + slack  # optimal >= 1: a generated level is never solved already
    return env


def sokoban(rng: random.Random, size: int = 7, boxes: int = 2, min_moves: int = 1, max_moves: int = 20,
            mode: str = "global", prompt: str = "full", slack: int | None = None) -> Problem:
    """A reverse-play level with an optimal solution of min_moves..max_moves moves (LMM-R1: 7x7, 2-3 boxes).
    ``mode="online"`` asks for the next move only (multi-turn training); the answer is then the
    first move of the optimal solution.  ``prompt``: ``full`` (rules, legend, answer format) or
    ``short`` (the grid and one word, see ``sokoban_text_prompt``).  ``slack``: the move budget
    beyond the optimal length (see ``_budget``; unset: gym-sokoban's 120 steps)."""
    from lmmr1.data.synth import Problem
    from lmmr1.envs.render import render_sokoban
    from lmmr1.envs.sokoban_gen import GenConfig, generate

    if mode not in ("global", "online"):
        from lmmr1.errors import LmmR1Error

        raise LmmR1Error(f"sokoban: mode must be global or online, got {mode!r}")
    _check_prompt(prompt)
    _check_slack(slack)
    cfg = GenConfig(size=size, boxes=boxes, min_moves=min_moves, max_moves=max_moves)
    cfg.check_values()
    seed = rng.getrandbits(31)
    g = generate(cfg, seed)
    level = g.level
    xsb = level.to_xsb()
    moves = ", ".join(g.solution if mode == "global" else g.solution[:1])
    env = _budget({"name": "sokoban", "level": xsb, "optimal_moves": g.optimal_moves, "mode": mode}, g.optimal_moves, slack)
    return Problem(
        key="sokoban:" + "|".join(xsb) + ("" if mode == "global" else ":online"),
        question=sokoban_text_prompt("\n".join(level.to_xsb(floor="_")), mode, prompt),
        image_question=sokoban_image_prompt(mode, prompt), answer=moves,
        response=(f"<think>Pushing the boxes onto the goals takes {g.optimal_moves} "
                  f"move{'' if g.optimal_moves == 1 else 's'}.</think><answer>{moves}</answer>"),
        draw=lambda px: render_sokoban(level, max(4, px // max(level.width, level.height))),
        fields={"env": env},
    )


FOOTBALL_RULES = ("You control the attacker with the ball; score in the goal on the right while the defenders "
                  "and the keeper try to take the ball.")


def football_prompt(mode: str, description: str = "") -> str:
    from lmmr1.envs.football import ACTIONS

    what = ("The scene:\n" + description + "\n") if description else (
        "The image shows the pitch from above: blue attackers (you are ringed in white, with the ball), red "
        "defenders, the yellow keeper, the goal on the right.\n")
    ask = ("Give all your actions at once, comma-separated, inside <answer></answer>"
           if mode == "global" else "Give your next action inside <answer></answer>")
    return (f"You are playing football. {FOOTBALL_RULES}\n{what}Think inside <think></think>. {ask}, "
            f"choosing from: {', '.join(ACTIONS)}. Example: <answer>right, right, shot</answer>.")


def football(rng: random.Random, attackers: int = 2, defenders: int = 2, mode: str = "global") -> Problem:
    """A seeded attacking scenario (MageBench-like); the worked answer is a beam-search plan."""
    from lmmr1.data.synth import Problem
    from lmmr1.envs.football import FootballEnv, GenConfig, plan

    if mode not in ("global", "online"):
        from lmmr1.errors import LmmR1Error

        raise LmmR1Error(f"football: mode must be global or online, got {mode!r}")
    GenConfig(attackers, defenders).check_values()
    seed = rng.getrandbits(31)
    game = FootballEnv.from_spec({"name": "football", "generate": {"attackers": attackers, "defenders": defenders}})
    game.reset(seed)
    scenario = game.start.to_dict()
    text = game.describe()
    actions, ret, goal = plan(game, seed)
    shown = actions if mode == "global" else actions[:1]
    env = {"name": "football", "scenario": scenario, "mode": mode}
    return Problem(
        key="football:" + json.dumps(scenario, sort_keys=True) + mode, question=football_prompt(mode, text),
        image_question=football_prompt(mode), answer=", ".join(shown),
        response=(f"<think>{'Dribble and pass toward the goal, then shoot' if goal else 'Carry the ball forward'}."
                  f"</think><answer>{', '.join(shown)}</answer>"),
        draw=lambda px, s=scenario: _draw_football(s, px), fields={"env": env, "reference_return": round(ret, 3)},
    )


def _draw_football(scenario: dict, px: int):
    from lmmr1.envs.render import render_football

    return render_football([tuple(p) for p in scenario["attackers"]], 0, [tuple(p) for p in scenario["defenders"]],
                           tuple(scenario["keeper"]), px)


# ---------------------------------------------------------------------------------- multi-turn
TURN_FORMAT = "Give only your next move, one of Up, Down, Left, Right, inside <answer></answer>, e.g. <answer>Left</answer>."


def sokoban_turn_text(grid: str, prompt: str = "full") -> str:
    """The multi-turn prompt, also used (as ``episode.observation_template``) for every later turn."""
    if prompt == "short":
        return f"Sokoban.\n{grid}\n{SHORT_ASK['online']}"
    return f"You are playing Sokoban. {SOKOBAN_RULES}\nThe level ({SOKOBAN_LEGEND}):\n{grid}\n{TURN_FORMAT}"


def sokoban_turns(rng: random.Random, size: int = 7, boxes: int = 2, min_moves: int = 1, max_moves: int = 20,
                  mid_path: int = 1, prompt: str = "full", slack: int | None = None) -> Problem:
    """Multi-turn Sokoban rows (issue 12, item 5): one move per answer, the env played turn by turn.

    ``mid_path=1`` starts the row at a random state along the level's optimal solution (SFT then
    sees the next optimal move from states an episode passes through; every state of a level can
    become its own row); ``mid_path=0`` starts at the level itself (held-out evaluation).
    ``slack``: the episode's move budget beyond the optimal length from the row's state.  The
    split key is the level, so one level never lands in two splits.  The grid is written as the env's text observation writes it, so every turn of
    an episode reads alike.
    """
    from lmmr1.data.synth import Problem
    from lmmr1.envs.render import render_sokoban
    from lmmr1.envs.sokoban import replay
    from lmmr1.envs.sokoban_gen import GenConfig, generate

    _check_prompt(prompt)
    _check_slack(slack)
    cfg = GenConfig(size=size, boxes=boxes, min_moves=min_moves, max_moves=max_moves)
    cfg.check_values()
    g = generate(cfg, rng.getrandbits(31))
    k = rng.randrange(len(g.solution)) if mid_path else 0
    state = replay(g.level, g.solution[:k]).final
    rest = g.solution[k:]
    env = _budget({"name": "sokoban", "level": state.to_xsb(), "optimal_moves": len(rest)}, len(rest), slack)
    return Problem(
        key="sokoban_turns:" + "|".join(g.level.to_xsb()) + (f":{k}" if k else ""),
        split_key="sokoban_turns:" + "|".join(g.level.to_xsb()), question=sokoban_turn_text("\n".join(state.to_xsb(floor="_")), prompt),
        image_question=(sokoban_image_prompt("online", prompt) if prompt == "short" else
                        f"You are playing Sokoban in the image ({SOKOBAN_IMAGE_LEGEND}). {SOKOBAN_RULES}\n{TURN_FORMAT}"),
        answer=", ".join(rest), response=f"<answer>{rest[0]}</answer>",
        draw=lambda px: render_sokoban(state, max(4, px // max(state.width, state.height))),
        fields={"env": env},
    )
