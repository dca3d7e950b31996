"""The built-in batched sampler for Hugging Face models (CPU or one GPU).

Why not ``model.generate``?  We need (1) the prompt and its images encoded once and shared by
the n samples of a GRPO group (prefill per prompt, then the KV cache is fanned out n times);
(2) the sampling log-prob of every token, computed by the very function the trainer uses;
(3) explicit 3-D positions so training sees the same M-RoPE positions; (4) finished rows
dropped from the batch instead of being decoded as padding until the longest row ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmmr1.models.loader import LoadedModel
from lmmr1.models.processor import PromptBatch
from lmmr1.rollout.decode import HFDecoder, StaticDecoder, static_supported
from lmmr1.rollout.types import Rollout, SamplingParams


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
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


@dataclass
class _Prefilled:
    """The state after the prompt pass, already fanned out to n rows per prompt."""

    last: torch.Tensor  # (B*n, H) hidden state of every row's last prompt token
    decoder: HFDecoder | StaticDecoder


def _prefill(lm: LoadedModel, prompts: PromptBatch, params: SamplingParams, use_static: bool) -> _Prefilled:
    """Run each prompt (and its images) once, then fan its KV cache out to its n samples."""
    n = params.n
    pos = lm.prompt_positions(prompts)
    feats = [f for f in lm.encode_images(prompts) if f is not None]
    hidden, cache = lm.hidden_states(
        prompts.input_ids, prompts.attention_mask, pos, torch.cat(feats) if feats else None, use_cache=True
    )
    last = hidden[:, -1]  # left padding: the last column is every row's last prompt token
    if n > 1:
        cache.batch_repeat_interleave(n)
        last = last.repeat_interleave(n, 0)
    attn = prompts.attention_mask.repeat_interleave(n, 0)
    next_pos = lm.next_positions(pos).repeat_interleave(n, 0)
    if use_static and static_supported(lm):
        decoder = StaticDecoder(lm, cache, attn, next_pos, pos.shape[0], params.max_new_tokens)
    else:
        decoder = HFDecoder(lm, cache, attn, next_pos, pos.shape[0])
    return _Prefilled(last, decoder)


def _choose_tokens(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None):
    """Next token per row and its (temperature-scaled) sampling log-prob."""
    greedy = params.temperature == 0
    temp = 1.0 if greedy else params.temperature
    logp = torch.log_softmax(logits / temp, dim=-1)
    if greedy:
        tok = logits.argmax(-1)
    else:
        filtered = filter_top_k_top_p(logits / temp, params.top_k, params.top_p)
        # Gumbel-max: argmax(logits + Gumbel noise) is an exact sample of softmax(logits),
        # one vectorised pass instead of torch.multinomial's per-row CDF search.
        u = torch.rand(filtered.shape, generator=gen, device=logits.device).clamp_(min=1e-20)
        tok = (filtered - torch.log(-torch.log(u))).argmax(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def _stopped(tok, alive, active, out_ids, t: int, stop_ids, stop_strings: list[str], proc) -> torch.Tensor:
    """Rows that end at token t: a stop token, or a stop string in the decoded tail of the row."""
    done = torch.isin(tok, stop_ids) & alive
    if stop_strings:
        tail_tokens = max(len(s) for s in stop_strings) + 2
        for j in alive.nonzero().squeeze(-1).tolist():
            if not done[j]:
                r = int(active[j])
                tail = proc.decode(out_ids[r, max(0, t + 1 - tail_tokens) : t + 1].tolist())
                done[j] = any(s in tail for s in stop_strings)
    return done


@torch.no_grad()
def sample(lm: LoadedModel, prompts: PromptBatch, params: SamplingParams, *, use_static: bool = True) -> Rollout:
    """Generate ``params.n`` completions for every prompt row of ``prompts``.

    Reads top to bottom: prefill once per prompt and fan out; then per position choose tokens,
    record them, find finished rows, compact the batch; finally decode the texts.  ``use_static``
    picks the static-KV decode path for supported decoders (see rollout/decode.py); False forces
    the generic Hugging Face path.
    """
    dev = lm.device
    prompts = prompts.to(dev)
    proc = lm.processor
    n, T = params.n, params.max_new_tokens
    B = prompts.batch_size
    gen = torch.Generator(device=dev).manual_seed(params.seed) if params.seed is not None else None

    was_training = lm.model.training
    lm.model.eval()
    try:
        state = _prefill(lm, prompts, params, use_static)
        last, decoder = state.last, state.decoder
        del state

        rows = B * n
        out_ids = torch.full((rows, T), proc.pad_token_id, dtype=torch.long, device=dev)
        out_lp = torch.zeros((rows, T), dtype=torch.float32, device=dev)
        out_mask = torch.zeros((rows, T), dtype=torch.float32, device=dev)
        reasons = ["length"] * rows
        active = torch.arange(rows, device=dev)  # output rows of the decoder's rows
        alive = torch.ones(rows, dtype=torch.bool, device=dev)  # decoder rows still generating
        stop_ids = torch.tensor(sorted(proc.stop_token_ids), device=dev)
        stop_strings = [s for s in params.stop if s]

        for t in range(T):
            tok, tok_lp = _choose_tokens(lm.logits(last), params, gen)
            live = active[alive]
            out_ids[live, t] = tok[alive]
            out_lp[live, t] = tok_lp[alive]
            out_mask[live, t] = 1.0

            done = _stopped(tok, alive, active, out_ids, t, stop_ids, stop_strings, proc)
            for r in active[done].tolist():
                reasons[r] = "stop"
            alive &= ~done
            if t == T - 1 or not bool(alive.any()):
                break
            # Drop finished rows from the batch once a quarter of it is dead (amortised copying);
            # until then they decode padding that is never recorded.
            if int(alive.sum()) <= 0.75 * len(alive):
                idx = alive.nonzero().squeeze(-1)
                decoder.select(idx)
                active, tok, alive = active[idx], tok[idx], alive[idx]
            last = decoder.step(tok, t)
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
        temperature=1.0 if params.temperature == 0 else params.temperature,
    )
