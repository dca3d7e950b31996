"""APO (View-R1: "Asymmetric Policy Optimization", Hong et al. 2025): two reshapings of a GRPO step.

DADS (difficulty-adaptive divergence shaping): the KL term of a sample with a positive advantage
is weighted by w = 1 - exp(-e * (1 - d)), d = 1 - group accuracy (e = Euler's number): on hard
prompts (few right) a good sample may move far from the reference; on easy ones the KL keeps it
close.  Samples with A <= 0 keep weight 1.

STCR (suboptimal trajectory complexity regularisation): a wrong answer longer than the group's mean
correct length L_bar has its advantage multiplied by 2 - 1.00001^(-(L - L_bar)), a factor in
[1, 2) growing with the excess length: long wrong reasoning is pushed down harder.  Groups with no
correct answer have no L_bar and are left alone.
"""

from __future__ import annotations

import math

import torch

DADS_E = math.e
STCR_BASE = 1.00001


def row_sign_advantage(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) the mean advantage of each row over its tokens (constant per row for group estimators)."""
    return (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def dads_kl_weights(advantages: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) KL weights: 1 - exp(-e * acc_group) for rows with A > 0, 1 elsewhere."""
    acc = correct.float().view(-1, group_size).mean(-1, keepdim=True).expand(-1, group_size).reshape(-1)
    w = 1.0 - torch.exp(-DADS_E * acc)
    return torch.where(row_sign_advantage(advantages, mask) > 0, w, torch.ones_like(w))


def stcr_factors(correct: torch.Tensor, lengths: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) advantage multipliers: 2 - 1.00001^(-(L - L_bar)) for wrong rows longer than L_bar, else 1."""
    c = correct.float().view(-1, group_size)
    L = lengths.double().view(-1, group_size)
    n_right = c.sum(-1, keepdim=True)
    l_bar = (L * c).sum(-1, keepdim=True) / n_right.clamp(min=1)
    over = (c == 0) & (n_right > 0) & (L > l_bar)
    factor = 2.0 - STCR_BASE ** (-(L - l_bar))
    return torch.where(over, factor, torch.ones_like(factor)).reshape(-1).float()
