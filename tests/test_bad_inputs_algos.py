"""Bad and extreme inputs to the algorithms and their config (issue 9): each gives the exact one-line
error, or a finite, hand-derived result."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lmmr1.algos import (
    KLController,
    ObjectiveSettings,
    aggregate,
    compute_advantages,
    kl_estimate,
    policy_objective,
)
from lmmr1.algos.losses import ppo_clip_loss
from lmmr1.errors import LmmR1Error
from lmmr1.trainer.config import ConfigError, load_config

DATA = Path(__file__).resolve().parent.parent / "recipes" / "data" / "smoke_text.jsonl"


def cfg(*overrides):
    return load_config(None, ["model.tiny=tiny", f"data=[{{path: {DATA}}}]", "reward=[accuracy]", *overrides])


def test_log_ratio_100_with_dual_clip_is_capped_and_finite():
    logp = torch.tensor([[100.0]], requires_grad=True)
    out = ppo_clip_loss(logp, torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1), dual_clip=3.0)
    out.loss.sum().backward()
    # A = -1: max(r, clip(r)) = exp(20) after the log-ratio clamp, then the dual clip caps it at -A*3 = 3
    assert out.loss.item() == 3.0 and out.clipped.item() is True
    assert logp.grad.item() == 0.0


def test_gspo_log_ratio_minus_100_takes_the_clip_branch_finitely():
    logp = torch.tensor([[-100.0, -100.0]], requires_grad=True)
    settings = ObjectiveSettings(ratio_level="sequence", loss_agg="seq_mean_token_mean")
    out = policy_objective(logp, torch.zeros(1, 2), -torch.ones(1, 2), torch.ones(1, 2), settings)
    out.loss.backward()
    # s = exp(clamp(-100)) = exp(-20); A = -1: max(s, clip(s, 0.8, 1.2)) = 0.8 on both tokens -> seq mean 0.8
    assert out.loss.item() == pytest.approx(0.8)
    assert logp.grad.tolist() == [[0.0, 0.0]]


def test_k3_with_an_infinite_log_prob_is_clamped_not_nan():
    inf = float("inf")
    k3 = kl_estimate(torch.tensor([0.0, -inf]), torch.tensor([-inf, 0.0]), "k3")
    # d = +inf -> clamp 20 -> exp(-20) + 19 -> value clamp 10;  d = -inf -> clamp -20 -> exp(20) - 21 -> 10
    assert k3.tolist() == [10.0, 10.0]


def test_k1_at_minus_95_in_the_reward_gives_finite_hand_advantages():
    kl = kl_estimate(torch.tensor([[-95.0], [0.0]]), torch.zeros(2, 1), "k1")  # [[-95], [0]]: not clamped
    adv, _ = compute_advantages("dr_grpo", torch.tensor([0.0, 0.0]), -0.01 * kl, torch.ones(2, 1), 2)
    # R = [0 + 0.95, 0]; Dr. GRPO: R - mean = [+0.475, -0.475]
    assert adv.flatten().tolist() == pytest.approx([0.475, -0.475])


def test_nan_score_poisons_only_its_own_group():
    scores = torch.tensor([float("nan"), 1.0, 1.0, 0.0])
    adv, _ = compute_advantages("grpo", scores, torch.zeros(4, 2), torch.ones(4, 2), 2, eps=0.0)
    assert torch.isnan(adv[:2]).all()
    # group 2: mean 0.5, unbiased std sqrt(0.5) -> +-0.70711, untouched by group 1's NaN
    assert adv[2:, 0].tolist() == pytest.approx([0.70711, -0.70711], abs=1e-5)
    # and the objective then reports a non-finite loss, which the trainer skips (test_trainer)
    out = policy_objective(torch.zeros(4, 2), torch.zeros(4, 2), adv, torch.ones(4, 2), ObjectiveSettings())
    assert not torch.isfinite(out.loss)


def test_empty_token_mask_aggregates_to_zero_not_nan():
    x = torch.tensor([[5.0, 7.0]])
    zero = torch.zeros(1, 2)
    assert aggregate(x, zero, "token_mean").item() == 0.0
    assert aggregate(x, zero, "seq_mean_token_mean").item() == 0.0
    assert aggregate(x, zero, "seq_mean_token_sum_norm", max_len=4).item() == 0.0
    with pytest.raises(LmmR1Error, match=r"^loss aggregation seq_mean_token_sum_norm needs max_len "
                                         r"\(rollout.max_new_tokens\)$"):
        aggregate(x, zero, "seq_mean_token_sum_norm")


def test_adaptive_kl_ignores_a_nan_measurement_and_caps_an_infinite_one():
    c = KLController(0.01, target=0.1, horizon=100)
    c.update(float("nan"), 10)
    assert c.value == 0.01
    c.update(float("inf"), 10)  # error clipped to +0.2: beta *= 1 + 0.2 * 10/100
    assert c.value == pytest.approx(0.01 * 1.02)


def test_entropy_bonus_without_entropies_is_a_clear_error():
    with pytest.raises(LmmR1Error, match=r"^entropy_coef is set but no per-token entropy was given$"):
        policy_objective(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                         ObjectiveSettings(entropy_coef=0.01))


@pytest.mark.parametrize("overrides, line", [
    (["algo.ratio_level=sequence"],
     "algo.ratio_level=sequence (GSPO) needs algo.loss_agg=seq_mean_token_mean (got token_mean): "
     "GSPO averages a per-sequence term over sequences"),
    (["algo.ratio_level=sequence", "algo.loss_agg=seq_mean_token_sum_norm"],
     "algo.ratio_level=sequence (GSPO) needs algo.loss_agg=seq_mean_token_mean (got seq_mean_token_sum_norm): "
     "GSPO averages a per-sequence term over sequences"),
    (["algo.ratio_level=seqence"],
     "algo.ratio_level='seqence' is not valid; did you mean 'sequence'? (choose from token, sequence)"),
    (["algo.kl_target=0.1"],
     "algo.kl_target=0.1 scales algo.kl_coef by a factor each step, so it needs an initial algo.kl_coef > 0 "
     "(got 0.0), e.g. 0.001"),
    (["algo.kl_target=-0.1", "algo.kl_coef=0.01"],
     "algo.kl_target=-0.1 is out of range: must be > 0 or null"),
    (["algo.dual_clip=1.0"], "algo.dual_clip=1.0 is out of range: must be > 1 (typically 3) or null"),
])
def test_invalid_algo_combinations_are_refused_with_one_line(overrides, line):
    with pytest.raises(ConfigError) as e:
        cfg(*overrides).validate()
    assert str(e.value) == line


def test_valid_gspo_and_adaptive_kl_configs_pass():
    cfg("algo.ratio_level=sequence", "algo.loss_agg=seq_mean_token_mean").validate()
    cfg("algo.kl_target=0.1", "algo.kl_coef=0.001").validate()
    assert math.isfinite(KLController(0.001, target=0.1).value)
