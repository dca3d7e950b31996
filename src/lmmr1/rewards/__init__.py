"""Rule-based rewards: pure Python, no model code.  Scoring rules: docs/rewards.md."""

from lmmr1.rewards.base import REGISTRY, Reward, RowError, Sample, register
from lmmr1.rewards.compose import CompositeReward, RewardResult, RewardSpec

__all__ = ["REGISTRY", "CompositeReward", "Reward", "RewardResult", "RewardSpec", "RowError", "Sample", "register"]
