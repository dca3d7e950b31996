"""Decode-step backends for the sampler: one token per active row per call.

``HFDecoder`` drives the Hugging Face language model with its ``DynamicCache`` (any architecture).
``StaticDecoder`` is the fast path for Qwen2 / Qwen2-VL / Qwen2.5-VL / Llama / Mistral decoders:
after HF's own prefill it copies the KV cache into preallocated buffers (no per-step
``torch.cat``), builds the padding mask once, and runs each layer by calling the model's own
submodules (norms, projections — so LoRA and biases apply — and its rotary-embedding module),
skipping the generic per-call machinery that dominates small-batch decoding.  Its output is
checked against the HF training forward by the rollout-vs-training log-prob tests (< 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmmr1.models.loader import LoadedModel

FAST_TYPES = ("qwen2", "qwen2_5_vl", "qwen2_vl", "llama", "mistral")


class HFDecoder:
    def __init__(self, lm: LoadedModel, cache, attn: torch.Tensor, next_pos: torch.Tensor, n_channels: int):
        self.lm, self.cache, self.attn, self.next_pos, self.n_ch = lm, cache, attn, next_pos, n_channels

    def select(self, idx: torch.Tensor) -> None:
        self.cache.batch_select_indices(idx)
        self.attn, self.next_pos = self.attn[idx], self.next_pos[idx]

    def step(self, tok: torch.Tensor, t: int) -> torch.Tensor:
        self.attn = torch.cat([self.attn, torch.ones_like(self.attn[:, :1])], dim=1)
        pos = (self.next_pos + t).view(1, -1, 1).expand(self.n_ch, -1, 1)
        hidden, self.cache = self.lm.hidden_states(tok[:, None], self.attn, pos, past_key_values=self.cache,
                                                   use_cache=True)
        return hidden[:, -1]


def static_supported(lm: LoadedModel) -> bool:
    if lm.model_type not in FAST_TYPES:
        return False
    text = lm.language_model
    cfg = text.config
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"])):
        return False
    layer = text.layers[0]
    attn = layer.self_attn
    return all(hasattr(attn, k) for k in ("q_proj", "k_proj", "v_proj", "o_proj")) and all(
        hasattr(layer.mlp, k) for k in ("gate_proj", "up_proj", "down_proj")) and not hasattr(attn, "q_norm")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class StaticDecoder:
    def __init__(self, lm: LoadedModel, cache, attn: torch.Tensor, next_pos: torch.Tensor, n_channels: int,
                 max_new_tokens: int):
        self.lm, self.next_pos, self.n_ch = lm, next_pos, n_channels
        text = lm.language_model
        self.text = text
        self.layers = list(text.layers)
        rows, Lp = attn.shape
        self.Lp = Lp
        total = Lp + max_new_tokens
        self.k, self.v = [], []
        for i in range(len(self.layers)):
            k0, v0 = cache.layers[i].keys, cache.layers[i].values  # (rows, kv_heads, Lp, head_dim)
            k = k0.new_zeros((rows, k0.shape[1], total, k0.shape[3]))
            v = v0.new_zeros((rows, v0.shape[1], total, v0.shape[3]))
            k[:, :, :Lp] = k0
            v[:, :, :Lp] = v0
            self.k.append(k)
            self.v.append(v)
        self.mask = torch.zeros((rows, 1, 1, total), dtype=torch.bool, device=attn.device)
        self.mask[:, 0, 0, :Lp] = attn.bool()
        self.heads = [(lay.self_attn.config.num_attention_heads, lay.self_attn.config.num_key_value_heads,
                       lay.self_attn.head_dim, lay.self_attn.scaling) for lay in self.layers]

    def select(self, idx: torch.Tensor) -> None:
        self.k = [k[idx] for k in self.k]
        self.v = [v[idx] for v in self.v]
        self.mask, self.next_pos = self.mask[idx], self.next_pos[idx]

    @torch.no_grad()
    def step(self, tok: torch.Tensor, t: int) -> torch.Tensor:
        col = self.Lp + t
        self.mask[:, 0, 0, col] = True
        L = col + 1
        h = self.text.embed_tokens(tok[:, None])  # (A, 1, H)
        pos = (self.next_pos + t).view(1, -1, 1)
        pos = pos.expand(self.n_ch, -1, 1) if self.lm.uses_mrope else pos[0]
        cos, sin = self.text.rotary_emb(h, pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        A = h.shape[0]
        mask = self.mask[:, :, :, :L]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            n_q, n_kv, d, scale = self.heads[i]
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(A, 1, n_q, d).transpose(1, 2)
            k = attn.k_proj(x).view(A, 1, n_kv, d).transpose(1, 2)
            v = attn.v_proj(x).view(A, 1, n_kv, d).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.k[i][:, :, col : col + 1] = k
            self.v[i][:, :, col : col + 1] = v
            o = F.scaled_dot_product_attention(q, self.k[i][:, :, :L], self.v[i][:, :, :L], attn_mask=mask,
                                               scale=scale, enable_gqa=n_q != n_kv)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(A, 1, n_q * d))
            x = layer.post_attention_layernorm(h)
            h = h + layer.mlp(x)
        return self.text.norm(h)[:, -1]
