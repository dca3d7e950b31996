"""Rollout: prompts -> completions with sampling log-probs (built-in HF sampler; narrow interface)."""

from lmmr1.rollout.sampler import sample
from lmmr1.rollout.types import Rollout, SamplingParams

__all__ = ["Rollout", "SamplingParams", "sample"]
