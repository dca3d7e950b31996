"""`lmmr1 data synth sokoban|football`: LMM-R1 rows with an env field, worked answers that solve
the env, disjoint splits, image versions showing the rendered frame."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lmmr1.data.synth import knob_names, write_suite
from lmmr1.envs import make_env
from lmmr1.envs.sokoban import Level
from lmmr1.errors import LmmR1Error
from lmmr1.rewards.agents import football_score, sokoban_score


def rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_sokoban_rows_text_and_image(tmp_path):
    paths = write_suite(tmp_path, "sokoban", "train", 6, "both", boxes=2, min_moves=3, max_moves=10)
    text, image = rows(paths["text"]), rows(paths["image"])
    assert len(text) == len(image) == 6
    for t, i in zip(text, image, strict=True):
        assert t["env"]["view"] == "text" and i["env"]["view"] == "image"
        assert t["env"]["level"] == i["env"]["level"] and t["datasource"] == "sokoban_text"
        level = Level.from_xsb(t["env"]["level"])
        assert len(level.boxes) == 2 and 3 <= t["env"]["optimal_moves"] <= 10
        assert len(t["answer"].split(", ")) == t["env"]["optimal_moves"]
        prompt = json.loads(t["message"])[0]["content"]
        assert "\n".join(level.to_xsb(floor="_")) in prompt  # the grid is in the text prompt
        content = json.loads(i["message"])[0]["content"]
        img = Image.open(tmp_path / content[0]["image"])
        assert img.size == (112, 112) and "\n#" not in content[1]["text"]  # the image version has no grid
        s = sokoban_score(t["response"], t["env"])  # the worked response solves the level, well formed
        assert s.success and s.format == 1.0
        env = make_env(t["env"])
        env.reset(0)
        for mv in t["answer"].split(", "):
            r = env.step(mv)
        assert r.done and r.success


def test_sokoban_splits_disjoint_and_prefix(tmp_path):
    levels = {}
    for split in ("train", "test"):
        p = write_suite(tmp_path / split, "sokoban", split, 20, "text")["text"]
        levels[split] = {tuple(r["env"]["level"]) for r in rows(p)}
    assert not levels["train"] & levels["test"]
    small = rows(write_suite(tmp_path / "small", "sokoban", "test", 5, "text")["text"])
    assert [tuple(r["env"]["level"]) for r in small] == [tuple(r["env"]["level"]) for r in
                                                         rows(tmp_path / "test" / "sokoban_test_text.jsonl")][:5]


def test_football_rows_global_and_online(tmp_path):
    g = rows(write_suite(tmp_path, "football", "test", 3, "text")["text"])
    o = rows(write_suite(tmp_path / "o", "football", "test", 3, "image", mode="online")["image"])
    for r in g:
        assert r["env"]["mode"] == "global" and r["env"]["view"] == "text"
        s = football_score(r["response"], r["env"])
        assert s.total == pytest.approx(r["reference_return"], abs=1e-3)
        assert "You have the ball" in json.loads(r["message"])[0]["content"]
    for r in o:
        assert r["env"]["mode"] == "online" and len(r["answer"].split(", ")) == 1
        assert "Give your next action" in json.loads(r["message"])[0]["content"][1]["text"]


def test_agent_suite_knobs_and_errors(tmp_path):
    assert knob_names("sokoban") == {"size": 7, "boxes": 2, "min_moves": 1, "max_moves": 20, "mode": "global",
                                     "prompt": "full", "slack": None}
    online = rows(write_suite(tmp_path / "on", "sokoban", "test", 3, "text", mode="online")["text"])
    for r in online:
        assert r["env"]["mode"] == "online" and "give your next move" in json.loads(r["message"])[0]["content"]
        assert r["answer"] in ("Up", "Down", "Left", "Right") and make_env(r["env"]).reset(0).text
    assert knob_names("football") == {"attackers": 2, "defenders": 2, "mode": "global"}
    with pytest.raises(LmmR1Error, match="30 boxes do not fit"):
        write_suite(tmp_path, "sokoban", "train", 1, "text", boxes=30)
    with pytest.raises(LmmR1Error, match="unknown knob"):
        write_suite(tmp_path, "sokoban", "train", 1, "text", walls=3)
    with pytest.raises(LmmR1Error, match="mode must be global or online"):
        write_suite(tmp_path, "football", "train", 1, "text", mode="fast")
    for bad in (-1, 1.5, True):
        with pytest.raises(LmmR1Error, match="slack must be a non-negative integer"):
            write_suite(tmp_path, "sokoban", "train", 1, "text", slack=bad)


def test_sokoban_slack_is_the_levels_move_budget(tmp_path):
    """slack=k: the env's max_steps is the optimal length + k, so the reward replays that many moves
    only: the optimal answer still solves, the same answer with a wasted detour of k+1 moves
    (a wall bump costs a move, changes nothing) does not; without slack gym-sokoban's 120 apply."""
    from lmmr1.envs.sokoban import MAX_STEPS, MOVES

    checked = 0
    for slack in (0, 2):
        for r in rows(write_suite(tmp_path / str(slack), "sokoban", "test", 8, "text", size=5, boxes=1,
                                  max_moves=4, slack=slack)["text"]):
            opt = r["env"]["optimal_moves"]
            assert r["env"]["max_steps"] == opt + slack
            assert sokoban_score(r["response"], r["env"]).success
            level = Level.from_xsb(r["env"]["level"])
            bump = next((m for m in ("Up", "Down", "Left", "Right") if level.move(MOVES[m.lower()])[0] == level), None)
            if bump is None:  # the player stands free on every side: no wasted move to make
                continue
            checked += 1
            wasted = ", ".join([bump] * (slack + 1) + r["answer"].split(", "))
            s = sokoban_score(f"<answer>{wasted}</answer>", r["env"])
            assert not s.success and s.n_actions == opt + slack + 1
            no_budget = dict(r["env"])
            del no_budget["max_steps"]
            assert sokoban_score(f"<answer>{wasted}</answer>", no_budget).success
    assert checked >= 8
    plain = rows(write_suite(tmp_path / "none", "sokoban", "test", 2, "text", size=5, boxes=1, max_moves=4)["text"])
    assert all("max_steps" not in r["env"] for r in plain) and MAX_STEPS == 120
    turns = rows(write_suite(tmp_path / "turns", "sokoban_turns", "test", 4, "text", size=5, boxes=1, max_moves=4,
                             mid_path=0, slack=1)["text"])
    assert all(r["env"]["max_steps"] == r["env"]["optimal_moves"] + 1 for r in turns)
