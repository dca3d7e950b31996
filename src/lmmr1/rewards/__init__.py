"""Rule-based rewards: pure Python, no model code.  Scoring rules: docs/rewards.md."""

from lmmr1.rewards import agents  # noqa: F401  (registers the agent rewards: sokoban, football)
from lmmr1.rewards.base import REGISTRY, Reward, RewardConfigError, RewardError, RowError, Sample, register
from lmmr1.rewards.compose import CompositeReward, RewardResult, RewardSpec, check_rewards

__all__ = ["REGISTRY", "CompositeReward", "Reward", "RewardConfigError", "RewardError", "RewardResult", "RewardSpec",
           "RowError", "Sample", "check_rewards", "register"]
