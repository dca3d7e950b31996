"""Football: dynamics, reward terms (hand-derived), modes, scenarios, renderer and the football reward."""

from __future__ import annotations

import pytest

from lmmr1.envs import EnvError, make_env
from lmmr1.envs.football import ACTIONS, FootballEnv, GenConfig, generate, parse_action, parse_actions, plan
from lmmr1.rewards.agents import football_score


def env_of(attackers, defenders=(), keeper=(0.97, 0.0), **kw):
    spec = {"name": "football", "scenario": {"attackers": [list(p) for p in attackers],
                                             "defenders": [list(p) for p in defenders], "keeper": list(keeper)}, **kw}
    e = make_env(spec)
    e.reset(0)
    return e


def test_nineteen_named_actions_and_parsing():
    assert len(ACTIONS) == 19 and len(set(ACTIONS)) == 19
    assert parse_action("Top Right") == "top_right" and parse_action("SHORT-PASS") == "short_pass"
    assert parse_action("kick") is None
    assert parse_actions("right, Sprint , shot") == ["right", "sprint", "shot"] and parse_actions("right, kick") is None


def test_run_sprint_dribble_progress_rewards():
    e = env_of([(0.5, 0.0)])
    assert e.step("right").reward == pytest.approx(20 * 0.8 * 0.03 / 2)  # 0.24
    e.step("sprint")
    assert e.step("right").reward == pytest.approx(0.36)
    e.step("release_sprint")
    e.step("dribble")
    assert e.step("right").reward == pytest.approx(0.16)
    assert e.s.ball == pytest.approx((0.595, 0.0))


def test_shot_goal_saved_far():
    r = env_of([(0.7, 0.0)], keeper=(0.97, 0.08)).step("shot")
    assert r.done and r.success and r.info["outcome"] == "goal" and r.reward == pytest.approx(20 * (2 + 0.1))
    r = env_of([(0.7, 0.0)], keeper=(0.85, 0.0)).step("shot")
    assert r.done and not r.success and r.info["outcome"] == "saved" and r.reward == pytest.approx(2.0)
    r = env_of([(0.5, 0.0)]).step("shot")  # 0.5 from goal: out of range, no pay
    assert r.done and not r.success and r.info["outcome"] == "shot_far" and r.reward == 0.0


def test_steal_interception_high_pass_and_out():
    r = env_of([(0.5, 0.0)], [(0.56, 0.0)]).step("right")
    assert r.done and r.info["outcome"] == "stolen" and r.reward == pytest.approx(-20.0)
    r = env_of([(0.5, 0.0), (0.7, 0.0)], [(0.6, 0.01)]).step("short_pass")
    assert r.done and r.info["outcome"] == "intercepted" and r.reward == pytest.approx(-20.0)
    e = env_of([(0.5, 0.0), (0.7, 0.0)], [(0.6, 0.01)])
    r = e.step("high_pass")  # over the defender: progress 1.6 + one opponent passed 20/11 + pass term 0.1
    assert not r.done and e.s.carrier == 1
    assert r.reward == pytest.approx(1.6 + 20 / 11 + 0.1)
    e.step("left")  # control followed the ball: the receiver moves
    assert e.s.ball == pytest.approx((0.67, 0.0))
    r = env_of([(0.5, 0.41)]).step("bottom")
    assert r.done and r.info["outcome"] == "out" and r.reward == pytest.approx(-20.0)


def test_back_and_forth_passing_earns_nothing():
    e = env_of([(0.5, 0.0), (0.6, 0.3)])
    first = e.step("short_pass").info["terms"]["pass"]
    assert first == 1.0  # no defenders: full clearance, new ground
    e.step("left")  # face back toward the other attacker
    assert e.step("short_pass").info["terms"]["pass"] == 0.0


def test_invalid_text_time_limit_and_ignored_after_end():
    e = env_of([(0.0, 0.0)], max_steps=2)
    r = e.step("kick the ball")
    assert not r.info["valid"] and r.reward == 0.0 and e.s.steps == 0
    e.step("idle")
    r = e.step("idle")
    assert r.done and r.info["outcome"] == "time" and not r.success
    assert e.step("right").reward == 0.0


def test_scenarios_seeded_and_modes():
    a = generate(GenConfig(3, 2), 7)
    assert a == generate(GenConfig(3, 2), 7) and a != generate(GenConfig(3, 2), 8)
    assert len(a.attackers) == 3 and len(a.defenders) == 2
    spec = {"name": "football", "generate": {"attackers": 2, "defenders": 1}, "mode": "online", "view": "both"}
    e = make_env(spec)
    o = e.reset(3)
    assert "You have the ball" in o.text and o.images[0].size == (168, 71)
    anchor = e.step("idle").anchor
    e2 = make_env({**spec, "mode": "global"})
    e2.reset(3)
    assert e2.step("idle").anchor == anchor  # modes share the dynamics


def test_bad_specs():
    with pytest.raises(EnvError, match="off the pitch"):
        make_env({"name": "football", "scenario": {"attackers": [[1.5, 0]], "defenders": []}})
    with pytest.raises(EnvError, match="mode must be"):
        make_env({"name": "football", "generate": {}, "mode": "turbo"})
    with pytest.raises(EnvError, match="scenario.attackers"):
        make_env({"name": "football", "scenario": {"attackers": [], "defenders": []}})
    with pytest.raises(EnvError, match="defenders must be"):
        make_env({"name": "football", "generate": {"defenders": 9}})


def test_football_reward_global_replay_and_planner():
    env = {"name": "football", "scenario": {"attackers": [[0.7, 0.0]], "defenders": [], "keeper": [0.97, 0.08]}}
    s = football_score("<think>go</think><answer>sprint, Right, shot, left</answer>", env)
    assert s.success and s.total == pytest.approx(0.36 + 42.0)  # 'left' after the goal is ignored
    assert football_score("<answer>sprint, kick</answer>", env).total == 0.0
    game = FootballEnv.from_spec({"name": "football", "generate": {}})
    actions, ret, goal = plan(game, 0)
    spec = {"name": "football", "scenario": game.start.to_dict()}
    replay = football_score(f"<answer>{', '.join(actions)}</answer>", spec)
    assert replay.total == pytest.approx(ret) and replay.success == goal
