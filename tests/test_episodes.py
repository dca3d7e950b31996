"""Multi-turn episodes: estimator maths (hand-derived), the episode rollout's token bookkeeping on
the tiny VLM (ids carried through, observations out of the loss, images expanded once, budgets),
and a real trainer step driven by env rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lmmr1.algos import EPISODE_ESTIMATORS, TurnIndex, compute_advantages
from lmmr1.data.dataset import Example
from lmmr1.envs.sokoban import Level
from lmmr1.errors import LmmR1Error
from lmmr1.models.sequence import completion_logprobs
from lmmr1.rollout import SamplingParams
from lmmr1.rollout.episodes import action_text, play_episodes
from lmmr1.trainer.config import ConfigError, EpisodeConfig, load_config
from lmmr1.trainer.trainer import Trainer

S = 1 / math.sqrt(2)
LEVEL = ["#######", "#@ $ .#", "#######"]  # solved by Right, Right, Right (3 moves)


# ------------------------------------------------------------------------------ estimators
def _index(rows):
    """rows: (episode, group, turn, anchor, reward) -> scores, kl, mask, TurnIndex."""
    e, g, t, a, r = zip(*rows, strict=True)
    n = len(rows)
    turns = TurnIndex(torch.tensor(e), torch.tensor(g), torch.tensor(t), list(a))
    mask = torch.ones(n, 3)
    mask[0, 2] = 0  # padding stays 0
    return torch.tensor(r), torch.zeros(n, 3), mask, turns


# group 0: e0 = A(-0.1) B(1.0); e1 = A(-0.1) C(-0.1) B(2.0); group 1: e2 = A(5.0) alone
ROWS = [(0, 0, 0, "A", -0.1), (1, 0, 0, "A", -0.1), (2, 1, 0, "A", 5.0), (0, 0, 1, "B", 1.0),
        (1, 0, 1, "C", -0.1), (1, 0, 2, "B", 2.0)]


def test_episode_grpo_by_hand():
    # R_e0 = 0.9, R_e1 = 1.8: mean 1.35, unbiased std 0.45*sqrt2 -> -+1/sqrt2; e2 alone in its group -> 0
    scores, kl, mask, turns = _index(ROWS)
    adv, ret = compute_advantages("episode_grpo", scores, kl, mask, None, turns=turns, eps=0.0)
    assert ret is None
    assert torch.allclose(adv[:, 0], torch.tensor([-S, S, 0.0, -S, S, S]), atol=1e-6)
    assert adv[0, 2] == 0  # padding
    # three single-turn episodes of one group: returns 1, 2, 3 -> mean 2, std 1 -> -1, 0, 1
    t3 = TurnIndex(torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), [0, 1, 2])
    adv3, _ = compute_advantages("episode_grpo", torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, 1), torch.ones(3, 1),
                                 None, turns=t3, eps=0.0)
    assert torch.allclose(adv3[:, 0], torch.tensor([-1.0, 0.0, 1.0]))


def test_gigpo_by_hand_and_gamma_matters():
    # gamma 0.5: G(e0) = [-0.1 + 0.5*1.0, 1.0] = [0.4, 1.0]; G(e1) = [0.35, 0.9, 2.0]
    # anchor A (group 0): 0.4 vs 0.35 -> e0 +1/sqrt2, e1 -1/sqrt2; anchor B: 1.0 vs 2.0 -> -/+; C alone -> 0;
    # e2's anchor A is in group 1, never mixed with group 0's A -> 0.  A = A_ep + 0.5 * A_step.
    scores, kl, mask, turns = _index(ROWS)
    adv, _ = compute_advantages("gigpo", scores, kl, mask, None, turns=turns, gamma=0.5, omega=0.5, eps=0.0)
    want = [-S + 0.5 * S, S - 0.5 * S, 0.0, -S - 0.5 * S, S, S + 0.5 * S]
    assert torch.allclose(adv[:, 0], torch.tensor(want), atol=1e-6)
    # gamma 1: G_A(e0) = 0.9 < G_A(e1) = 1.8, so anchor A's step advantages swap sign
    adv1, _ = compute_advantages("gigpo", scores, kl, mask, None, turns=turns, gamma=1.0, omega=0.5, eps=0.0)
    assert adv1[0, 0] == pytest.approx(-S - 0.5 * S, abs=1e-6) and adv1[1, 0] == pytest.approx(S + 0.5 * S, abs=1e-6)
    # omega 0 is episode GRPO
    adv0, _ = compute_advantages("gigpo", scores, kl, mask, None, turns=turns, omega=0.0, eps=0.0)
    ep, _ = compute_advantages("episode_grpo", scores, kl, mask, None, turns=turns, eps=0.0)
    assert torch.allclose(adv0, ep)


def test_turn_discount_by_hand():
    # gamma 0.5: G(e0) = [0.4, 1.0], G(e1) = [0.35, 0.9, 2.0]; baselines per turn over group 0's two
    # episodes: t0 0.375, t1 0.95, t2 (e0 ended: 0 + 2.0) / 2 = 1.0;  e2: 5 - 5 = 0
    scores, kl, mask, turns = _index(ROWS)
    adv, _ = compute_advantages("turn_discount", scores, kl, mask, None, turns=turns, gamma=0.5)
    assert torch.allclose(adv[:, 0], torch.tensor([0.025, -0.025, 0.0, 0.05, -0.05, 1.0]), atol=1e-6)


def test_episode_estimators_need_turns_and_kl_adds_to_step_rewards():
    scores, kl, mask, turns = _index(ROWS)
    for name in EPISODE_ESTIMATORS:
        with pytest.raises(LmmR1Error, match="episode.turns"):
            compute_advantages(name, scores, kl, mask, 2)
    # a KL reward of -0.3 summed on e1's last row lowers R_e1 from 1.8 to 1.5: still above e0, same signs,
    # but turn_discount's last-turn advantage drops by exactly 0.3 / 2 (half of it is in the baseline)
    kl2 = kl.clone()
    kl2[5, 0] = -0.3
    a, _ = compute_advantages("turn_discount", scores, kl2, mask, None, turns=turns, gamma=0.5)
    assert a[5, 0] == pytest.approx(1.0 - 0.15, abs=1e-6)


# ------------------------------------------------------------------------------ rollout
def _row(view="text", level=LEVEL, prompt="Move the box onto the goal. One move per turn: <answer>Right</answer>"):
    content = prompt + "\n" + "\n".join(level)
    return Example(messages=[{"role": "user", "content": content}], answer=None, source="levels.jsonl:1",
                   datasource="sokoban", fields={"env": {"name": "sokoban", "level": level, "view": view}})


def _unpadded(ro, r):
    p = int(ro.prompt_index[r])
    return ro.prompts.input_ids[p][ro.prompts.attention_mask[p].bool()].tolist()


def test_action_text_takes_the_last_answer():
    assert action_text("<think>hmm</think><answer> Left </answer>") == "Left"
    assert action_text("<answer>Up</answer> then <answer>Down</answer>") == "Down"
    assert action_text("  right ") == "right"


def test_ids_are_carried_through_and_observations_are_out_of_the_loss(loaded_vlm):
    eb = play_episodes(loaded_vlm, [_row(), _row()], [[], []], EpisodeConfig(turns=3),
                       SamplingParams(n=2, max_new_tokens=6, seed=0))
    ro, turns = eb.rollout, eb.rollout.turns
    assert ro.num_rows == sum(len(e.turns) for e in eb.episodes) == 12  # random tiny model: no solve in 3 turns
    for r in range(ro.num_rows):
        ep = eb.episodes[int(turns.episode[r])]
        ids, loss = ep.trace()
        prompt = _unpadded(ro, r)
        action = ro.completion_ids[r, : int(ro.completion_mask[r].sum())].tolist()
        # the context is exactly the trace up to this action, and the action follows it in the trace
        assert ids[: len(prompt)] == prompt
        assert ids[len(prompt): len(prompt) + len(action)] == action
        assert all(loss[len(prompt): len(prompt) + len(action)])  # the action is trained on
        t = int(turns.turn[r])
        assert sum(loss[: len(prompt)]) == sum(len(a.ids) for a, _ in ep.turns[:t])  # earlier actions only
    for ep in eb.episodes:
        ids, loss = ep.trace()
        obs_ids = [i for s in [o for _, o in ep.turns if o is not None] for i in s.ids]
        assert sum(loss) == sum(len(a.ids) for a, _ in ep.turns)  # every other token is masked out
        assert len(ids) - sum(loss) == len(ep.first.ids) + len(obs_ids)
    # teacher-forced log-probs of every turn row equal the sampling log-probs: the trainer sees the
    # very tokens and positions the sampler saw
    lp, _ = completion_logprobs(loaded_vlm, ro.prompts, ro.prompt_index, ro.completion_ids, ro.completion_mask)
    assert ((lp - ro.logprobs).abs() * ro.completion_mask).max() < 1e-4


def test_each_observation_image_is_expanded_once(loaded_vlm):
    eb = play_episodes(loaded_vlm, [_row("image")], [[]], EpisodeConfig(turns=3),
                       SamplingParams(n=2, max_new_tokens=4, seed=1))
    ro, turns = eb.rollout, eb.rollout.turns
    img_id = loaded_vlm.processor.image_token_id
    ep = eb.episodes[0]
    per_image = int(ep.turns[0][1].ids.count(img_id))
    assert per_image > 0 and ep.turns[0][1].n_images == 1
    for r in range(ro.num_rows):
        t = int(turns.turn[r])
        prompt = _unpadded(ro, r)
        assert prompt.count(img_id) == t * per_image  # turn t sees t observation frames, each once
        assert ro.prompts.images_per_row[int(ro.prompt_index[r])] == t
        if t:  # the prompt grows by exactly the last action and observation: it does not double
            prev = [q for q in range(ro.num_rows) if turns.episode[q] == turns.episode[r] and turns.turn[q] == t - 1][0]
            act, obs = eb.episodes[int(turns.episode[r])].turns[t - 1]
            assert len(prompt) == len(_unpadded(ro, prev)) + len(act.ids) + len(obs.ids)
    lp, _ = completion_logprobs(loaded_vlm, ro.prompts, ro.prompt_index, ro.completion_ids, ro.completion_mask)
    assert ((lp - ro.logprobs).abs() * ro.completion_mask).max() < 1e-4


def test_budgets_end_episodes_with_flags(loaded_vlm):
    sp = SamplingParams(n=2, max_new_tokens=5, seed=2)
    eb = play_episodes(loaded_vlm, [_row()], [[]], EpisodeConfig(turns=4, max_episode_tokens=7), sp)
    for ep in eb.episodes:
        assert ep.generated <= 7 and ep.truncated == "episode_tokens" and len(ep.turns) == 2
    assert eb.stats()["episode/truncated/episode_tokens"] == 1.0
    eb = play_episodes(loaded_vlm, [_row("image")], [[]], EpisodeConfig(turns=4, max_images=1), sp)
    assert all(ep.truncated == "images" and len(ep.turns) == 2 for ep in eb.episodes)
    eb = play_episodes(loaded_vlm, [_row()], [[]], EpisodeConfig(turns=2), sp)
    assert all(ep.truncated == "turns" and ep.turns[-1][1] is None for ep in eb.episodes)
    eb = play_episodes(loaded_vlm, [_row()], [[]], EpisodeConfig(turns=3, max_context_tokens=10), sp)
    assert all(ep.truncated == "context" and len(ep.turns) == 1 for ep in eb.episodes)


def test_last_k_context_keeps_the_task_and_the_last_turns(loaded_vlm):
    eb = play_episodes(loaded_vlm, [_row()], [[]], EpisodeConfig(turns=4, context="last_k", last_k=1),
                       SamplingParams(n=1, max_new_tokens=4, seed=3))
    ro, ep = eb.rollout, eb.episodes[0]
    last = _unpadded(ro, ro.num_rows - 1)  # turn 3: first prompt + turn 2's action and observation
    a2, o2 = ep.turns[2]
    assert last == ep.first.ids + a2.ids + o2.ids


def test_a_solved_episode_stops_and_is_a_success(loaded_vlm):
    # the env rejects text that is not a move (no step, invalid_reward) and ends when solved
    level = ["#####", "#@$.#", "#####"]
    row = _row(level=level)
    eb = play_episodes(loaded_vlm, [row], [[]], EpisodeConfig(turns=3, invalid_reward=-0.5),
                       SamplingParams(n=2, max_new_tokens=3, seed=4))
    for ep in eb.episodes:
        assert not ep.success and all(r == -0.5 for r in ep.rewards)  # the random model names no move
    # the env's own bookkeeping: one Right solves this level (+10 +1 -0.1)
    from lmmr1.envs.base import make_env

    env = make_env(row.fields["env"])
    env.reset(0)
    res = env.step(action_text("<answer>Right</answer>"))
    assert res.done and res.success and res.reward == pytest.approx(10.9)


def test_rows_without_env_fail_with_one_line(loaded_vlm):
    row = Example(messages=[{"role": "user", "content": "hi"}], answer=None, source="d.jsonl:3", datasource="d")
    with pytest.raises(LmmR1Error, match=r"d.jsonl:3: .*no 'env' field"):
        play_episodes(loaded_vlm, [row], [[]], EpisodeConfig(turns=2), SamplingParams(n=2, max_new_tokens=2))


# ------------------------------------------------------------------------------ trainer
def _env_data(tmp_path: Path, view: str) -> Path:
    p = tmp_path / f"env_{view}.jsonl"
    rows = []
    for k, level in enumerate([LEVEL, ["#####", "#@$.#", "#####"]]):
        rows.append({"message": json.dumps([{"role": "user", "content": "One move per turn.\n" + "\n".join(level)}]),
                     "answer": "Right", "env": {"name": "sokoban", "level": level, "view": view, "seed": k}})
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def _cfg(tmp_path, tiny_vlm, *overrides):
    base = [f"output_dir={tmp_path / 'run'}", f"model.path={tiny_vlm}",
            f"data=[{{path: {_env_data(tmp_path, 'image')}, system_prompt: none}}]", "reward=[]",
            "episode.turns=3", "algo.advantage=gigpo", "rollout.n=2", "rollout.max_new_tokens=4",
            "train.prompts_per_step=2", "train.micro_batch_size=4", "train.steps=2", "train.tensorboard=false",
            "train.num_threads=1", "optim.lr=0.01"]
    return load_config(None, base + list(overrides))


@pytest.mark.parametrize("estimator", sorted(EPISODE_ESTIMATORS))
def test_trainer_step_on_env_rows(tmp_path, tiny_vlm, estimator):
    cfg = _cfg(tmp_path, tiny_vlm, f"algo.advantage={estimator}", "algo.gamma=0.9")
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.policy.model.named_parameters() if v.requires_grad}
    m = trainer.train_step()
    assert m["episode/turns"] == 3 and m["episode/truncated/turns"] == 1.0
    assert m["episode/valid_frac"] == 0.0 and m["reward/mean"] == pytest.approx(-0.1)  # all invalid
    assert math.isfinite(m["grad_norm"]) and m["skipped_updates"] == 0
    after = dict(trainer.policy.model.named_parameters())
    moved = any(not torch.allclose(before[k], after[k]) for k in before)
    # every step reward ties (-0.1 each): episode returns tie and so do returns at equal turn indices,
    # so episode_grpo and turn_discount give 0 everywhere.  GiGPO's anchor group, though, holds the
    # same (never changed) state at turns 0, 1, 2 whose discounted returns differ (-0.271, -0.19, -0.1):
    # its step advantages are not 0 and the weights move.
    assert moved == (estimator == "gigpo")


def test_trainer_learns_signal_from_episodes(tmp_path, tiny_vlm):
    # the random tiny model names no valid move, so the signal here comes from the episode token budget:
    # 5 tokens end some episodes after one turn and others after two, returns differ, weights move
    cfg = _cfg(tmp_path, tiny_vlm, "episode.max_episode_tokens=5", "episode.invalid_reward=-1.0")
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.policy.model.named_parameters() if v.requires_grad}
    m = trainer.train_step()
    assert m["episode/truncated/episode_tokens"] > 0
    after = dict(trainer.policy.model.named_parameters())
    assert any(not torch.allclose(before[k], after[k]) for k in before)


def test_episode_config_errors(tmp_path, tiny_vlm):
    with pytest.raises(ConfigError, match="episode.turns=3 needs an episode estimator"):
        _cfg(tmp_path, tiny_vlm, "algo.advantage=grpo").validate()
    with pytest.raises(ConfigError, match="algo.advantage=gigpo scores multi-turn episodes"):
        _cfg(tmp_path, tiny_vlm, "episode.turns=0").validate()
    with pytest.raises(ConfigError, match="leave reward: empty"):
        _cfg(tmp_path, tiny_vlm, "reward=[{name: format}]").validate()
    with pytest.raises(ConfigError, match="episode.context='last'.*did you mean 'last_k'"):
        _cfg(tmp_path, tiny_vlm, "episode.context=last").validate()
    with pytest.raises(ConfigError, match="episode.max_images=-1 is out of range"):
        _cfg(tmp_path, tiny_vlm, "episode.max_images=-1").validate()
    with pytest.raises(ConfigError, match="episode.turn"):
        _cfg(tmp_path, tiny_vlm, "episode.turn=3")


def test_current_context_reads_like_a_first_prompt(loaded_vlm):
    cfg = EpisodeConfig(turns=3, context="current", observation_template="Grid:\n{observation}\nMove?")
    eb = play_episodes(loaded_vlm, [_row()], [[]], cfg, SamplingParams(n=1, max_new_tokens=4, seed=5))
    ro = eb.rollout
    proc = loaded_vlm.processor
    for r in range(1, ro.num_rows):  # turn r's prompt: the observation after turn r-1, as a fresh conversation
        text = ("Invalid action.\n" if not eb.valid[r - 1] else "") + "Grid:\n" + "\n".join(LEVEL).replace(" ", "_") + "\nMove?"
        want = proc([[{"role": "user", "content": [{"type": "text", "text": text}]}]], images=[[]]).input_ids[0].tolist()
        assert _unpadded(ro, r) == want  # the random model never moves the player: the grid is the level's
    lp, _ = completion_logprobs(loaded_vlm, ro.prompts, ro.prompt_index, ro.completion_ids, ro.completion_mask)
    assert ((lp - ro.logprobs).abs() * ro.completion_mask).max() < 1e-4


def test_sokoban_turns_rows_replay_to_a_solve():
    from lmmr1.data.synth import problems
    from lmmr1.envs.sokoban import Level, parse_actions, replay

    for mid in (1, 0):
        for p in problems("sokoban_turns", "train", 20, size=5, boxes=1, max_moves=4, mid_path=mid):
            level = Level.from_xsb(p.fields["env"]["level"])
            moves = parse_actions(p.answer)
            assert replay(level, moves).solved and len(moves) == p.fields["env"]["optimal_moves"]
            assert p.response == f"<answer>{moves[0]}</answer>"
            assert "\n".join(level.to_xsb(floor="_")) in p.question  # the grid as the env's observation writes it
    tests = {p.split_key for p in problems("sokoban_turns", "test", 30, size=5, boxes=1, max_moves=4, mid_path=0)}
    train = list(problems("sokoban_turns", "train", 200, size=5, boxes=1, max_moves=4, mid_path=1))
    trains = {p.split_key for p in train}
    assert tests and not tests & trains  # whole levels are held out
    # mid_path=1: several states of one level can be rows (distinct keys), all in the level's split
    assert len(trains) < len(train) == len({p.key for p in train})


def test_sokoban_short_prompt_is_the_grid_and_one_word(tmp_path):
    from lmmr1.data.synth import problems, write_suite

    p = next(problems("sokoban_turns", "train", 1, size=5, boxes=1, max_moves=4, prompt="short"))
    grid = "\n".join(Level.from_xsb(p.fields["env"]["level"]).to_xsb(floor="_"))
    assert p.question == f"Sokoban.\n{grid}\nMove?" and p.image_question == "Sokoban. Move?"
    g = next(problems("sokoban", "train", 1, size=5, boxes=1, max_moves=4, prompt="short"))
    assert g.question.startswith("Sokoban.\n#") and g.question.endswith("\nMoves?")
    full = next(problems("sokoban", "train", 1, size=5, boxes=1, max_moves=4))
    assert full.key == g.key and "Push every box onto a goal" in full.question  # the default is unchanged
    with pytest.raises(LmmR1Error, match="prompt must be one of full, short, got 'tiny'"):
        write_suite(tmp_path, "sokoban_turns", "train", 1, "text", prompt="tiny")


def test_eval_plays_env_suites_turn_by_turn(tmp_path, loaded_vlm):
    from lmmr1.data.dataset import PromptDataset
    from lmmr1.eval import EvalConfig, evaluate_suite

    solved = ["#####", "#@*##", "#####"]  # already solved: a success whatever the model says
    rows = [{"message": json.dumps([{"role": "user", "content": "\n".join(lv)}]), "answer": "Right",
             "env": {"name": "sokoban", "level": lv}} for lv in (solved, LEVEL)]
    (tmp_path / "suite.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = PromptDataset.load(str(tmp_path / "suite.jsonl"), system_prompt="none")
    out = evaluate_suite(loaded_vlm, ds, EvalConfig(max_new_tokens=3, episode={"turns": 2}), reward=None)
    assert out["success_rate"] == out["accuracy"] == 0.5 and out["samples"] == 2
    assert out["mean_turns"] == 2.0 and out["format_rate"] == 0.0  # the random model names no move
    with pytest.raises(LmmR1Error, match="eval episode: .*unexpected keyword"):
        evaluate_suite(loaded_vlm, ds, EvalConfig(max_new_tokens=3, episode={"turns": 2, "turn": 1}), reward=None)


def test_cli_eval_plays_episodes(tmp_path, tiny_vlm):
    import subprocess
    import sys

    solved = ["#####", "#@*##", "#####"]
    rows = [{"message": json.dumps([{"role": "user", "content": "\n".join(lv)}]), "answer": "Right",
             "env": {"name": "sokoban", "level": lv}} for lv in (solved, LEVEL)]
    (tmp_path / "suite.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    base = [sys.executable, "-m", "lmmr1.cli", "eval", "--model", str(tiny_vlm), "--bench",
            f"sok={tmp_path / 'suite.jsonl'}", "--system-prompt", "none", "--max-new-tokens", "3"]
    res = subprocess.run(base + ["--episode", "turns=2", "--episode", "context=current", "--out",
                                 str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "r.json").read_text())["results"]["sok"]
    assert r["success_rate"] == 0.5 and r["mean_turns"] == 2.0
    bad = subprocess.run(base + ["--episode", "context=current"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--episode turns=None" in bad.stderr and "Traceback" not in bad.stderr
