"""Sokoban: XSB, gym-sokoban move/push rules and rewards, episode end, generator and BFS solver,
renderer.  Rewards are hand-derived from gym-sokoban's numbers: −0.1 per step, +1 box onto a
goal, −1 box off a goal, +10 solved."""

from __future__ import annotations

import itertools

import pytest

from lmmr1.envs import EnvError, Observation, StepResult, make_env
from lmmr1.envs.render import PLAYER, render_sokoban
from lmmr1.envs.sokoban import Level, SokobanEnv, parse_action, parse_actions, replay
from lmmr1.envs.sokoban_gen import GenConfig, generate, solve

ONE_PUSH = ["#####", "#@$.#", "#####"]  # Right solves it: -0.1 + 1 + 10 = 10.9
# box on a goal at (1,2), an empty goal at (1,4), a second box at (2,3) that stays off its goal
OFF_THEN_ON = ["######", "#@* .#", "#  $ #", "######"]


def test_xsb_round_trip_and_symbols():
    lines = ["#######", "#+ *  #", "# $   #", "#######"]
    lv = Level.from_xsb(lines)
    assert lv.player == (1, 1) and lv.player in lv.goals
    assert lv.boxes == {(1, 3), (2, 2)} and lv.goals == {(1, 1), (1, 3)}
    assert lv.to_xsb() == lines
    assert Level.from_xsb(["######", "#@$-.#", "######"]).to_xsb() == ["######", "#@$ .#", "######"]  # - is floor
    ragged = Level.from_xsb(["#####", "#@$_.#", "#####"])  # past a short line's end: wall
    assert ragged.to_xsb(floor="_") == ["######", "#@$_.#", "######"] and ragged.is_wall((0, 5))


@pytest.mark.parametrize("lines,msg", [
    (["#####", "#@$x#", "#####"], "line 2, column 4: 'x' is not XSB"),
    (["#####", "#@$@.", "#####"], "exactly one player"),
    (["#####", "#@$..#", "#####"], "1 boxes but 2 goals"),
    (["#####", "#@ .#", "#####"], "at least one box"),
    ([], "empty level"),
    ("#@$.#", None),  # a single string is accepted as lines
])
def test_malformed_xsb_is_one_clear_error(lines, msg):
    if msg is None:
        assert Level.from_xsb(lines).boxes == {(0, 2)}
        return
    with pytest.raises(EnvError, match=msg):
        Level.from_xsb(lines)


def test_make_env_errors_name_the_row():
    with pytest.raises(EnvError, match=r"^d.jsonl:3: unknown env name 'chess'; known: football, sokoban$"):
        make_env({"name": "chess"}, "d.jsonl:3")
    with pytest.raises(EnvError, match=r"^d.jsonl:4: .*line 2, column 2"):
        make_env({"name": "sokoban", "level": ["###", "#?#", "###"]}, "d.jsonl:4")
    with pytest.raises(EnvError, match="view must be one of"):
        make_env({"name": "sokoban", "level": ONE_PUSH, "view": "3d"})
    with pytest.raises(EnvError, match="unknown env option"):
        make_env({"name": "sokoban", "level": ONE_PUSH, "colour": 1})
    with pytest.raises(EnvError, match="unknown option"):
        make_env({"name": "sokoban", "generate": {"boxs": 2}})
    with pytest.raises(EnvError, match="must be an object"):
        make_env(["sokoban"])


def test_step_rewards_and_episode_end():
    env = make_env({"name": "sokoban", "level": ONE_PUSH})
    obs = env.reset(0)
    assert isinstance(obs, Observation) and obs.text == "#####\n#@$.#\n#####" and obs.images == []
    r = env.step("left")  # wall: a no-op that still costs the step
    assert isinstance(r, StepResult)
    assert r.reward == pytest.approx(-0.1) and not r.done and r.info["valid"] and not r.info["moved"]
    assert r.observation.text == obs.text
    r = env.step("RIGHT")
    assert r.reward == pytest.approx(10.9) and r.done and r.success and r.info["success"]
    assert r.anchor == ((1, 1), ((1, 2),))  # the state the action was taken from
    later = env.step("Left")  # after the end: ignored
    assert later.reward == 0.0 and later.done and later.observation.text == r.observation.text


def test_box_off_goal_and_blocked_push():
    env = make_env({"name": "sokoban", "level": OFF_THEN_ON})
    env.reset(0)
    assert env.step("Right").reward == pytest.approx(-1.1)  # box leaves its goal
    assert env.step("Right").reward == pytest.approx(0.9)  # box onto the other goal, not solved
    assert env.step("Right").reward == pytest.approx(-0.1)  # box against the wall: no-op
    assert env.state.player == (1, 3) and env.state.boxes == {(1, 4), (2, 3)}
    two = Level.from_xsb(["######", "#@$$.#", "#   .#", "######"])
    after, moved = two.move((0, 1))  # a box backed by a box does not move
    assert after is two and not moved


def test_invalid_action_text_is_no_step():
    env = make_env({"name": "sokoban", "level": ONE_PUSH, "max_steps": 2})
    env.reset(0)
    r = env.step("jump over")
    assert not r.info["valid"] and r.reward == 0.0 and not r.done and env.steps == 0
    env.step("Left")
    r = env.step("Left")  # second counted step: the step budget ends the episode, unsolved
    assert r.done and not r.success and r.info["truncated"]


def test_action_parsing():
    assert parse_action(" up. ") == "Up" and parse_action("RIGHT") == "Right" and parse_action("upp") is None
    assert parse_actions("left, Up,down ,RIGHT") == ["Left", "Up", "Down", "Right"]
    assert parse_actions("left, jump") is None and parse_actions("") is None and parse_actions(" , ") is None


def test_anchor_equal_for_equal_states():
    env = make_env({"name": "sokoban", "level": OFF_THEN_ON})
    env.reset(0)
    a0 = env.step("Down").anchor
    env.step("Up")
    assert env.step("Down").anchor == a0  # back in the start state
    env.reset(0)
    env.step("Right")
    assert env.step("Left").anchor != a0  # box moved: a different state


def test_generator_deterministic_solvable_and_in_range():
    cfg = GenConfig(size=7, boxes=2, min_moves=3, max_moves=12)
    for seed in range(8):
        g = generate(cfg, seed)
        assert generate(cfg, seed).level == g.level  # same seed, same level
        assert 3 <= g.optimal_moves <= 12 and not g.level.solved
        assert len(g.level.boxes) == 2 and g.level.height == g.level.width == 7
        r = replay(g.level, g.solution)
        assert r.solved and r.steps == g.optimal_moves
        assert Level.from_xsb(g.level.to_xsb()) == g.level
    assert len({tuple(generate(cfg, s).level.to_xsb()) for s in range(8)}) >= 6  # seeds differ
    three = generate(GenConfig(boxes=3), 1)
    assert len(three.level.boxes) == 3 and replay(three.level, three.solution).solved


def _brute_force_len(level: Level, limit: int) -> int | None:
    """Shortest solving move list by trying every sequence, shortest first (independent of BFS)."""
    for n in range(limit + 1):
        for seq in itertools.product(("Up", "Down", "Left", "Right"), repeat=n):
            if replay(level, seq).solved and replay(level, seq).steps == n:
                return n
    return None


def test_bfs_is_optimal():
    assert solve(Level.from_xsb(ONE_PUSH)) == ["Right"]
    # the box must be pushed down then right: walk round it first
    lv = Level.from_xsb(["######", "#@   #", "# $  #", "#   .#", "######"])
    sol = solve(lv)
    assert len(sol) == _brute_force_len(lv, 6) and replay(lv, sol).solved
    for seed in range(4):
        g = generate(GenConfig(min_moves=1, max_moves=5), seed)
        assert g.optimal_moves == _brute_force_len(g.level, 5)
    assert solve(Level.from_xsb(["#####", "#@.$#", "#####"])) is None  # box in a corner: unsolvable


def test_generated_env_reset_by_seed_and_image_view():
    spec = {"name": "sokoban", "generate": {"size": 6, "boxes": 1, "min_moves": 2}, "view": "image", "tile": 10}
    a, b = make_env(spec), make_env(spec)
    oa, ob = a.reset(5), b.reset(5)
    assert oa.text == "" and len(oa.images) == 1 and oa.images[0].size == (60, 60)
    assert oa.images[0].tobytes() == ob.images[0].tobytes()
    assert a.reset(6).images[0].tobytes() != oa.images[0].tobytes() or a.start != b.start
    r, c = b.state.player
    assert oa.images[0].getpixel((c * 10 + 5, r * 10 + 5)) == PLAYER  # the disc sits on the player's cell
    both = make_env({**spec, "view": "both"})
    ob2 = both.reset(5)
    assert ob2.text.count("\n") == 5 and len(ob2.images) == 1


def test_render_marks_boxes_on_goals():
    lv = Level.from_xsb(["#####", "#@* #", "#####"])
    img = render_sokoban(lv, 8)
    assert img.size == (40, 24)
    assert img.getpixel((2 * 8 + 4, 1 * 8 + 4)) == (60, 170, 60)  # green: box on goal
    assert img.getpixel((0, 0)) == (90, 60, 40)  # wall


def test_reset_required_and_bad_options():
    env = SokobanEnv(Level.from_xsb(ONE_PUSH))
    with pytest.raises(EnvError, match="reset"):
        env.step("Up")
    with pytest.raises(EnvError, match="max_steps"):
        make_env({"name": "sokoban", "level": ONE_PUSH, "max_steps": 0})
    with pytest.raises(EnvError, match="min_moves"):
        make_env({"name": "sokoban", "generate": {"min_moves": 9, "max_moves": 3}})
    env = make_env({"name": "sokoban", "generate": {"size": 5, "boxes": 1, "min_moves": 30, "attempts": 3}})
    with pytest.raises(EnvError, match="no level with an optimal solution"):
        env.reset(0)
