"""Data: the LMM-R1 row format, image loading, validation, mixing.  Formats: docs/data.md."""

from lmmr1.data.dataset import DataConfig, DataError, Example, PromptDataset, model_context_tokens
from lmmr1.data.mixing import MixtureSampler
from lmmr1.data.prompts import R1, R1_BOXED, resolve_system_prompt

__all__ = ["R1", "R1_BOXED", "DataConfig", "DataError", "Example", "MixtureSampler", "PromptDataset",
           "model_context_tokens", "resolve_system_prompt"]
