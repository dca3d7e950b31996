"""The built-in batched sampler for Hugging Face models (CPU or one GPU).

Why not ``model.generate``?  We need (1) the prompt and its images encoded once and shared by
the n samples of a GRPO group (prefill per prompt, then the KV cache is fanned out n times);
(2) the sampling log-prob of every token, computed by the very function the trainer uses;
(3) explicit 3-D positions so training sees the same M-RoPE positions; (4) finished rows
dropped from the batch instead of being decoded as padding until the longest row ends.

Bounded memory: a rollout batch is worked through in chunks of at most
``SamplingParams.max_rows_in_flight`` rows / ``max_tokens_in_flight`` KV-cache tokens, so the
cache, logits and decode buffers depend on that budget, not on prompts x n x max_new_tokens.

Per-row randomness: the sampling noise of row (prompt p, sample k) at completion position t is
a counter-based hash of (seed, p, k, t, token id) (``row_keys`` / ``uniform_noise``), not a draw
from one generator shared by the batch.  So the tokens a row gets do not depend on which other
rows are decoded with it: a chunked rollout, or rollout workers that each take some prompts
(``prompt_ids`` names their global index), sample exactly what one unchunked pass samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmmr1.models.loader import LoadedModel
from lmmr1.models.processor import PromptBatch, select_prompts
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


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def splitmix64(x: int) -> int:
    """The splitmix64 finaliser on Python ints (the reference for the tensor version below)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def row_keys(seed: int, prompt_ids: list[int], n: int) -> list[int]:
    """One 64-bit key per row (prompt p, sample k), rows ordered p-major like a Rollout."""
    base = splitmix64(seed)
    return [_signed(splitmix64(splitmix64(base + _GOLDEN * (p + 1)) + k)) for p in prompt_ids for k in range(n)]


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def uniform_noise(keys: torch.Tensor, t: int, vocab: int) -> torch.Tensor:
    """U(0,1) noise (rows, vocab) for position t: splitmix64 of key + (t*vocab + v)*golden.

    Integer arithmetic wraps identically on every device and batch shape, so a row's noise is
    a pure function of its key; 23 random bits per draw (the Gumbel noise it feeds caps at ~16.6,
    i.e. tokens less likely than ~6e-8 relative to the best one are never drawn).
    """
    c = (torch.arange(vocab, device=keys.device, dtype=torch.long) + t * vocab) * _signed(_GOLDEN)
    x = keys[:, None] + c[None, :]
    x = (x ^ _srl(x, 30)) * _signed(_M1)
    x = (x ^ _srl(x, 27)) * _signed(_M2)
    x = x ^ _srl(x, 31)
    return (_srl(x, 41).float() + 0.5) * (1.0 / (1 << 23))  # exact in fp32: (k + 0.5) / 2^23


@dataclass
class _Prefilled:
    """The state after the prompt pass, already fanned out to n rows per prompt."""

    last: torch.Tensor  # (B*n, H) hidden state of every row's last prompt token
    decoder: HFDecoder | StaticDecoder


def _prefill(lm: LoadedModel, prompts: PromptBatch, fan: torch.Tensor, params: SamplingParams,
             use_static: bool) -> _Prefilled:
    """Run each prompt (and its images) once, then fan its KV cache out to its rows (``fan``:
    the prompt of every row; n rows per prompt, or fewer at the edges of a chunk)."""
    pos = lm.prompt_positions(prompts)
    feats = [f for f in lm.encode_images(prompts) if f is not None]
    hidden, cache = lm.hidden_states(
        prompts.input_ids, prompts.attention_mask, pos, torch.cat(feats) if feats else None, use_cache=True
    )
    last = hidden[:, -1]  # left padding: the last column is every row's last prompt token
    if len(fan) != prompts.batch_size or bool((fan != torch.arange(len(fan), device=fan.device)).any()):
        cache.batch_select_indices(fan)
        last = last[fan]
    attn = prompts.attention_mask[fan]
    next_pos = lm.next_positions(pos)[fan]
    if use_static and static_supported(lm):
        decoder = StaticDecoder(lm, cache, attn, next_pos, pos.shape[0], params.max_new_tokens)
    else:
        decoder = HFDecoder(lm, cache, attn, next_pos, pos.shape[0])
    return _Prefilled(last, decoder)


def _choose_tokens(logits: torch.Tensor, params: SamplingParams, keys: torch.Tensor, t: int):
    """Next token per row and its (temperature-scaled) sampling log-prob; ``keys`` are the rows'
    noise keys (see ``uniform_noise``)."""
    greedy = params.temperature == 0
    temp = 1.0 if greedy else params.temperature
    logp = torch.log_softmax(logits / temp, dim=-1)
    if greedy:
        tok = logits.argmax(-1)
    else:
        filtered = filter_top_k_top_p(logits / temp, params.top_k, params.top_p)
        # Gumbel-max: argmax(logits + Gumbel noise) is an exact sample of softmax(logits),
        # one vectorised pass instead of torch.multinomial's per-row CDF search.
        u = uniform_noise(keys, t, filtered.shape[-1])
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


def rows_per_chunk(params: SamplingParams, num_rows: int, prompt_len: int) -> int:
    """How many rows one chunk decodes: the whole batch, capped by the rows and KV-token budgets
    (a row holds prompt_len + max_new_tokens cache positions); at least one row."""
    rows = num_rows
    if params.max_rows_in_flight:
        rows = min(rows, params.max_rows_in_flight)
    if params.max_tokens_in_flight:
        rows = min(rows, params.max_tokens_in_flight // (prompt_len + params.max_new_tokens))
    return max(1, rows)


@torch.no_grad()
def sample(lm: LoadedModel, prompts: PromptBatch, params: SamplingParams, *, use_static: bool = True,
           prompt_ids: list[int] | None = None) -> Rollout:
    """Generate ``params.n`` completions for every prompt row of ``prompts``.

    The B*n rows are decoded in chunks of ``rows_per_chunk`` rows (one chunk unless the budget
    is smaller), each by ``_sample_rows``.  ``prompt_ids``: the prompts' indices in the whole
    rollout batch (default 0..B-1), which seed their rows' noise; a worker given prompts 8..15
    of a batch passes them so it samples what one process sampling the whole batch would.
    ``use_static`` picks the static-KV decode path for supported decoders (see
    rollout/decode.py); False forces the generic Hugging Face path.
    """
    dev = lm.device
    prompts = prompts.to(dev)
    n, T = params.n, params.max_new_tokens
    B = prompts.batch_size
    ids = list(range(B)) if prompt_ids is None else [int(p) for p in prompt_ids]
    if len(ids) != B:
        raise ValueError(f"prompt_ids has {len(ids)} entries for {B} prompts")
    if params.seed is None:  # unseeded: fresh keys from the global generator
        keys = torch.randint(-(2**62), 2**62, (B * n,), device=dev)
    else:
        keys = torch.tensor(row_keys(params.seed, ids, n), dtype=torch.long, device=dev)
    rows = B * n
    size = rows_per_chunk(params, rows, prompts.input_ids.shape[1])
    out_ids = torch.full((rows, T), lm.processor.pad_token_id, dtype=torch.long, device=dev)
    out_lp = torch.zeros((rows, T), dtype=torch.float32, device=dev)
    out_mask = torch.zeros((rows, T), dtype=torch.float32, device=dev)
    reasons = ["length"] * rows
    was_training = lm.model.training
    lm.model.eval()
    try:
        for r0 in range(0, rows, size):
            r1 = min(rows, r0 + size)
            p0, p1 = r0 // n, (r1 - 1) // n + 1
            sub = prompts if (p0, p1) == (0, B) else select_prompts(prompts, list(range(p0, p1)))
            fan = torch.arange(r0, r1, device=dev) // n - p0
            _sample_rows(lm, sub, fan, keys[r0:r1], params, use_static,
                         out_ids[r0:r1], out_lp[r0:r1], out_mask[r0:r1], reasons, r0)
    finally:
        lm.model.train(was_training)
    proc = lm.processor
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


def _sample_rows(lm: LoadedModel, prompts: PromptBatch, fan: torch.Tensor, keys: torch.Tensor,
                 params: SamplingParams, use_static: bool, out_ids: torch.Tensor, out_lp: torch.Tensor,
                 out_mask: torch.Tensor, reasons: list[str], first_row: int) -> None:
    """Decode one chunk of rows (row j continues prompt ``fan[j]``) into the ``out_*`` views.

    Reads top to bottom: prefill once per prompt and fan out; then per position choose tokens,
    record them, find finished rows, compact the batch.
    """
    dev = lm.device
    proc = lm.processor
    T = params.max_new_tokens
    state = _prefill(lm, prompts, fan, params, use_static)
    last, decoder = state.last, state.decoder
    del state

    rows = len(fan)
    active = torch.arange(rows, device=dev)  # output rows of the decoder's rows
    alive = torch.ones(rows, dtype=torch.bool, device=dev)  # decoder rows still generating
    stop_ids = torch.tensor(sorted(proc.stop_token_ids), device=dev)
    stop_strings = [s for s in params.stop if s]

    for t in range(T):
        tok, tok_lp = _choose_tokens(lm.logits(last), params, keys[active], t)
        live = active[alive]
        out_ids[live, t] = tok[alive]
        out_lp[live, t] = tok_lp[alive]
        out_mask[live, t] = 1.0

        done = _stopped(tok, alive, active, out_ids, t, stop_ids, stop_strings, proc)
        for r in active[done].tolist():
            reasons[first_row + r] = "stop"
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
