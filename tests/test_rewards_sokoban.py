"""The single-turn ``sokoban`` reward (LMM-R1's shaping), hand-derived, and ``lmmr1 score`` writing
``success`` that agrees with an independent replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmmr1.rewards.agents import (
    action_bonus,
    best_prefix_return,
    is_repetitive,
    sokoban_score,
    thinking_bonus,
)
from lmmr1.rewards.base import RowError, Sample
from lmmr1.rewards.compose import CompositeReward

ONE_PUSH = {"name": "sokoban", "level": ["#####", "#@$.#", "#####"]}
OFF_THEN_ON = {"name": "sokoban", "level": ["######", "#@* .#", "#  $ #", "######"]}


def test_solved_in_one_push():
    s = sokoban_score("<think>push it right</think><answer>Right</answer>", ONE_PUSH)
    # task 10.9 (-0.1 + 1 + 10) + 0.5 format + 0.05 (1 move) + 0.003 (3 words)
    assert s.task == pytest.approx(10.9) and s.format == 1.0 and s.actions == pytest.approx(0.05)
    assert s.thinking == pytest.approx(0.003) and s.total == pytest.approx(11.453) and s.success


def test_best_prefix_and_ignored_tail():
    s = sokoban_score("<think>x</think><answer>Left, right</answer>", ONE_PUSH)
    assert s.task == pytest.approx(10.8) and s.total == pytest.approx(10.8 + 0.5 + 0.1 + 0.001)
    s = sokoban_score("<think>x</think><answer>Right, Left, Left</answer>", ONE_PUSH)  # ends when solved
    assert s.task == pytest.approx(10.9) and s.actions == pytest.approx(0.15) and s.success


def test_task_never_below_zero_and_box_off_goal():
    # Right: box off its goal (-1.1), Right: onto the other goal (+0.9); prefix sums -1.1, -0.2
    s = sokoban_score("<think>a b</think><answer>Right, Right</answer>", OFF_THEN_ON)
    assert s.task == 0.0 and not s.success and s.total == pytest.approx(0.5 + 0.1 + 0.002)
    assert best_prefix_return([-1.1, 0.9, 5.0]) == pytest.approx(4.8)
    assert best_prefix_return([]) == 0.0


def test_no_format_and_no_answer():
    s = sokoban_score("<answer>left</answer>", ONE_PUSH)  # no <think>: format 0, task max(0, -0.1)
    assert s.format == 0.0 and s.task == 0.0 and s.total == pytest.approx(0.05) and not s.success
    for bad in ("Right", "<think>I go right</think>", "<think>t</think><answer>Right, jump</answer>",
                "<think>t</think><answer></answer>", "<think>t</think><answer>Right"):
        s = sokoban_score(bad, ONE_PUSH)
        assert s.total == 0.0 and not s.success, bad


def test_only_first_50_moves_replayed():
    moves = ", ".join(["Left"] * 50 + ["Right"])
    s = sokoban_score(f"<think>w</think><answer>{moves}</answer>", ONE_PUSH)
    # the solving Right is move 51: not replayed; 51 Lefts are repetitive: no action bonus
    assert not s.success and s.task == 0.0 and s.actions == 0.0 and s.total == pytest.approx(0.501)
    assert s.n_actions == 51


def test_action_bonus_values():
    mv = ["Up", "Left", "Down", "Right"]
    seq = lambda n: [mv[(i * 7 // 3) % 4] for i in range(n)]  # noqa: E731  (non-repetitive)
    assert not is_repetitive(seq(60))
    assert action_bonus([]) == 0.0
    assert action_bonus(seq(1)) == pytest.approx(0.05) and action_bonus(seq(19)) == pytest.approx(0.95)
    assert action_bonus(seq(20)) == pytest.approx(1.0)
    assert action_bonus(seq(35)) == pytest.approx(0.95)  # 1 - 0.2 * (15/30)^2
    assert action_bonus(seq(50)) == pytest.approx(0.8)
    assert action_bonus(seq(80)) == pytest.approx(1 - 0.2 * 4)
    assert action_bonus(seq(110)) == pytest.approx(1 - 0.2 * 9)  # -0.8
    assert action_bonus(seq(200)) == -1.0  # 1 - 0.2 * 36 = -6.2, clamped at -1 (from ~115 moves on)
    assert action_bonus(["Left"] * 7) == pytest.approx(0.35)  # 7 in a row: allowed
    assert action_bonus(["Left"] * 8) == 0.0
    assert action_bonus(["Left", "Right"] * 4) == 0.0
    assert action_bonus(["Up", "Up", "Left"] * 3) == 0.0
    assert action_bonus(["Up", "Up", "Left"] * 2) == pytest.approx(0.3)


def test_huge_answers_score_in_linear_time():
    import time

    t = time.perf_counter()
    moves = ", ".join(["Up", "Left", "Down", "Right", "Up", "Up", "Left"] * 25_000)  # ~1 MB, not repetitive
    s = sokoban_score(f"<think>w</think><answer>{moves}</answer>", ONE_PUSH)
    assert s.n_actions == 175_000 and s.actions == -1.0 and s.success  # Down, Right solve it early
    assert sokoban_score("<answer>" + "Left, " * 150_000 + "Right</answer>", ONE_PUSH).actions == 0.0
    assert time.perf_counter() - t < 60  # did not hang (quadratic would take hours)


def test_thinking_bonus_capped():
    assert thinking_bonus("<think>" + "w " * 150 + "</think>") == pytest.approx(0.15)
    assert thinking_bonus("<think>" + "w " * 250 + "</think>") == pytest.approx(0.2)
    assert thinking_bonus("no think block") == 0.0


def test_registered_reward_and_bad_env_rows():
    comp = CompositeReward(["sokoban"])
    good = Sample("<think>x</think><answer>Right</answer>", fields={"env": ONE_PUSH})
    as_text = Sample("<think>x</think><answer>Right</answer>", fields={"env": json.dumps(ONE_PUSH)})
    missing = Sample("<answer>Right</answer>")
    broken = Sample("<answer>Right</answer>", fields={"env": {"name": "sokoban", "level": ["#@$x#"]}})
    res = comp([good, as_text, missing, broken])
    assert res.total[0] == pytest.approx(11.451) and res.total[1] == pytest.approx(11.451)
    assert res.total[2] is None and "needs the row's 'env' field" in res.errors[2]
    assert res.total[3] is None and "column 4" in res.errors[3]
    flags = comp.parts[0][2].success_of([good, missing])
    assert flags[0] is True and flags[1] is None
    assert isinstance(comp.parts[0][2]([missing])[0], RowError)


# ------------------------------------------------------------------------------ lmmr1 score
def independent_replay(level: list[str], moves: list[str]) -> bool:
    """Solved? Straight grid-of-characters replay, sharing no code with lmmr1 (first 50 moves)."""
    g = [list(r) for r in level]
    w = max(len(r) for r in g)
    g = [r + ["#"] * (w - len(r)) for r in g]
    pr, pc = next((r, c) for r in range(len(g)) for c in range(w) if g[r][c] in "@+")
    d = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}

    def solved():
        return not any("$" in r for r in g)

    def leave(r, c):
        g[r][c] = "." if g[r][c] in "+*" else " "

    for m in moves[:50]:
        if solved():
            break
        dr, dc = d[m.strip().lower()]
        r1, c1, r2, c2 = pr + dr, pc + dc, pr + 2 * dr, pc + 2 * dc
        if g[r1][c1] == "#":
            continue
        if g[r1][c1] in "$*":
            if g[r2][c2] in "#$*":
                continue
            g[r2][c2] = "*" if g[r2][c2] == "." else "$"
            g[r1][c1] = "+" if g[r1][c1] == "*" else "@"
        else:
            g[r1][c1] = "+" if g[r1][c1] == "." else "@"
        leave(pr, pc)
        pr, pc = r1, c1
    return solved()


def test_score_success_agrees_with_independent_replay(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    lmmr1 = [sys.executable, "-m", "lmmr1.cli"]
    subprocess.run(lmmr1 + ["data", "synth", "sokoban", "--out", str(tmp_path), "--n", "12", "--split", "test",
                            "--modality", "text", "--knob", "min_moves=2"], check=True, env=env, capture_output=True)
    rows = [json.loads(x) for x in (tmp_path / "sokoban_test_text.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["env"]["view"] == "text" and r["env"]["level"] for r in rows)
    import random

    rng = random.Random(0)
    lines = []
    for r in rows:
        sol = r["answer"].split(", ")
        kinds = [sol, sol[:-1], [rng.choice(["Up", "Down", "Left", "Right"]) for _ in range(len(sol) + 2)]]
        for moves in kinds:
            lines.append({"completion": f"<think>go</think><answer>{', '.join(moves)}</answer>", "env": r["env"]})
        lines.append({"completion": "<think>no idea</think>", "env": r["env"]})
    lines.append({"completion": "<answer>Up</answer>"})  # no env field: an error row, not a success
    src = tmp_path / "comp.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "scored.jsonl"
    p = subprocess.run(lmmr1 + ["score", str(src), "--reward", "sokoban", "--out", str(out)], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    scored = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(scored) == len(lines)
    n_success = 0
    for row in scored[:-1]:
        block = row["completion"].split("<answer>")[-1].split("</answer>")[0] if "<answer>" in row["completion"] else ""
        expect = bool(block) and independent_replay(row["env"]["level"], block.split(","))
        assert row["success"] is expect, row
        assert isinstance(row["rewards"]["sokoban"], float)
        n_success += expect
    assert "error" in scored[-1] and "success" not in scored[-1]
    assert n_success >= 12  # every optimal solution solves its level
    assert all(scored[4 * i]["success"] for i in range(12)) and not any(scored[4 * i + 1]["success"] for i in range(12))
    assert f"success: {n_success}/{len(lines) - 1}" in " ".join((p.stdout + p.stderr).split())
