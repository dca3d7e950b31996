"""Teacher-forced log-probs of completions: the training-side twin of the sampler.

It rebuilds exactly the inputs the sampler used — the prompt's positions (3-D for M-RoPE) and
then one position per generated token — and scores only the completion positions, so the lm
head never runs over prompt tokens or padding.
"""

from __future__ import annotations

import torch

from lmmr1.models.loader import LoadedModel
from lmmr1.models.processor import PromptBatch


def completion_hidden(
    lm: LoadedModel,
    prompts: PromptBatch,
    prompt_index: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    prompt_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hidden states (N, T, H) at the positions that predict each completion token.

    Image features are computed once per distinct prompt among the rows and shared by all its
    samples (autograd sums their gradients), instead of once per sample.
    """
    dev = lm.device
    prompt_index = prompt_index.to(dev)
    completion_ids = completion_ids.to(dev)
    mask_c = completion_mask.to(dev)
    if prompt_positions is None:
        prompt_positions = lm.prompt_positions(prompts)
    prompt_positions = prompt_positions.to(dev)

    ids_p = prompts.input_ids[prompt_index]
    mask_p = prompts.attention_mask[prompt_index]
    pos_p = prompt_positions[:, prompt_index]
    T = completion_ids.shape[1]
    start = lm.next_positions(pos_p)
    pos_c = start[None, :, None] + torch.arange(T, device=dev)[None, None, :]
    pos_c = pos_c.expand(pos_p.shape[0], -1, -1)

    feats = lm.encode_images(prompts, rows=prompt_index.tolist())
    row_feats = [feats[p] for p in prompt_index.tolist() if feats[p] is not None]
    image_features = torch.cat(row_feats) if row_feats else None

    input_ids = torch.cat([ids_p, completion_ids], dim=1)
    attention_mask = torch.cat([mask_p, (mask_c > 0).long()], dim=1)
    position_ids = torch.cat([pos_p, pos_c], dim=2)
    hidden, _ = lm.hidden_states(input_ids, attention_mask, position_ids, image_features)
    Lp = ids_p.shape[1]
    return hidden[:, Lp - 1 : Lp - 1 + T]  # position t predicts completion token t


def completion_logprobs(
    lm: LoadedModel,
    prompts: PromptBatch,
    prompt_index: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    prompt_positions: torch.Tensor | None = None,
    chunk_tokens: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(completion token) for rows ``prompt_index`` (shape (N, T)), and entropy if asked."""
    h = completion_hidden(lm, prompts, prompt_index, completion_ids, completion_mask,
                          prompt_positions=prompt_positions)
    dev = h.device
    completion_ids = completion_ids.to(dev)
    valid = completion_mask.to(dev) > 0
    lp_flat, ent_flat = lm.token_logprobs(h[valid], completion_ids[valid], temperature,
                                          chunk_tokens=chunk_tokens, with_entropy=with_entropy)
    logprobs = torch.zeros(valid.shape, dtype=torch.float32, device=dev).masked_scatter(valid, lp_flat)
    entropy = None
    if with_entropy:
        entropy = torch.zeros(valid.shape, dtype=torch.float32, device=dev).masked_scatter(valid, ent_flat)
    return logprobs, entropy
