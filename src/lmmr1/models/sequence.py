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
    shared_prefix: bool | None = None,
) -> torch.Tensor:
    """Hidden states (N, T, H) at the positions that predict each completion token.

    Shared prefix (default when rows share prompts): the n samples of a group have the same
    prompt, and a causal model's prompt states do not depend on what follows.  So each distinct
    prompt (with its images) is run once, its KV cache is indexed out to the rows that continue
    it (a differentiable gather, so gradients from every sample flow back into the one prompt
    pass), and only the completion tokens are run per row: B*Lp + N*T tokens instead of
    N*(Lp+T).  With activation checkpointing the plain full-sequence path is used.
    """
    dev = lm.device
    prompt_index = prompt_index.to(dev)
    completion_ids = completion_ids.to(dev)
    mask_c = completion_mask.to(dev)
    if prompt_positions is None:
        prompt_positions = lm.prompt_positions(prompts)
    prompt_positions = prompt_positions.to(dev)
    T = completion_ids.shape[1]
    Lp = prompts.input_ids.shape[1]

    uniq, row_to_uniq = torch.unique(prompt_index, sorted=True, return_inverse=True)
    if shared_prefix is None:
        shared_prefix = len(uniq) < len(prompt_index) and not lm.activation_checkpointing
    feats = lm.encode_images(prompts, rows=uniq.tolist())

    if shared_prefix:
        u = uniq.tolist()
        pos_p = prompt_positions[:, uniq]
        img = [feats[p] for p in u if feats[p] is not None]
        h_p, cache = lm.hidden_states(prompts.input_ids[uniq], prompts.attention_mask[uniq], pos_p,
                                      torch.cat(img) if img else None, use_cache=True)
        cache.batch_select_indices(row_to_uniq)  # every row gets its prompt's keys/values (with grad)
        start = lm.next_positions(pos_p)[row_to_uniq]
        pos_c = (start[None, :, None] + torch.arange(T, device=dev)[None, None, :]).expand(pos_p.shape[0], -1, -1)
        attention_mask = torch.cat([prompts.attention_mask[prompt_index], (mask_c > 0).long()], dim=1)
        h_c, _ = lm.hidden_states(completion_ids, attention_mask, pos_c, past_key_values=cache, use_cache=True)
        # the last prompt state predicts completion token 0; completion state t predicts token t+1
        return torch.cat([h_p[row_to_uniq, -1:], h_c[:, :-1]], dim=1)

    ids_p = prompts.input_ids[prompt_index]
    mask_p = prompts.attention_mask[prompt_index]
    pos_p = prompt_positions[:, prompt_index]
    start = lm.next_positions(pos_p)
    pos_c = (start[None, :, None] + torch.arange(T, device=dev)[None, None, :]).expand(pos_p.shape[0], -1, -1)
    row_feats = [feats[p] for p in prompt_index.tolist() if feats[p] is not None]
    image_features = torch.cat(row_feats) if row_feats else None
    input_ids = torch.cat([ids_p, completion_ids], dim=1)
    attention_mask = torch.cat([mask_p, (mask_c > 0).long()], dim=1)
    position_ids = torch.cat([pos_p, pos_c], dim=2)
    hidden, _ = lm.hidden_states(input_ids, attention_mask, position_ids, image_features)
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
    entropy_grad: bool = True,
    prompt_positions: torch.Tensor | None = None,
    chunk_tokens: int = 2048,
    shared_prefix: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(completion token) for rows ``prompt_index`` (shape (N, T)), and entropy if asked."""
    h = completion_hidden(lm, prompts, prompt_index, completion_ids, completion_mask,
                          prompt_positions=prompt_positions, shared_prefix=shared_prefix)
    dev = h.device
    completion_ids = completion_ids.to(dev)
    valid = completion_mask.to(dev) > 0
    lp_flat, ent_flat = lm.token_logprobs(h[valid], completion_ids[valid], temperature,
                                          chunk_tokens=chunk_tokens, with_entropy=with_entropy,
                                          entropy_grad=entropy_grad)
    logprobs = torch.zeros(valid.shape, dtype=torch.float32, device=dev).masked_scatter(valid, lp_flat)
    entropy = None
    if with_entropy:
        entropy = torch.zeros(valid.shape, dtype=torch.float32, device=dev).masked_scatter(valid, ent_flat)
    return logprobs, entropy
