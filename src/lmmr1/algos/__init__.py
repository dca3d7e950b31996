"""Pure tensor functions: advantage estimators, losses, aggregation, KL.  Formulas: docs/algorithms.md."""

from lmmr1.algos.advantages import EPISODE_ESTIMATORS, ESTIMATORS, GROUP_ESTIMATORS, compute_advantages
from lmmr1.algos.episodes import TurnIndex
from lmmr1.algos.losses import (
    AGG_MODES,
    KL_VALUE_CLAMP,
    LOG_RATIO_CLAMP,
    KLController,
    aggregate,
    groups_with_signal,
    kl_estimate,
    ppo_clip_loss,
    value_loss,
)
from lmmr1.algos.objective import (
    ObjectiveOut,
    ObjectiveSettings,
    PapoTerm,
    check_ratio_pairing,
    policy_objective,
    ratio_pairing_error,
)

__all__ = ["AGG_MODES", "EPISODE_ESTIMATORS", "ESTIMATORS", "GROUP_ESTIMATORS", "KL_VALUE_CLAMP", "LOG_RATIO_CLAMP", "KLController",
           "ObjectiveOut", "ObjectiveSettings", "PapoTerm", "aggregate", "check_ratio_pairing", "compute_advantages",
           "groups_with_signal", "kl_estimate", "policy_objective", "ppo_clip_loss", "ratio_pairing_error", "TurnIndex", "value_loss"]
