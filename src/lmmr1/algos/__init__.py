"""Pure tensor functions: advantage estimators, losses, aggregation, KL.  Formulas: docs/algorithms.md."""

from lmmr1.algos.advantages import ESTIMATORS, GROUP_ESTIMATORS, compute_advantages
from lmmr1.algos.losses import (
    AGG_MODES,
    KLController,
    aggregate,
    groups_with_signal,
    kl_estimate,
    ppo_clip_loss,
    value_loss,
)

__all__ = ["AGG_MODES", "ESTIMATORS", "GROUP_ESTIMATORS", "KLController", "aggregate", "compute_advantages",
           "groups_with_signal", "kl_estimate", "ppo_clip_loss", "value_loss"]
