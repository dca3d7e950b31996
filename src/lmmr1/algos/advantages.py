"""Advantage estimators: pure tensor functions, one formula each.

Inputs are the same for every estimator so the trainer needs no special cases:

- ``scores``  (N,)   rule reward per completion; rows are grouped by prompt, ``group_size`` n
  consecutive rows per prompt (row = prompt * n + k);
- ``kl_rewards`` (N, T) per-token reward shaping, ``-beta * kl_t`` when the KL penalty is applied
  in the reward (zeros otherwise);
- ``mask`` (N, T) 1 on completion tokens.

Each returns ``(advantages (N, T), returns (N, T) or None)``; padding positions are 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmmr1.errors import LmmR1Error


def _check_groups(n_rows: int, group_size: int, name: str) -> None:
    if group_size < 2:
        raise LmmR1Error(f"advantage estimator {name!r} compares samples of the same prompt: it needs "
                         f"rollout.n >= 2 (got n={group_size})")
    if n_rows % group_size:
        raise LmmR1Error(f"{n_rows} rows are not a whole number of groups of {group_size}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population variance), zeros elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def returns_to_go(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma^(s-t) r_s over the completion tokens."""
    out = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        running = (token_rewards[:, t] + gamma * running) * mask[:, t]  # padding carries nothing back
        out[:, t] = running
    return out


def _last_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put each sequence's score on its last completion token."""
    out = torch.zeros_like(mask, dtype=scores.dtype)
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    out[torch.arange(mask.shape[0], device=mask.device), last] = scores
    return out * mask


def _group_view(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.view(-1, n)


def grpo(scores, kl_rewards, mask, group_size, *, eps: float = 1e-6, **_) -> tuple[torch.Tensor, None]:
    """GRPO (Shao et al. 2024, DeepSeekMath eq. 3): A_i = (R_i - mean_g R) / (std_g R + eps), every token.

    R_i = score_i + sum_t kl_reward_{i,t}; std is the unbiased sample std of the group.  A group
    whose rewards all tie gets advantage 0 (it carries no signal).
    """
    _check_groups(scores.shape[0], group_size, "grpo")
    r = _group_view(scores + (kl_rewards * mask).sum(-1), group_size)
    adv = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + eps)
    return adv.reshape(-1, 1) * mask, None


def dr_grpo(scores, kl_rewards, mask, group_size, **_) -> tuple[torch.Tensor, None]:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): A_i = R_i - mean_g R (no std)."""
    _check_groups(scores.shape[0], group_size, "dr_grpo")
    r = _group_view(scores + (kl_rewards * mask).sum(-1), group_size)
    return (r - r.mean(-1, keepdim=True)).reshape(-1, 1) * mask, None


def rloo(scores, kl_rewards, mask, group_size, **_) -> tuple[torch.Tensor, None]:
    """RLOO (Ahmadian et al. 2024): A_i = R_i - mean of the other n-1 rewards = n/(n-1) (R_i - mean_g R)."""
    _check_groups(scores.shape[0], group_size, "rloo")
    r = _group_view(scores + (kl_rewards * mask).sum(-1), group_size)
    baseline = (r.sum(-1, keepdim=True) - r) / (group_size - 1)
    return (r - baseline).reshape(-1, 1) * mask, None


def reinforce_pp(scores, kl_rewards, mask, group_size=1, *, gamma: float = 1.0, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025): r_t = -beta*kl_t (+ score at the last token); A_t = whiten(G_t) over the batch."""
    token_rewards = kl_rewards * mask + _last_token_rewards(scores, mask)
    ret = returns_to_go(token_rewards, mask, gamma)
    return masked_whiten(ret, mask), ret


def reinforce_pp_baseline(scores, kl_rewards, mask, group_size, *, gamma: float = 1.0, **_):
    """REINFORCE++-baseline (Hu 2025; LMM-R1's default): score - mean_g(score), KL shaping, G_t, batch whiten."""
    _check_groups(scores.shape[0], group_size, "reinforce_pp_baseline")
    s = _group_view(scores, group_size)
    centered = (s - s.mean(-1, keepdim=True)).reshape(-1)
    token_rewards = kl_rewards * mask + _last_token_rewards(centered, mask)
    ret = returns_to_go(token_rewards, mask, gamma)
    return masked_whiten(ret, mask), ret


def gae(scores, kl_rewards, mask, group_size=1, *, values: torch.Tensor | None = None, gamma: float = 1.0,
        lam: float = 1.0, whiten: bool = True, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016): delta_t = r_t + gamma V_{t+1} - V_t; A_t = sum_l (gamma lam)^l delta_{t+l}.

    r_t = -beta*kl_t plus the score on the last token; V after the last token is 0.  Returns
    R_t = A_t + V_t (the value targets) and A whitened over the batch (PPO practice).
    """
    if values is None:
        raise LmmR1Error("advantage 'gae' needs a critic: values were not computed")
    token_rewards = kl_rewards * mask + _last_token_rewards(scores, mask)
    values = values * mask
    adv = torch.zeros_like(token_rewards)
    last = torch.zeros_like(token_rewards[:, 0])
    T = token_rewards.shape[1]
    for t in range(T - 1, -1, -1):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = token_rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < T else 0)) * mask[:, t]
        adv[:, t] = last
    ret = (adv + values) * mask
    return (masked_whiten(adv, mask) if whiten else adv), ret


EMA_FALLBACK_ABS = 5.0  # EMA-GRPO: a group with any |A| > 5 uses its own std instead


def ema_grpo(scores, kl_rewards, mask, group_size, *, tasks=None, moments=None, eps: float = 1e-6, **_):
    """EMA-GRPO (OneThinker, 2025): A_i = (R_i - mean_g R) / sigma_task.

    sigma_task = sqrt(max(m2 - m1^2, 1e-6)) from per-task running moments (``algo.ema``), updated
    with this step's mean(R) and mean(R^2) of the task *before* use; task = the row's datasource.
    One std per task instead of per group keeps easy and hard prompts of a task on one scale (a
    group that barely disagrees is not blown up to unit variance).  A group with any |A| > 5 falls
    back to its own (unbiased) std + eps, as GRPO.  ``moments`` is mutated (it is trainer state).
    """
    _check_groups(scores.shape[0], group_size, "ema_grpo")
    if tasks is None or moments is None:
        raise LmmR1Error("advantage 'ema_grpo' needs each row's task and the running moments (the trainer passes them)")
    if len(tasks) != scores.shape[0]:
        raise LmmR1Error(f"ema_grpo: {len(tasks)} task names for {scores.shape[0]} rows")
    r = scores + (kl_rewards * mask).sum(-1)
    for task in dict.fromkeys(tasks):  # first-seen order: deterministic updates
        rows = torch.tensor([i for i, t in enumerate(tasks) if t == task])
        moments.update(task, float(r[rows].mean()), float((r[rows] ** 2).mean()))
    g = _group_view(r, group_size)
    centered = g - g.mean(-1, keepdim=True)
    sigma = torch.tensor([moments.sigma(tasks[k * group_size]) for k in range(g.shape[0])], dtype=r.dtype,
                         device=r.device).unsqueeze(-1)
    adv = centered / sigma
    fallback = (adv.abs() > EMA_FALLBACK_ABS).any(-1, keepdim=True)
    adv = torch.where(fallback, centered / (g.std(-1, keepdim=True) + eps), adv)
    return adv.reshape(-1, 1) * mask, None


OBSERVE_SCALE = 4.0 * 1.8  # Observe-R1: weight 4 * 1.8 * p (1 - p), 1.8 at p = 0.5, 0 for all-right/all-wrong


def observe_grpo(scores, kl_rewards, mask, group_size, *, correct=None, eps: float = 1e-6, **_):
    """Observe-R1 (Guo et al. 2025) difficulty weighting: A_i = 4 * 1.8 * p (1 - p) * (R_i - mean_g R) / (std_g R + eps).

    p = the group's accuracy (fraction of its rows the ``accuracy``/``accuracy_strict`` reward
    scored right).  Groups of middling difficulty (p near 1/2) get the largest step; groups the
    model already solves (or cannot) are damped, even when format rewards make them disagree.
    """
    _check_groups(scores.shape[0], group_size, "observe_grpo")
    if correct is None:
        raise LmmR1Error("advantage 'observe_grpo' needs each row's correctness: add the accuracy "
                         "(or accuracy_strict) reward")
    r = _group_view(scores + (kl_rewards * mask).sum(-1), group_size)
    p = _group_view(correct.to(r.dtype), group_size).mean(-1, keepdim=True)
    adv = OBSERVE_SCALE * p * (1 - p) * (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + eps)
    return adv.reshape(-1, 1) * mask, None


ESTIMATORS: dict[str, Callable] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce_pp": reinforce_pp,
    "reinforce_pp_baseline": reinforce_pp_baseline,
    "gae": gae,
    "ema_grpo": ema_grpo,
    "observe_grpo": observe_grpo,
}
GROUP_ESTIMATORS = {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "ema_grpo", "observe_grpo"}

# Multi-turn episodes (algos/episodes.py): they need the trainer's TurnIndex (``turns=``).
from lmmr1.algos.episodes import episode_grpo, gigpo, turn_discount  # noqa: E402

ESTIMATORS.update({"episode_grpo": episode_grpo, "gigpo": gigpo, "turn_discount": turn_discount})
EPISODE_ESTIMATORS = {"episode_grpo", "gigpo", "turn_discount"}


def compute_advantages(name: str, scores, kl_rewards, mask, group_size, **kwargs):
    if name not in ESTIMATORS:
        raise LmmR1Error(f"unknown advantage estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name](scores, kl_rewards, mask, group_size, **kwargs)
