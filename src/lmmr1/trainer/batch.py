"""What flows through one RL step, and what the updates report back.

``StepBatch`` is filled top to bottom by ``Trainer.train_step`` (rollout and rewards, then the
no-grad forwards, then advantages) and read by every update; ``UpdateStats`` only accumulates
numbers for the step's metrics (no control flags live in it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmmr1.rewards import RewardResult, Sample
from lmmr1.rollout import Rollout


@dataclass
class StepBatch:
    rollout: Rollout
    examples: list[Any]  # the prompt rows the rollout continues (one per prompt, not per sample)
    samples: list[Sample]  # what the rewards scored, one per completion
    rewards: RewardResult
    scores: torch.Tensor  # (N,) total rule reward per completion (a failed reward counts 0)
    old_logp: torch.Tensor  # (N, T) log pi_old: sampling-time, or recomputed by the training forward
    ref_logp: torch.Tensor | None  # (N, T) log pi_ref, None without a KL term
    kl_tok: torch.Tensor  # (N, T) per-token KL(pi_old || pi_ref) estimate, zeros without a reference
    values: torch.Tensor | None  # (N, T) critic values V(s_t), None without GAE
    advantages: torch.Tensor | None = None  # (N, T), set by the advantage estimator
    returns: torch.Tensor | None = None  # (N, T) value targets (GAE) or returns-to-go, None for group estimators
    # set by trainer/variants.py only when the variant is on
    kl_weight: torch.Tensor | None = None  # (N,) APO DADS: per-row weight of the KL loss term
    masked_rollout: Rollout | None = None  # PAPO: the rollout with patches of its images blacked out
    papo_logp: torch.Tensor | None = None  # (N, T) PAPO: log pi(.|q, I_mask), no gradient
    image_rows: torch.Tensor | None = None  # (N,) PAPO: 1 for rows with an image

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.completion_mask

    @property
    def num_rows(self) -> int:
        return self.rollout.num_rows


@dataclass
class UpdateStats:
    """Per-step accumulators.  ``policy_loss``/``value_loss`` hold one number per optimizer step: the
    SUM of its micro-batch losses (each micro-batch loss is already divided by the mini-batch
    normaliser, so the sum is the mini-batch loss); metrics report their mean over mini-batches and
    epochs.  ``clip_frac``/``entropy`` hold one number per micro-batch."""

    policy_loss: list[float] = field(default_factory=list)
    value_loss: list[float] = field(default_factory=list)
    clip_frac: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=dict)  # optional objective terms (PAPO), per micro-batch
    skipped: int = 0
    logprob_gap: float = 0.0  # max |log pi_train - log pi_rollout| before this step's first optimizer step

    @staticmethod
    def mean(values: list[float], empty: float = 0.0) -> float:
        return float(np.mean(values)) if values else empty
