"""Policy/value losses, loss aggregation, KL estimators and the KL controller (pure functions).

Aggregation takes explicit global normalisers so that a mini-batch split into micro-batches
(gradient accumulation) produces exactly the gradient of the whole mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmmr1.errors import LmmR1Error

AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")

# Clamps, as verl applies them (verl/trainer/ppo/core_algos.py).  A log-ratio of 100 overflows exp in
# float32 (exp(88.7) = inf): the loss stays finite through the clip branch but its gradient is
# 0 * inf = NaN and the whole update is lost.  Clamping the *log* ratio keeps the value and the
# gradient finite; inside the range the clamp is the identity (bit for bit), so ordinary steps are
# unchanged.  exp(20) = 4.9e8 is far beyond any clip range, so no real signal is cut.
LOG_RATIO_CLAMP = 20.0
# k3 = exp(-d) + d - 1 explodes as d = log pi - log ref -> -inf (exp(95) = inf in float32); verl's
# ``kl_penalty`` clamps d to +-20 and the estimate to +-10.
KL_VALUE_CLAMP = 10.0


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, *, num_tokens: float | None = None,
              num_seqs: float | None = None, max_len: int | None = None) -> torch.Tensor:
    """Reduce a (N, T) per-token quantity to a scalar.

    token_mean               sum(x*m) / num_tokens                  (DAPO: every token counts once)
    seq_mean_token_mean      sum_i [sum_t x*m / |y_i|] / num_seqs   (GRPO paper; favours short answers)
    seq_mean_token_sum_norm  sum(x*m) / (num_seqs * max_len)        (Dr. GRPO: a constant normaliser)

    ``num_tokens``/``num_seqs`` default to this batch's; pass the mini-batch totals when this is
    one micro-batch of it.
    """
    mask = mask.to(values.dtype)
    if mode == "token_mean":
        denom = num_tokens if num_tokens is not None else mask.sum()
        return (values * mask).sum() / max(float(denom), 1.0)
    if mode == "seq_mean_token_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        denom = num_seqs if num_seqs is not None else values.shape[0]
        return per_seq.sum() / max(float(denom), 1.0)
    if mode == "seq_mean_token_sum_norm":
        if not max_len:
            raise LmmR1Error("loss aggregation seq_mean_token_sum_norm needs max_len (rollout.max_new_tokens)")
        denom = num_seqs if num_seqs is not None else values.shape[0]
        return (values * mask).sum() / (max(float(denom), 1.0) * max_len)
    raise LmmR1Error(f"unknown loss aggregation {mode!r}; choose one of {', '.join(AGG_MODES)}")


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str = "token"):
    """Per-token ratio pi/pi_old, or GSPO's sequence ratio (Zheng et al. 2025, eq. 7).

    GSPO: s_i = exp(mean_t (log pi - log pi_old)); written per token as sg[s_i] * pi_t / sg[pi_t]
    so its value is s_i on every token and its gradient is s_i * grad(mean_t log pi_t).  GSPO's
    objective averages per sequence, so it must be aggregated with ``seq_mean_token_mean``.

    Log-ratios are clamped to +-LOG_RATIO_CLAMP before exp (finite value and gradient at any input).
    """
    log_ratio = (logp - old_logp) * mask
    if level == "token":
        return torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    if level == "sequence":
        seq = (log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)).detach()
        log_seq = seq.unsqueeze(-1) + logp - logp.detach()
        return torch.exp(log_seq.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    raise LmmR1Error(f"unknown ratio level {level!r}; use token or sequence")


@dataclass
class PolicyLossOut:
    loss: torch.Tensor  # (N, T) per-token loss before aggregation
    clipped: torch.Tensor  # (N, T) bool: the clipped branch was active
    ratio: torch.Tensor  # (N, T)


def ppo_clip_loss(logp, old_logp, advantages, mask, *, clip_low: float = 0.2, clip_high: float = 0.2,
                  dual_clip: float | None = None, ratio_level: str = "token") -> PolicyLossOut:
    """PPO clipped surrogate (Schulman et al. 2017) with asymmetric clip (DAPO clip-higher, Yu et al. 2025).

    L_t = max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high)); with dual clip (Ye et al. 2020)
    a negative-advantage token's loss is further capped at -A_t * dual_clip.
    """
    ratio = importance_ratio(logp, old_logp, mask, ratio_level)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise LmmR1Error(f"dual_clip must be > 1 (typically 3), got {dual_clip}")
        cap = -advantages * dual_clip
        capped = (advantages < 0) & (loss > cap)
        loss = torch.where(advantages < 0, torch.minimum(loss, cap), loss)
        was_clipped = was_clipped | capped
    return PolicyLossOut(loss * mask, was_clipped & mask.bool(), ratio)


def value_loss(values, old_values, returns, mask, *, clip: float | None = 0.2) -> torch.Tensor:
    """Clipped value loss (PPO): 0.5 * max((V - R)^2, (clip(V, V_old +- c) - R)^2), per token."""
    err = (values - returns) ** 2
    if clip is not None:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.maximum(err, (v_clip - returns) ** 2)
    return 0.5 * err * mask


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL", 2020).

    k1 = log pi - log ref;  k2 = (log pi - log ref)^2 / 2;  k3 = exp(log ref - log pi) - (log ref - log pi) - 1.

    k3 (verl's ``low_var_kl``) is computed on d clamped to +-LOG_RATIO_CLAMP and its value clamped
    to +-KL_VALUE_CLAMP, as verl does: unclamped, d = -95 gives inf, and with the KL in the reward
    one inf turns every advantage of the batch into NaN.  k1 and k2 are polynomial in d (finite
    for any finite input) and are not clamped, also as in verl.
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    if kind == "k3":
        d = d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return (torch.exp(-d) + d - 1.0).clamp(-KL_VALUE_CLAMP, KL_VALUE_CLAMP)
    raise LmmR1Error(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


class KLController:
    """Fixed coefficient, or adaptive (Ziegler et al. 2019): beta *= 1 + clip(KL/target - 1, +-0.2) * n/horizon."""

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10000):
        if target is not None and not coef > 0:
            # beta changes by a factor, so beta = 0 stays 0 forever (and a reference model is loaded for nothing)
            raise LmmR1Error(f"an adaptive KL coefficient (kl_target={target}) starts from kl_coef and scales it; "
                             f"kl_coef must be > 0, got {coef}")
        self.value, self.target, self.horizon = float(coef), target, horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        if self.target is None or current_kl != current_kl:  # NaN measures nothing: keep beta
            return
        err = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.value *= 1.0 + err * n_samples / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def groups_with_signal(scores: torch.Tensor, group_size: int, atol: float = 1e-8) -> torch.Tensor:
    """DAPO dynamic sampling (Yu et al. 2025): True for groups whose rewards are not all equal."""
    g = scores.view(-1, group_size)
    return (g.max(-1).values - g.min(-1).values) > atol
