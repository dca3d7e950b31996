"""The variants in the real trainer on the tiny VLM: each runs, logs its metrics, and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmmr1.trainer.config import ConfigError, load_config
from lmmr1.trainer.trainer import Trainer
from tests.test_resume import cli_args

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def args(run: Path, tiny_vlm: Path, *extra: str) -> list[str]:
    """The resume tests' short mixed text/image run, at a constant lr (the variants' terms compared step by step)."""
    return cli_args(run, tiny_vlm, "optim.min_lr_ratio=1.0", *extra)


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra, keys", [
    (["algo.advantage=observe_grpo", "algo.correct_reward=target_fraction"],
     ["observe/group_acc_mean", "observe/weight_mean"]),
    (["algo.dads=true", "algo.stcr=true", "algo.kl_coef=0.01", "algo.correct_reward=target_fraction"],
     ["dads/kl_weight_mean", "stcr/scaled_frac", "stcr/factor_max"]),
    (["algo.papo_coef=0.01", "algo.papo_entropy_coef=0.01", "algo.papo_masked_entropy_coef=0.01"],
     ["papo/kl", "papo/image_rows_frac", "papo/masked_patch_frac"]),
])
def test_each_variant_trains_and_logs_its_metrics(tmp_path, tiny_vlm, extra, keys):
    run = tmp_path / "run"
    t = Trainer(load_config(RECIPES / "smoke.yaml", args(run, tiny_vlm, "train.steps=2", *extra)))
    before = {k: v.clone() for k, v in t.policy.model.named_parameters() if v.requires_grad}
    t.train()
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    for k in keys:
        assert all(k in r and r[k] == r[k] for r in rows), k
    if "algo.papo_coef=0.01" in extra:
        assert all(0 <= r["papo/image_rows_frac"] <= 1 and r["papo/kl"] >= 0 for r in rows)
        assert all(r["papo/kl"] == 0.0 for r in rows if r["papo/image_rows_frac"] == 0)  # text-only: no term
    after = dict(t.policy.model.named_parameters())
    moved = any(not torch.equal(before[k], after[k]) for k in before)
    # observe_grpo: target_fraction never reaches 0.5 in 2 steps here, so p = 0 and every advantage is 0
    assert moved == ("algo.advantage=observe_grpo" not in extra)
    if "algo.advantage=observe_grpo" in extra:
        assert all(r["observe/weight_mean"] == 0.0 and r["observe/group_acc_mean"] == 0.0 for r in rows)


def test_ema_moments_are_checkpointed_and_resume_exactly(tmp_path, tiny_vlm):
    """2 straight steps == 1 step, save, a new Trainer resumes, 1 more step: same weights, same moments."""
    extra = ("algo.advantage=ema_grpo",)
    straight = Trainer(load_config(RECIPES / "smoke.yaml", args(tmp_path / "a", tiny_vlm, "train.steps=2", *extra)))
    straight.train()
    Trainer(load_config(RECIPES / "smoke.yaml", args(tmp_path / "b", tiny_vlm, "train.steps=1", *extra))).train()
    state = json.loads((tmp_path / "b/checkpoints/step_000001/trainer_state.json").read_text())["state"]
    assert set(state["variants"]["ema"]["moments"]) == {"smoke_text", "smoke_image"}
    resumed = Trainer(load_config(RECIPES / "smoke.yaml", args(tmp_path / "b", tiny_vlm, "train.steps=2", *extra)))
    assert resumed.step == 1 and resumed.variants.moments.moments == {
        k: tuple(v) for k, v in state["variants"]["ema"]["moments"].items()}
    resumed.train()
    assert resumed.variants.moments.moments == straight.variants.moments.moments  # bit-identical floats
    a, b = load_file(tmp_path / "a/final/model.safetensors"), load_file(tmp_path / "b/final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "ema/sigma/smoke_text" in metrics(tmp_path / "b")[-1]


TWO_REWARDS = "reward=[{name: target_fraction, kwargs: {target: e}}, {name: format}]"


@pytest.mark.parametrize("rewards, extra, expected", [
    (None, [], "target_fraction"),  # the recipe's only reward is its notion of "right"
    (TWO_REWARDS, [], None),
    (TWO_REWARDS, ["algo.correct_reward=format"], "format"),
    ("reward=[{name: format}, {name: accuracy}, {name: accuracy_strict, weight: 0}]", [], "accuracy_strict"),
    ("reward=[{name: format}, {name: accuracy}]", [], "accuracy"),
    ("reward=[{name: accuracy}]", ["algo.correct_reward=accuracy"], "accuracy"),
])
def test_the_correctness_reward_is_resolved_in_a_stated_order(tmp_path, tiny_vlm, rewards, extra, expected):
    from lmmr1.trainer.config import correctness_reward

    cfg = load_config(RECIPES / "smoke.yaml", args(tmp_path / "run", tiny_vlm, *extra) + ([rewards] if rewards else []))
    assert correctness_reward(cfg) == expected


def test_observe_grpo_on_a_one_reward_recipe_reads_that_reward(tmp_path, tiny_vlm):
    """`lmmr1 train recipes/smoke.yaml algo.advantage=observe_grpo` runs: "right" = target_fraction >= 0.5."""
    t = Trainer(load_config(RECIPES / "smoke.yaml", args(tmp_path / "run", tiny_vlm, "train.steps=1",
                                                         "algo.advantage=observe_grpo")))
    assert t.variants.correct_reward == "target_fraction"
    t.train()
    assert metrics(tmp_path / "run")[0]["observe/group_acc_mean"] == 0.0  # no completion of a random model is half 'e'


@pytest.mark.parametrize("extra, message", [
    (["algo.advantage=observe_grpo", TWO_REWARDS], "observe_grpo uses each group's accuracy, and this recipe has 2 "
                                                   "rewards, none of them 'accuracy'"),
    (["algo.dads=true", TWO_REWARDS], "algo.dads=true uses each group's accuracy"),
    (["algo.dads=true", "algo.correct_reward=target_fraction"], "set algo.kl_coef > 0"),
    (["algo.dads=true", "algo.correct_reward=target_fraction", "algo.kl_coef=0.01", "algo.kl_in_reward=true"],
     "algo.kl_in_reward=false"),
    (["algo.stcr=true", "algo.correct_reward=target_fraction", "algo.advantage=gae"], "group estimator"),
    (["algo.correct_reward=accuracy"], "not one of this recipe's rewards"),
    (["algo.papo_entropy_coef=0.1"], "set algo.papo_coef > 0"),
    (["algo.papo_coef=-1"], "algo.papo_coef=-1.0 is out of range"),
])
def test_bad_variant_combinations_fail_with_one_line(tmp_path, tiny_vlm, extra, message):
    cfg = load_config(RECIPES / "smoke.yaml", args(tmp_path / "run", tiny_vlm, *extra))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        cfg.validate()


def test_answer_consistency_reasks_the_real_policy_inside_the_trainer(tmp_path, tiny_vlm):
    rows = [json.loads(x) for x in (RECIPES / "data/smoke_image.jsonl").read_text().splitlines()[:8]]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({**r, "choices": ["7", "8", "9"], "answer": "A"}) + "\n" for r in rows))
    cfg = load_config(RECIPES / "smoke.yaml", args(tmp_path / "run", tiny_vlm, "train.steps=1") + [
        f"data=[{{path: {data}, system_prompt: none}}]",
        "reward=[{name: target_fraction, kwargs: {target: e}}, {name: answer_consistency}]"])
    t = Trainer(cfg)
    t.train()
    assert metrics(tmp_path / "run")[0]["reward/answer_consistency/mean"] == 0.0  # a random model is never right
    reward = next(r for _, _, r in t.reward.parts if r.name == "answer_consistency")
    assert reward.reask is not None  # bound to the step's prompts
    from lmmr1.rewards.variants import reask_turns

    texts = reward.reask([0, 5], [reask_turns("it is 7", ["7", "8", "9"], [2, 0, 1])] * 2)
    assert len(texts) == 2 and all(isinstance(x, str) for x in texts)  # real greedy generation, image + 3 turns
