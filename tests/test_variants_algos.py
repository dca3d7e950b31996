"""The neighbouring papers' formulas (EMA-GRPO, Observe-R1, APO, PAPO) against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from lmmr1.algos import ObjectiveSettings, PapoTerm, compute_advantages, policy_objective
from lmmr1.algos.apo import dads_kl_weights, stcr_factors
from lmmr1.algos.ema import TaskMoments
from lmmr1.algos.papo import black_values, mask_patches, papo_kl
from lmmr1.errors import LmmR1Error


def test_ema_grpo_uses_the_task_sigma_updated_before_use_and_falls_back_on_big_advantages():
    moments = TaskMoments()
    mask = torch.ones(4, 2)
    tasks = ["a", "a", "b", "b"]
    # step 1: a = [1, 0] -> first sight sets m1 = 0.5, m2 = 0.5, sigma = sqrt(0.5 - 0.25) = 0.5
    adv, _ = compute_advantages("ema_grpo", torch.tensor([1.0, 0.0, 2.0, 2.0]), torch.zeros(4, 2), mask, 2,
                                tasks=tasks, moments=moments)
    assert adv[:, 0].tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])  # b ties: 0 (sigma floored at 1e-3)
    assert moments.sigma("b") == pytest.approx(1e-3)
    # step 2: a = [3, 1]: mean 2, mean r^2 5; m1 = .99*.5 + .01*2 = .515, m2 = .99*.5 + .01*5 = .545
    # sigma = sqrt(.545 - .515^2) = sqrt(.279775) = .528938; A = +-1/.528938 = +-1.890580
    adv, _ = compute_advantages("ema_grpo", torch.tensor([3.0, 1.0, 2.0, 2.0]), torch.zeros(4, 2), mask, 2,
                                tasks=tasks, moments=moments)
    assert moments.moments["a"] == pytest.approx((0.515, 0.545))
    assert adv[:2, 0].tolist() == pytest.approx([1.890580, -1.890580], abs=1e-5)
    # step 3: a = [10, 0]: m1 = .99*.515 + .05 = .55985, m2 = .99*.545 + .5 = 1.03955,
    # sigma = sqrt(1.03955 - .313432) = .852126; A = 5/.852126 = 5.87 > 5 -> the group's own std: 5/7.0711
    adv, _ = compute_advantages("ema_grpo", torch.tensor([10.0, 0.0, 2.0, 2.0]), torch.zeros(4, 2), mask, 2,
                                tasks=tasks, moments=moments)
    assert adv[:2, 0].tolist() == pytest.approx([0.707107, -0.707107], abs=1e-5)
    assert moments.sigma("a") == pytest.approx(0.852126, abs=1e-6)
    # the state round-trips exactly (trainer checkpoints hold it as JSON floats)
    again = TaskMoments()
    again.load_state_dict(moments.state_dict())
    assert again.moments == moments.moments
    with pytest.raises(LmmR1Error, match="task"):
        compute_advantages("ema_grpo", torch.zeros(4), torch.zeros(4, 2), mask, 2)


def test_observe_grpo_weights_by_group_accuracy():
    scores = torch.tensor([1.5, 0.5, 0.5, 0.0, 1.5, 1.0, 1.0, 1.5])
    correct = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1])  # p = 1/4, then 1 (all right)
    adv, _ = compute_advantages("observe_grpo", scores, torch.zeros(8, 1), torch.ones(8, 1), 4, correct=correct)
    # weight 4*1.8*0.25*0.75 = 1.35; mean .625, unbiased std sqrt(1.1875/3) = .629153
    assert adv[:4, 0].tolist() == pytest.approx([1.35 * d / 0.629153 for d in (0.875, -0.125, -0.125, -0.625)],
                                                abs=1e-4)
    assert adv[4:].abs().max() == 0.0  # p = 1: weight 0 even though the format made the rewards differ
    with pytest.raises(LmmR1Error, match="accuracy"):
        compute_advantages("observe_grpo", scores, torch.zeros(8, 1), torch.ones(8, 1), 4)


def test_stcr_scales_only_wrong_answers_longer_than_the_mean_correct_length():
    correct = torch.tensor([1.0, 1, 0, 0, 0, 0, 0, 0])
    lengths = torch.tensor([10, 20, 30, 5, 50, 60, 70, 80])
    f = stcr_factors(correct, lengths, 4)
    # group 1: L_bar = 15; row 2 is 15 tokens over: 2 - 1.00001^-15; row 3 is shorter: 1.  Group 2: no L_bar.
    assert f.tolist() == pytest.approx([1.0, 1.0, 2 - 1.00001 ** -15, 1.0, 1.0, 1.0, 1.0, 1.0], abs=1e-7)  # float32
    assert f[2] > 1.0


def test_dads_weights_the_kl_of_positive_advantages_by_group_accuracy():
    adv = torch.tensor([[1.0, 1.0], [-0.5, -0.5], [0.0, 0.0], [2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1, 1], [1, 1], [1, 0]])
    correct = torch.tensor([1.0, 0, 0, 0])  # group accuracy 1/4 -> w = 1 - exp(-e/4) = 0.493163
    w = dads_kl_weights(adv, mask, correct, 4)
    assert w.tolist() == pytest.approx([1 - math.exp(-math.e / 4), 1.0, 1.0, 1 - math.exp(-math.e / 4)], abs=1e-6)
    # in the objective: KL term = beta * token_mean(w_i * k1); k1 = logp - ref = 0.5 on every token
    logp, ref = torch.zeros(4, 2), torch.full((4, 2), -0.5)
    s = ObjectiveSettings(kl_estimator="k1")
    zero_adv = torch.zeros(4, 2)
    plain = policy_objective(logp, logp, zero_adv, mask, s, ref_logp=ref, kl_coef=0.1).loss
    weighted = policy_objective(logp, logp, zero_adv, mask, s, ref_logp=ref, kl_coef=0.1, kl_weight=w).loss
    assert float(plain) == pytest.approx(0.1 * 0.5)
    # tokens: row0 2 x w, row1 2 x 1, row2 2 x 1, row3 1 x w -> (3w + 4) / 7 * 0.05
    assert float(weighted) == pytest.approx(0.05 * (3 * w[0].item() + 4) / 7, abs=1e-7)


def test_papo_masks_patches_black_and_subtracts_the_image_rows_kl():
    black = black_values([0.5, 0.25, 0.5], [0.5, 0.25, 0.25], 3, 6)  # 2 values per channel
    assert black.tolist() == [-1.0, -1.0, -1.0, -1.0, -2.0, -2.0]
    pv = torch.ones(1000, 6)
    masked, hit = mask_patches(pv, black, torch.Generator().manual_seed(0))
    assert 0.55 < hit.float().mean() < 0.65  # p = 0.6
    assert torch.equal(masked[hit], black.expand(int(hit.sum()), 6)) and torch.equal(masked[~hit], pv[~hit])
    assert torch.equal(pv, torch.ones(1000, 6))  # the original is untouched
    # k3 with d = logp - masked = 1: exp(-1) + 1 - 1 = 0.367879; the text row (image_rows 0) adds nothing
    logp = torch.tensor([[-1.0], [-1.0]])
    masked_logp = torch.tensor([[-2.0], [-2.0]])
    rows = torch.tensor([1.0, 0.0])
    assert papo_kl(logp, masked_logp, rows)[:, 0].tolist() == pytest.approx([math.exp(-1), 0.0], abs=1e-6)
    s, mask, adv = ObjectiveSettings(), torch.ones(2, 1), torch.zeros(2, 1)
    base = policy_objective(logp, logp, adv, mask, s).loss
    out = policy_objective(logp, logp, adv, mask, s, papo=PapoTerm(masked_logp, rows, coef=0.01))
    # token_mean over both rows' tokens: (0.367879 + 0) / 2
    assert float(out.loss - base) == pytest.approx(-0.01 * math.exp(-1) / 2, abs=1e-8)
    assert out.terms["papo/kl"] == pytest.approx(math.exp(-1) / 2, abs=1e-6)
    ent = torch.tensor([[2.0], [4.0]])
    reg = policy_objective(logp, logp, adv, mask, s, entropy=ent,
                           papo=PapoTerm(masked_logp, rows, coef=0.01, entropy_coef=0.1,
                                         masked_entropy=torch.tensor([[3.0], [5.0]]), masked_entropy_coef=0.2))
    # + 0.1 * (2 + 0)/2 + 0.2 * (3 + 0)/2: only the image row counts
    assert float(reg.loss - out.loss) == pytest.approx(0.1 + 0.3, abs=1e-6)
