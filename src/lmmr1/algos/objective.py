"""The policy objective of one (micro-)batch: clipped surrogate + KL term + entropy bonus, in one place.

A pure function of tensors (no model, no config object), so every term can be checked by hand:

    loss = agg(L_clip) + beta * agg(KL(pi || pi_ref)) - entropy_coef * agg(H)

``agg`` is :func:`aggregate` with the *mini-batch* normalisers, so the micro-batch losses of one
mini-batch add up to the mini-batch loss (gradient accumulation gives the whole-batch gradient).
The KL term is present only when the KL is a loss term (``beta > 0`` and a reference given); with
``kl_in_reward`` the trainer passes ``beta = 0`` because the KL already shaped the rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmmr1.algos.losses import aggregate, kl_estimate, ppo_clip_loss
from lmmr1.algos.papo import papo_kl
from lmmr1.errors import LmmR1Error


@dataclass(frozen=True)
class ObjectiveSettings:
    """The algorithm's knobs the objective reads (a subset of ``algo:`` in a recipe)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    ratio_level: str = "token"  # token (PPO/GRPO) | sequence (GSPO)
    loss_agg: str = "token_mean"
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0


def ratio_pairing_error(ratio_level: str, loss_agg: str) -> str | None:
    """GSPO's objective is a mean over sequences of a sequence-level clipped term; any other
    aggregation weights sequences by their length and is not GSPO (a gradient off by ~1e-2).
    Returns the error line for a wrong pairing, None for a valid one."""
    if ratio_level == "sequence" and loss_agg != "seq_mean_token_mean":
        return (f"algo.ratio_level=sequence (GSPO) needs algo.loss_agg=seq_mean_token_mean (got {loss_agg}): "
                "GSPO averages a per-sequence term over sequences")
    return None


def check_ratio_pairing(ratio_level: str, loss_agg: str) -> None:
    err = ratio_pairing_error(ratio_level, loss_agg)
    if err:
        raise LmmR1Error(err)


@dataclass
class ObjectiveOut:
    loss: torch.Tensor  # scalar: what is back-propagated
    clipped: torch.Tensor  # (N, T) bool: a clip (or the dual clip) was active
    ratio: torch.Tensor  # (N, T) the importance ratio used
    terms: dict[str, float] = field(default_factory=dict)  # optional terms' aggregated values (PAPO)


@dataclass
class PapoTerm:
    """PAPO's inputs for one micro-batch (algos/papo.py): loss -= coef * agg(KL(pi(.|I) || pi(.|I_mask)))
    + entropy_coef * agg(H(.|I)) + masked_entropy_coef * agg(H(.|I_mask))."""

    masked_logp: torch.Tensor  # (N, T) log pi(.|I_mask), no gradient
    image_rows: torch.Tensor  # (N,) 1 for rows with an image, 0 for text-only rows (no term)
    coef: float
    entropy_coef: float = 0.0
    masked_entropy: torch.Tensor | None = None  # (N, T) with gradient, only when masked_entropy_coef > 0
    masked_entropy_coef: float = 0.0


def policy_objective(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                     settings: ObjectiveSettings, *, ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0,
                     entropy: torch.Tensor | None = None, num_tokens: float | None = None,
                     num_seqs: float | None = None, max_len: int | None = None,
                     kl_weight: torch.Tensor | None = None, papo: PapoTerm | None = None) -> ObjectiveOut:
    """Loss to minimise for one micro-batch (all (N, T) tensors; ``mask`` 1 on completion tokens).

    ``num_tokens``/``num_seqs`` are the mini-batch totals when this is one micro-batch of it;
    ``max_len`` is the Dr. GRPO constant normaliser (rollout.max_new_tokens).
    ``kl_weight`` (N,) scales each row's KL term (APO's DADS); ``papo`` adds PAPO's terms.
    """
    s = settings
    check_ratio_pairing(s.ratio_level, s.loss_agg)
    agg = dict(num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    out = ppo_clip_loss(logp, old_logp, advantages, mask, clip_low=s.clip_low, clip_high=s.clip_high,
                        dual_clip=s.dual_clip, ratio_level=s.ratio_level)
    loss = aggregate(out.loss, mask, s.loss_agg, **agg)
    terms: dict[str, float] = {}
    if ref_logp is not None and kl_coef > 0:
        kl = kl_estimate(logp, ref_logp, s.kl_estimator)
        if kl_weight is not None:
            kl = kl * kl_weight.to(kl.dtype).unsqueeze(-1)
        loss = loss + kl_coef * aggregate(kl, mask, s.loss_agg, **agg)
    if papo is not None:
        pk = aggregate(papo_kl(logp, papo.masked_logp, papo.image_rows), mask, s.loss_agg, **agg)
        terms["papo/kl"] = float(pk.detach())
        loss = loss - papo.coef * pk
        rows = papo.image_rows.to(logp.dtype).unsqueeze(-1)
        if papo.entropy_coef:
            if entropy is None:
                raise LmmR1Error("PAPO's entropy regulariser needs the per-token entropy")
            loss = loss + papo.entropy_coef * aggregate(entropy * rows, mask, s.loss_agg, **agg)
        if papo.masked_entropy_coef:
            if papo.masked_entropy is None:
                raise LmmR1Error("PAPO's masked-image entropy regulariser needs the masked entropy")
            loss = loss + papo.masked_entropy_coef * aggregate(papo.masked_entropy * rows, mask, s.loss_agg, **agg)
    if s.entropy_coef:
        if entropy is None:
            raise LmmR1Error("entropy_coef is set but no per-token entropy was given")
        loss = loss - s.entropy_coef * aggregate(entropy, mask, s.loss_agg, **agg)
    return ObjectiveOut(loss, out.clipped, out.ratio, terms)
