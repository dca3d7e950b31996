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


# ---------------------------------------------------------------- issue 9: clamps, GSPO pairing, kl_target
def test_log_ratio_100_gives_finite_loss_and_finite_gradient():
    from lmmr1.algos import ObjectiveSettings, policy_objective

    # token 0: log-ratio 100 (exp overflows float32 without a clamp); token 1: 0.5, an ordinary token
    logp = torch.tensor([[100.0, 0.5]], requires_grad=True)
    out = policy_objective(logp, torch.zeros(1, 2), -torch.ones(1, 2), torch.ones(1, 2), ObjectiveSettings())
    out.loss.backward()
    # A = -1: the unclipped branch -A*r = r is the larger one.  r_0 = exp(clamp(100, +-20)) = exp(20),
    # r_1 = exp(0.5); token_mean over 2 tokens.  d/dlogp: 0 where the clamp is active, r_1/2 otherwise.
    assert out.loss.item() == pytest.approx((math.exp(20) + math.exp(0.5)) / 2, rel=1e-6)
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[0].tolist() == pytest.approx([0.0, math.exp(0.5) / 2], rel=1e-6)
    # positive advantage, log-ratio +-100: clipped branch (-1.2) and the tiny ratio exp(-20); grads 0
    logp = torch.tensor([[100.0, -100.0]], requires_grad=True)
    out = policy_objective(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), ObjectiveSettings())
    out.loss.backward()
    assert out.loss.item() == pytest.approx((-1.2 - math.exp(-20)) / 2, rel=1e-6)
    assert logp.grad.tolist() == [[0.0, 0.0]]


def test_gspo_sequence_log_ratio_100_is_clamped():
    logp = torch.tensor([[100.0, 100.0]], requires_grad=True)
    ratio = importance_ratio(logp, torch.zeros(1, 2), torch.ones(1, 2), "sequence")
    assert ratio[0].tolist() == pytest.approx([math.exp(20), math.exp(20)], rel=1e-6)
    ratio.sum().backward()
    assert logp.grad.tolist() == [[0.0, 0.0]]  # clamped: finite (zero), not NaN


def test_k3_at_extreme_log_ratios_is_clamped_like_verl():
    logp = torch.tensor([-95.0, 95.0, -2.0, 0.0], requires_grad=True)
    k3 = kl_estimate(logp, torch.zeros(4), "k3")
    # d=-95 -> clamp(d)=-20 -> exp(20)-20-1 = 4.85e8 -> value clamp 10; d=+95 -> exp(-20)+19 -> 10;
    # d=-2 is inside both ranges: exp(2) - 2 - 1 = 4.389056; d=0 -> 0
    assert k3.tolist() == pytest.approx([10.0, 10.0, math.exp(2) - 3, 0.0], rel=1e-6)
    k3.sum().backward()
    # d k3/dd = 1 - exp(-d): 0 where clamped, 1 - e^2 at d=-2
    assert logp.grad.tolist() == pytest.approx([0.0, 0.0, 1 - math.exp(2), 0.0], rel=1e-6)
    # k1 and k2 stay unclamped polynomials (finite for finite inputs), as in verl
    assert kl_estimate(torch.tensor([-95.0]), torch.zeros(1), "k1").item() == -95.0
    assert kl_estimate(torch.tensor([-95.0]), torch.zeros(1), "k2").item() == pytest.approx(0.5 * 95 * 95)


def test_k3_in_the_reward_at_minus_95_leaves_advantages_finite():
    old = torch.tensor([[-95.0, -1.0], [-1.0, -1.0]])  # row 0, token 0: log pi - log ref = -95
    ref = torch.tensor([[0.0, -1.0], [-1.0, -1.0]])
    mask = torch.ones(2, 2)
    kl_tok = kl_estimate(old, ref, "k3") * mask  # [[10, 0], [0, 0]]
    adv, _ = compute_advantages("grpo", torch.tensor([1.0, 1.0]), -0.1 * kl_tok, mask, 2, eps=0.0)
    # R = [1 - 0.1*10, 1] = [0, 1]: mean 0.5, unbiased std sqrt(0.5) -> A = -+0.5/0.70711 on every token
    assert torch.isfinite(adv).all()
    assert adv.flatten().tolist() == pytest.approx([-0.70711, -0.70711, 0.70711, 0.70711], abs=1e-5)
    adv, ret = compute_advantages("reinforce_pp", torch.tensor([1.0, 1.0]), -0.1 * kl_tok, mask, 2)
    assert torch.isfinite(adv).all() and ret.flatten().tolist() == pytest.approx([0.0, 1.0, 1.0, 1.0])


def test_gspo_gradient_equals_the_hand_written_gspo_objective():
    """GSPO (Zheng et al. 2025, eq. 5-7): s_i = exp(mean_t (log pi - log pi_old)),
    J = mean_i min(s_i A_i, clip(s_i, 1-eps_l, 1+eps_h) A_i); lmmr1's loss is -J."""
    from lmmr1.algos import ObjectiveSettings, policy_objective

    g = torch.Generator().manual_seed(0)
    N, T = 6, 5
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    logp0 = -torch.rand(N, T, generator=g, dtype=torch.float64) * 3
    offset = torch.tensor([0.4, -0.4, 0.0, 0.4, -0.1, 0.05], dtype=torch.float64)[:, None]  # rows 0, 1 clipped
    old = logp0 - offset + (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5) * 0.1
    A = torch.tensor([1.0, -1.0, 0.5, -0.7, 2.0, -0.3], dtype=torch.float64)

    def hand(logp):
        s = torch.exp(((logp - old) * mask).sum(-1) / mask.sum(-1))
        return -torch.minimum(s * A, s.clamp(0.8, 1.2) * A).mean()

    ref_logp = logp0.clone().requires_grad_()
    hand(ref_logp).backward()
    s = torch.exp(((logp0 - old) * mask).sum(-1) / mask.sum(-1))
    assert ((s < 0.8) | (s > 1.2)).any() and ((s > 0.8) & (s < 1.2)).any()  # both branches are exercised

    logp = logp0.clone().requires_grad_()
    settings = ObjectiveSettings(ratio_level="sequence", loss_agg="seq_mean_token_mean")
    out = policy_objective(logp, old, A[:, None] * mask, mask, settings)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(hand(logp0).item(), abs=1e-12)
    torch.testing.assert_close(logp.grad, ref_logp.grad, atol=1e-7, rtol=0)
    assert ref_logp.grad.abs().max() > 1e-2  # the comparison is not between two zero gradients

    # token_mean weights sequences by their length: not GSPO, and refused
    lp = logp0.clone().requires_grad_()
    aggregate(ppo_clip_loss(lp, old, A[:, None] * mask, mask, ratio_level="sequence").loss, mask, "token_mean").backward()
    assert (lp.grad - ref_logp.grad).abs().max() > 1e-3
    with pytest.raises(LmmR1Error, match=r"^algo.ratio_level=sequence \(GSPO\) needs algo.loss_agg=seq_mean_token_mean "
                                         r"\(got token_mean\)"):
        policy_objective(logp, old, A[:, None] * mask, mask, ObjectiveSettings(ratio_level="sequence"))


def test_policy_objective_terms_hand_values():
    """clip + beta*KL - c*entropy, each aggregated with the mini-batch normaliser."""
    from lmmr1.algos import ObjectiveSettings, policy_objective

    logp = torch.tensor([[math.log(1.5), 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    ref = torch.tensor([[0.0, -1.0], [0.0, 0.0]])
    ent = torch.tensor([[2.0, 4.0], [6.0, 100.0]])  # padding entropy 100 must not count
    st = ObjectiveSettings(kl_estimator="k1", entropy_coef=0.1)
    out = policy_objective(logp, torch.zeros(2, 2), torch.ones(2, 2), mask, st, ref_logp=ref, kl_coef=0.5,
                           entropy=ent, num_tokens=4.0)
    # clip: r = [1.5, 1, 1] -> -1.2 (clipped), -1, -1 -> sum -3.2; k1: ln1.5 + 1 + 0; entropy 12; / 4 tokens
    expected = (-3.2 + 0.5 * (math.log(1.5) + 1.0) - 0.1 * 12.0) / 4.0
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.clipped.tolist() == [[True, False], [False, False]]
    # kl_coef 0 (the KL is in the reward instead): no KL term even with a reference
    out0 = policy_objective(logp, torch.zeros(2, 2), torch.ones(2, 2), mask, st, ref_logp=ref, kl_coef=0.0,
                            entropy=ent, num_tokens=4.0)
    assert out0.loss.item() == pytest.approx((-3.2 - 1.2) / 4.0, rel=1e-6)


def test_adaptive_kl_needs_a_positive_initial_coefficient():
    with pytest.raises(LmmR1Error, match=r"kl_coef must be > 0, got 0.0"):
        KLController(0.0, target=0.1)
    ada = KLController(0.001, target=0.1, horizon=10)
    ada.update(1.0, 5)  # KL 10x the target: error clipped to +0.2 -> beta *= 1 + 0.2*5/10
    assert ada.value == pytest.approx(0.0011)
