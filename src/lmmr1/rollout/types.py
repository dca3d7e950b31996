"""What a rollout engine returns; the trainer depends on this and nothing else of the engine.

A vLLM engine or a multi-turn environment loop only has to produce a :class:`Rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmmr1.models.processor import PromptBatch, concat_prompts, select_prompts


@dataclass
class SamplingParams:
    n: int = 1  # samples per prompt (the GRPO group size)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings (kept in the completion)
    seed: int | None = None
    # memory budget: decode at most this many rows / KV-cache tokens (rows x (prompt + max_new_tokens))
    # at a time; 0 = no limit.  Chunking never changes the samples (rows are seeded one by one).
    max_rows_in_flight: int = 0
    max_tokens_in_flight: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_rows_in_flight < 0 or self.max_tokens_in_flight < 0:
            raise ValueError("max_rows_in_flight and max_tokens_in_flight must be >= 0 (0 = no limit)")


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

    def select_prompts(self, prompt_rows: list[int]) -> Rollout:
        """Keep whole groups: the rows of the given prompts, in that order."""
        rows = [r for p in prompt_rows for r in (self.prompt_index == p).nonzero().squeeze(-1).tolist()]
        remap = {p: i for i, p in enumerate(prompt_rows)}
        idx = torch.tensor(rows, dtype=torch.long, device=self.completion_ids.device)
        return Rollout(
            prompts=select_prompts(self.prompts, prompt_rows),
            prompt_index=torch.tensor([remap[int(self.prompt_index[r])] for r in rows], device=idx.device),
            completion_ids=self.completion_ids[idx], completion_mask=self.completion_mask[idx],
            logprobs=self.logprobs[idx], finish_reasons=[self.finish_reasons[r] for r in rows],
            texts=[self.texts[r] for r in rows], temperature=self.temperature,
        )


def concat_rollouts(parts: list[Rollout], pad_token_id: int) -> Rollout:
    """One rollout from several (e.g. DAPO sampling rounds); completions re-padded on the right."""
    if len(parts) == 1:
        return parts[0]
    T = max(p.completion_ids.shape[1] for p in parts)

    def right(t, value):
        if t.shape[1] == T:
            return t
        return torch.cat([t, torch.full((t.shape[0], T - t.shape[1]), value, dtype=t.dtype, device=t.device)], 1)

    offsets, total = [], 0
    for p in parts:
        offsets.append(total)
        total += p.prompts.batch_size
    return Rollout(
        prompts=concat_prompts([p.prompts for p in parts], pad_token_id),
        prompt_index=torch.cat([p.prompt_index + o for p, o in zip(parts, offsets, strict=True)]),
        completion_ids=torch.cat([right(p.completion_ids, pad_token_id) for p in parts]),
        completion_mask=torch.cat([right(p.completion_mask, 0.0) for p in parts]),
        logprobs=torch.cat([right(p.logprobs, 0.0) for p in parts]),
        finish_reasons=[f for p in parts for f in p.finish_reasons],
        texts=[t for p in parts for t in p.texts], temperature=parts[0].temperature,
    )
