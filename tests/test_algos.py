"""Every estimator and loss against hand-computed values on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from lmmr1.algos import (
    KLController,
    aggregate,
    compute_advantages,
    groups_with_signal,
    kl_estimate,
    ppo_clip_loss,
)
from lmmr1.algos.advantages import masked_whiten, returns_to_go
from lmmr1.algos.losses import importance_ratio, value_loss
from lmmr1.errors import LmmR1Error


def close(actual, expected):
    torch.testing.assert_close(actual.detach().float(), torch.tensor(expected, dtype=torch.float32), atol=1e-4, rtol=1e-4)


# two prompts x two samples; ragged completion lengths 3, 1, 2, 3
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.float32)
SCORES = torch.tensor([1.0, 0.0, 2.0, 2.0])  # the second group ties
ZERO_KL = torch.zeros(4, 3)


def test_grpo_hand_values():
    adv, ret = compute_advantages("grpo", SCORES, ZERO_KL, MASK, 2, eps=0.0)
    # group 1: mean 0.5, unbiased std sqrt(0.5) -> +-0.5/0.7071 = +-0.70711; group 2 ties -> 0 (0/(0+eps) with eps=0 is nan)
    adv_eps, _ = compute_advantages("grpo", SCORES, ZERO_KL, MASK, 2, eps=1e-6)
    assert adv_eps[0].tolist() == pytest.approx([0.70711, 0.70711, 0.70711], abs=1e-4)
    assert adv_eps[1].tolist() == pytest.approx([-0.70711, 0.0, 0.0], abs=1e-4)  # padding stays 0
    assert adv_eps[2:].abs().max() == 0.0  # all-equal group: no signal
    assert ret is None


def test_dr_grpo_and_rloo_hand_values():
    adv, _ = compute_advantages("dr_grpo", SCORES, ZERO_KL, MASK, 2)
    assert adv[:, 0].tolist() == [0.5, -0.5, 0.0, 0.0]
    scores = torch.tensor([3.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # one group of 3, one tie group
    mask = torch.ones(6, 2)
    adv, _ = compute_advantages("rloo", scores, torch.zeros(6, 2), mask, 3)
    # 3 - mean(0,0) = 3;  0 - mean(3,0) = -1.5
    assert adv[:, 0].tolist() == [3.0, -1.5, -1.5, 0.0, 0.0, 0.0]
    assert adv[:, 1].tolist() == adv[:, 0].tolist()


def test_group_estimators_reject_n_1_and_ragged_groups():
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"):
        with pytest.raises(LmmR1Error, match="rollout.n >= 2"):
            compute_advantages(name, SCORES, ZERO_KL, MASK, 1)
    with pytest.raises(LmmR1Error, match="whole number of groups"):
        compute_advantages("grpo", SCORES[:3], ZERO_KL[:3], MASK[:3], 2)
    with pytest.raises(LmmR1Error, match="unknown advantage"):
        compute_advantages("ppo2", SCORES, ZERO_KL, MASK, 2)


def test_kl_in_reward_enters_group_scores():
    kl_r = torch.zeros(4, 3)
    kl_r[0, 0] = -1.0  # row 0's score becomes 0 -> the first group ties
    adv, _ = compute_advantages("dr_grpo", SCORES, kl_r, MASK, 2)
    assert adv[:, 0].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_returns_to_go_and_whitening():
    r = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert returns_to_go(r, m).tolist() == [[6.0, 5.0, 3.0], [4.0, 0.0, 0.0]]
    assert returns_to_go(r, m, gamma=0.5).tolist() == [[1 + 0.5 * (2 + 1.5), 2 + 1.5, 3.0], [4.0, 0.0, 0.0]]
    w = masked_whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]]), eps=0.0)
    assert w.tolist() == [[-1.0, 1.0, 0.0]]  # mean 2, population std 1; masked entry ignored


def test_reinforce_pp_hand_values():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    kl_r = torch.tensor([[-0.1, -0.2], [-0.3, -7.0]])  # the -7 sits on padding and must be ignored
    adv, ret = compute_advantages("reinforce_pp", torch.tensor([1.0, 0.0]), kl_r, mask, 1)
    # token rewards: row0 [-0.1, -0.2 + 1], row1 [-0.3]; returns row0 [0.7, 0.8], row1 [-0.3]
    close(ret, [[0.7, 0.8], [-0.3, 0.0]])
    vals = torch.tensor([0.7, 0.8, -0.3])
    mean, std = vals.mean(), vals.std(unbiased=False)
    assert adv[0].tolist() == pytest.approx(((torch.tensor([0.7, 0.8]) - mean) / std).tolist(), abs=1e-4)
    assert adv[1, 1] == 0.0


def test_reinforce_pp_baseline_hand_values():
    mask = torch.ones(4, 2)
    adv, ret = compute_advantages("reinforce_pp_baseline", torch.tensor([1.0, 0.0, 3.0, 3.0]), torch.zeros(4, 2),
                                  mask, 2)
    # centered scores 0.5, -0.5, 0, 0 on the last token; G_t equal on both tokens
    assert ret[:, 0].tolist() == [0.5, -0.5, 0.0, 0.0] and ret[:, 1].tolist() == [0.5, -0.5, 0.0, 0.0]
    std = torch.tensor([0.5, 0.5, -0.5, -0.5, 0, 0, 0, 0]).std(unbiased=False)
    assert adv[0, 0].item() == pytest.approx(0.5 / std.item(), abs=1e-4)
    assert adv[2].abs().max() == 0.0


def test_gae_hand_values():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.25, 9.0]])  # 9.0 on padding must be ignored
    adv, ret = compute_advantages("gae", torch.tensor([1.0]), torch.zeros(1, 3), mask, 1, values=values,
                                  gamma=1.0, lam=0.5, whiten=False)
    # delta_1 = 1 + 0 - 0.25 = 0.75; delta_0 = 0 + 0.25 - 0.5 = -0.25; A_0 = -0.25 + 0.5*0.75 = 0.125
    close(adv, [[0.125, 0.75, 0.0]])
    close(ret, [[0.625, 1.0, 0.0]])
    with pytest.raises(LmmR1Error, match="critic"):
        compute_advantages("gae", torch.tensor([1.0]), torch.zeros(1, 3), mask, 1)


def test_aggregation_modes_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(x, m, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(x, m, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(x, m, "seq_mean_token_sum_norm", max_len=5).item() == pytest.approx(10 / (2 * 5))
    with pytest.raises(LmmR1Error):
        aggregate(x, m, "seq_mean_token_sum_norm")
    # micro-batching with global normalisers equals the whole batch
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        whole = aggregate(x, m, mode, max_len=5)
        parts = sum(aggregate(x[i:i + 1], m[i:i + 1], mode, num_tokens=4, num_seqs=2, max_len=5) for i in range(2))
        assert parts.item() == pytest.approx(whole.item())


def test_ppo_clip_asymmetric_and_dual_clip_hand_values():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 4.0]]))
    old = torch.zeros(1, 4)  # ratios 1.5, 0.5, 1.1, 4.0
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    out = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # A>0, r=1.5 -> clipped to 1.28 -> loss -1.28; A<0, r=0.5 -> max(0.5, 0.8) = 0.8;
    # A>0, r=1.1 in range -> -1.1; A<0, r=4 -> max(4, 1.28) = 4
    close(out.loss, [[-1.28, 0.8, -1.1, 4.0]])
    assert out.clipped.tolist() == [[True, True, False, False]]
    dual = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    close(dual.loss, [[-1.28, 0.8, -1.1, 3.0]])  # 4.0 capped at 3
    assert dual.clipped.tolist() == [[True, True, False, True]]


def test_gradient_of_clip_loss_is_zero_when_clipped():
    logp = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    out = ppo_clip_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
    out.loss.sum().backward()
    close(logp.grad, [[0.0, -1.1]])  # d(-r)/dlogp = -r where unclipped


def test_gspo_sequence_ratio_value_and_gradient():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.0, -2.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # third token is padding
    ratio = importance_ratio(logp, old, mask, "sequence")
    s = math.exp((0.5 + 0.0) / 2)
    assert ratio[0, :2].tolist() == pytest.approx([s, s])
    (ratio * mask).sum().backward()
    close(logp.grad, [[s, s, 0.0]])


def test_value_loss_clipped_hand_values():
    v = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0]])
    ret = torch.tensor([[2.0, 1.0]])
    out = value_loss(v, old, ret, torch.ones(1, 2), clip=0.2)
    # token 0: (1-2)^2 = 1 vs (0.2-2)^2 = 3.24 -> 0.5*3.24; token 1: (0-1)^2 = 1 both -> 0.5
    close(out, [[1.62, 0.5]])


def test_kl_estimators_hand_values():
    logp, ref = torch.tensor([0.0, -1.0]), torch.tensor([-1.0, -1.0])
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([1.0, 0.0])
    assert kl_estimate(logp, ref, "k2").tolist() == pytest.approx([0.5, 0.0])
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx([math.exp(-1) + 1 - 1, 0.0])
    with pytest.raises(LmmR1Error):
        kl_estimate(logp, ref, "k4")


def test_kl_controller_fixed_and_adaptive():
    fixed = KLController(0.1)
    fixed.update(5.0, 100)
    assert fixed.value == 0.1
    ada = KLController(0.1, target=1.0, horizon=100)
    ada.update(2.0, 10)  # error clipped to +0.2 -> beta *= 1 + 0.2 * 10/100
    assert ada.value == pytest.approx(0.1 * 1.02)
    ada.update(0.5, 10)  # error -0.5 clipped to -0.2
    assert ada.value == pytest.approx(0.1 * 1.02 * 0.98)


def test_dynamic_sampling_filter():
    keep = groups_with_signal(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), 2)
    assert keep.tolist() == [False, True, False]
