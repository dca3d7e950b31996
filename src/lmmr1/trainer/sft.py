"""Supervised fine-tuning (the cold-start stage): the pieces of ``Trainer.sft_step``.

The loss is the token-mean negative log-likelihood of the assistant's reply given the prompt,
computed by the same teacher-forced forward the RL step uses (``completion_logprobs``), so a
prompt with images is encoded exactly as in RL and the SFT'd model is the one RL starts from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from lmmr1.errors import LmmR1Error
from lmmr1.models.loader import LoadedModel
from lmmr1.models.processor import ChatProcessor, PromptBatch
from lmmr1.models.sequence import completion_logprobs


def response_targets(processor: ChatProcessor, examples: Sequence[Any], response_keys: Sequence[str]) -> list[list[int]]:
    """Token ids of each example's reply (field ``response_keys[i]``) followed by ``<|im_end|>``,
    so the model also learns to stop."""
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    targets = []
    for ex, key in zip(examples, response_keys, strict=True):
        resp = ex.fields.get(key)
        if not isinstance(resp, str) or not resp.strip():
            raise LmmR1Error(f"{ex.source}: SFT needs field '{key}' (the assistant's reply); it is missing or empty")
        targets.append(processor.encode_text(resp) + [end])
    return targets


def pad_targets(targets: list[list[int]], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, mask) of shape (rows, longest target); mask 1 on target tokens."""
    T = max(len(x) for x in targets)
    ids = torch.full((len(targets), T), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(targets), T), dtype=torch.float32, device=device)
    for i, x in enumerate(targets):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1.0
    return ids, mask


def nll_backward(lm: LoadedModel, prompts: PromptBatch, ids: torch.Tensor, mask: torch.Tensor, *,
                 micro_batch_size: int, chunk_tokens: int,
                 amp: Callable[[], AbstractContextManager]) -> list[float]:
    """Back-propagate the token-mean NLL over all rows, micro-batch by micro-batch.

    Each micro-batch's loss is divided by the token count of the whole batch, so the accumulated
    gradient is the whole batch's and the returned per-micro-batch losses sum to its loss.
    """
    n_tok = float(mask.sum())
    rows = torch.arange(ids.shape[0], device=ids.device)
    losses = []
    for s in range(0, len(rows), micro_batch_size):
        micro = rows[s : s + micro_batch_size]
        with amp():
            lp, _ = completion_logprobs(lm, prompts, micro, ids[micro], mask[micro], chunk_tokens=chunk_tokens)
        loss = -(lp * mask[micro]).sum() / n_tok
        loss.backward()
        losses.append(float(loss.detach()))
    return losses
