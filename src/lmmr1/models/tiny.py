"""Build complete, tiny, *real* Hugging Face checkpoints offline.

No model hub is reachable from our machines or CI, yet every test and the CPU demo must load
models exactly the way a real Qwen2.5-VL checkpoint is loaded.  So we build one: a byte-level
BPE tokenizer trained on the spot with Qwen's pre-tokenizer and special tokens, the Qwen2-VL
chat template, a Qwen2-VL image-processor config and a Qwen2.5-VL (or Qwen2-VL, or text-only
Qwen2) config with random weights.  Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from lmmr1.errors import LmmR1Error
from lmmr1.models.chat_template import QWEN2_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS

# Qwen2's pre-tokenizer regex: digits are split one by one, which keeps arithmetic learnable.
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class SizePreset:
    """Shapes of one preset; `small` keeps Qwen2.5-VL-3B's proportions (GQA 4:1, tied embeddings)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    mrope_section: tuple[int, int, int]
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    min_pixels: int
    max_pixels: int


SIZES: dict[str, SizePreset] = {
    # ~0.9M parameters: fast enough for every unit test.
    "tiny": SizePreset(
        vocab=1024, hidden=128, layers=2, heads=4, kv_heads=2, intermediate=384,
        mrope_section=(4, 6, 6), vision_depth=2, vision_hidden=64, vision_heads=2,
        vision_intermediate=128, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16,
    ),
    # ~30M parameters: benchmarks and the CPU demo.
    "small": SizePreset(
        vocab=4096, hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1536,
        mrope_section=(8, 12, 12), vision_depth=4, vision_hidden=256, vision_heads=4,
        vision_intermediate=768, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64,
    ),
}

ARCHS = ("qwen2_5_vl", "qwen2_vl")

_WORDS = (
    "the a an of to in is are was what how many much find compute solve answer think step first then so "
    "therefore because if and or not total sum product difference each per more less than equal value "
    "number numbers apple apples box boxes red blue green yellow circle circles square squares triangle "
    "triangles shape shapes count image picture shows there has have with left right top bottom side "
    "sides length area perimeter angle angles degrees right hypotenuse leg legs cm meters units point "
    "line lines x y z let us compute simplify final result price cost buy sells bought gives takes more "
    "fewer times twice half third quarter minutes hours days week speed distance train car walks runs "
    "question options choose correct option which following true false yes no below above grid player "
    "box target wall move up down push solution problem given we know since thus hence"
).split()


def _corpus(seed: int, lines: int = 6000) -> list[str]:
    """A deterministic text corpus that covers what lmmr1 prompts and completions contain."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        a, b, c = rng.randint(0, 999), rng.randint(0, 99), rng.randint(1, 9)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14)))
        kind = i % 6
        if kind == 0:
            out.append(f"What is {a} + {b} * {c}? {words}.")
        elif kind == 1:
            out.append(f"<think>{words} {a} - {b} = {a - b}</think><answer>{a - b}</answer>")
        elif kind == 2:
            out.append(f"$\\frac{{{a}}}{{{c}}}$ and $\\sqrt{{{b}}}$ give \\boxed{{{a * c}}}. {words}")
        elif kind == 3:
            out.append(f"(A) {a} (B) {b} (C) {c} (D) {a + b}. The answer is ({'ABCD'[i % 4]}). {words}")
        elif kind == 4:
            out.append(f"How many {rng.choice(_WORDS)} are in the image? There are {c}. {words.capitalize()}!")
        else:
            out.append(f"{words}: x^{c} + {b}x = {a}, \\pi r^2, \\angle ABC = {b}^\\circ; [{a}, {b}, {c}]")
    return out


def build_tokenizer(vocab_size: int, seed: int):
    """Train a Qwen-style byte-level BPE tokenizer; the Qwen special tokens sit after the BPE vocab."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN_SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    tok.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    hf.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return hf


def _pad_vocab(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def make_tiny(
    out_dir: str | Path,
    *,
    size: str = "tiny",
    text_only: bool = False,
    seed: int = 0,
    arch: str = "qwen2_5_vl",
) -> Path:
    """Write a complete HF checkpoint directory (tokenizer, processor config, config, weights)."""
    import torch
    import transformers

    if size not in SIZES:
        raise LmmR1Error(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if arch not in ARCHS:
        raise LmmR1Error(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    p = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(p.vocab, seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab_size = _pad_vocab(len(tokenizer))
    text_kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        intermediate_size=p.intermediate,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )

    torch.manual_seed(seed)
    if text_only:
        config = transformers.Qwen2Config(**text_kwargs, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        model = transformers.Qwen2ForCausalLM(config)
    else:
        vision = dict(
            depth=p.vision_depth,
            hidden_size=p.vision_hidden,
            intermediate_size=p.vision_intermediate,
            num_heads=p.vision_heads,
            in_channels=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=p.hidden,
        )
        rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(p.mrope_section)}
        if arch == "qwen2_5_vl":
            vision.update(window_size=112, fullatt_block_indexes=[p.vision_depth - 1], tokens_per_second=2)
            cfg_cls, model_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
        else:
            vision = {
                "depth": p.vision_depth, "embed_dim": p.vision_hidden, "hidden_size": p.hidden,
                "mlp_ratio": p.vision_intermediate // p.vision_hidden, "num_heads": p.vision_heads,
                "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            }
            cfg_cls, model_cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
        tie = text_kwargs.pop("tie_word_embeddings")
        config = cfg_cls(
            text_config={**text_kwargs, "rope_parameters": rope},
            vision_config=vision,
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=tie,
        )
        model = model_cls(config)
        image_processor = transformers.Qwen2VLImageProcessorPil(
            min_pixels=p.min_pixels, max_pixels=p.max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
        )
        image_processor.save_pretrained(out)

    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = sum(t.numel() for t in model.parameters())
    (out / "lmmr1_tiny.json").write_text(
        json.dumps({"size": size, "text_only": text_only, "seed": seed, "arch": "qwen2" if text_only else arch,
                    "parameters": n_params}, indent=2)
    )
    return out
