"""What a rollout engine returns; the trainer depends on this and nothing else of the engine.

A vLLM engine or a multi-turn environment loop only has to produce a :class:`Rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmmr1.models.processor import PromptBatch


@dataclass
class SamplingParams:
    n: int = 1  # samples per prompt (the GRPO group size)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings (kept in the completion)
    seed: int | None = None

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Rollout:
    """n completions for each of B prompts, rows grouped by prompt (row = prompt * n + k)."""

    prompts: PromptBatch  # the B unique prompts (images processed once per prompt)
    prompt_index: torch.Tensor  # (B*n,) long: which prompt each row continues
    completion_ids: torch.Tensor  # (B*n, T) long, right-padded with the pad id
    completion_mask: torch.Tensor  # (B*n, T) float: 1 on generated tokens (EOS included)
    logprobs: torch.Tensor  # (B*n, T) float32: log p at sampling time (temperature-scaled)
    finish_reasons: list[str]  # "stop" (EOS or stop string) or "length"
    texts: list[str]  # decoded completions, special tokens removed
    temperature: float = 1.0

    @property
    def num_rows(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1).long()

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())
