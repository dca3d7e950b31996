"""The built-in batched sampler for Hugging Face models (CPU or one GPU).

Why not ``model.generate``?  We need (1) the prompt and its images encoded once and shared by
the n samples of a GRPO group (prefill per prompt, then the KV cache is fanned out n times);
(2) the sampling log-prob of every token, computed by the very function the trainer uses;
(3) explicit 3-D positions so training sees the same M-RoPE positions; (4) finished rows
dropped from the batch instead of being decoded as padding until the longest row ends.
"""

from __future__ import annotations

import torch

from lmmr1.models.loader import LoadedModel
from lmmr1.models.processor import PromptBatch
from lmmr1.rollout.types import Rollout, SamplingParams


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k / nucleus (top-p) set with -inf (sampling only)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample(lm: LoadedModel, prompts: PromptBatch, params: SamplingParams) -> Rollout:
    """Generate ``params.n`` completions for every prompt row of ``prompts``."""
    dev = lm.device
    prompts = prompts.to(dev)
    proc = lm.processor
    n, T = params.n, params.max_new_tokens
    B = prompts.batch_size
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=dev).manual_seed(params.seed)
    greedy = params.temperature == 0
    temp = 1.0 if greedy else params.temperature

    was_training = lm.model.training
    lm.model.eval()
    try:
        # ---- prefill: once per prompt, images encoded once per prompt
        pos = lm.prompt_positions(prompts)
        feats = [f for f in lm.encode_images(prompts) if f is not None]
        hidden, cache = lm.hidden_states(
            prompts.input_ids, prompts.attention_mask, pos, torch.cat(feats) if feats else None, use_cache=True
        )
        last = hidden[:, -1]  # left padding: the last column is every row's last prompt token
        # ---- fan out to n samples per prompt
        if n > 1:
            cache.batch_repeat_interleave(n)
            last = last.repeat_interleave(n, 0)
        attn = prompts.attention_mask.repeat_interleave(n, 0)
        next_pos = lm.next_positions(pos).repeat_interleave(n, 0)
        n_ch = pos.shape[0]

        rows = B * n
        out_ids = torch.full((rows, T), proc.pad_token_id, dtype=torch.long, device=dev)
        out_lp = torch.zeros((rows, T), dtype=torch.float32, device=dev)
        out_mask = torch.zeros((rows, T), dtype=torch.float32, device=dev)
        reasons = ["length"] * rows
        active = torch.arange(rows, device=dev)
        stop_ids = torch.tensor(sorted(proc.stop_token_ids), device=dev)
        stop_strings = [s for s in params.stop if s]
        tail_tokens = max((len(s) for s in stop_strings), default=0) + 2

        for t in range(T):
            logits = lm.logits(last)
            logp = torch.log_softmax(logits / temp, dim=-1)
            if greedy:
                tok = logits.argmax(-1)
            else:
                filtered = _filter_top_k_top_p(logits / temp, params.top_k, params.top_p)
                tok = torch.multinomial(torch.softmax(filtered, -1), 1, generator=gen).squeeze(-1)
            out_ids[active, t] = tok
            out_lp[active, t] = logp.gather(-1, tok[:, None]).squeeze(-1)
            out_mask[active, t] = 1.0

            done = torch.isin(tok, stop_ids)
            if stop_strings:
                for j, r in enumerate(active.tolist()):
                    if not done[j]:
                        tail = proc.decode(out_ids[r, max(0, t + 1 - tail_tokens) : t + 1].tolist())
                        done[j] = any(s in tail for s in stop_strings)
            for r in active[done].tolist():
                reasons[r] = "stop"
            if t == T - 1:
                break
            keep = ~done
            if not bool(keep.any()):
                break
            if not bool(keep.all()):
                idx = keep.nonzero().squeeze(-1)
                cache.batch_select_indices(idx)
                active, tok, attn, next_pos = active[idx], tok[idx], attn[idx], next_pos[idx]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            step_pos = (next_pos + t).view(1, -1, 1).expand(n_ch, -1, 1)
            hidden, cache = lm.hidden_states(tok[:, None], attn, step_pos, past_key_values=cache, use_cache=True)
            last = hidden[:, -1]
    finally:
        lm.model.train(was_training)

    texts = [proc.decode(out_ids[r, : int(out_mask[r].sum())].tolist()) for r in range(rows)]
    return Rollout(
        prompts=prompts,
        prompt_index=torch.arange(B, device=dev).repeat_interleave(n),
        completion_ids=out_ids,
        completion_mask=out_mask,
        logprobs=out_lp,
        finish_reasons=reasons,
        texts=texts,
        temperature=temp,
    )
