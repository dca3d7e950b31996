"""PAPO (Perception-Aware Policy Optimization, Wang et al. 2025): an implicit perception term.

loss = policy loss - gamma * KL(pi(.|q, I) || pi(.|q, I_mask)): the policy is rewarded for
answers whose likelihood *depends on the image*, so it cannot fall back on text priors.  I_mask
blacks out each vision patch (one row of ``pixel_values``: a 14x14 patch over the temporal frames
for Qwen2-VL/2.5-VL) with probability 0.6.  The masked log-probs are computed once per step,
without gradient; the KL is the k3 estimator on the completion tokens, zero on text-only rows.
Optional double-entropy regularisers (the paper's guard against "KL hacking", where the policy
maximises the KL by becoming erratic on masked inputs): + eta1 * H(pi(.|I)) + eta2 * H(pi(.|I_mask)).
"""

from __future__ import annotations

import torch

from lmmr1.algos.losses import kl_estimate

MASK_PROB = 0.6


def black_values(image_mean, image_std, channels: int, patch_dim: int) -> torch.Tensor:
    """(patch_dim,) the normalised value of a black pixel at every position of a flattened patch row
    (layout C x T x p x p, channel-major, as Qwen2-VL's processor writes it)."""
    per_channel = patch_dim // channels
    mean = torch.tensor(list(image_mean), dtype=torch.float32)
    std = torch.tensor(list(image_std), dtype=torch.float32)
    return ((0.0 - mean) / std).repeat_interleave(per_channel)


def mask_patches(pixel_values: torch.Tensor, black: torch.Tensor, generator: torch.Generator,
                 prob: float = MASK_PROB) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked copy, (P,) bool which patch rows were blacked out); each row independently with ``prob``."""
    hit = torch.rand(pixel_values.shape[0], generator=generator) < prob
    out = pixel_values.clone()
    out[hit.to(out.device)] = black.to(out.dtype).to(out.device)
    return out, hit


def papo_kl(logp: torch.Tensor, masked_logp: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
    """(N, T) per-token k3 estimate of KL(pi(.|I) || pi(.|I_mask)), zero on rows without an image."""
    return kl_estimate(logp, masked_logp, "k3") * image_rows.to(logp.dtype).unsqueeze(-1)
