"""`lmmr1 make-tiny`: real HF checkpoints, built offline, loadable by transformers' Auto classes."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from lmmr1.models.chat_template import QWEN_SPECIAL_TOKENS


def test_tiny_vlm_loads_with_transformers_auto_classes(tiny_vlm):
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm)
    tok = AutoTokenizer.from_pretrained(tiny_vlm)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    cfg = model.config
    assert tok.convert_tokens_to_ids("<|image_pad|>") == cfg.image_token_id
    assert tok.convert_tokens_to_ids("<|video_pad|>") == cfg.video_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == cfg.vision_start_token_id
    assert tok.convert_tokens_to_ids("<|vision_end|>") == cfg.vision_end_token_id
    # every Qwen special token is a single token, and M-RoPE sections fill half a head
    for t in QWEN_SPECIAL_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    text = cfg.text_config
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n_params < 1.5e6
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False, add_generation_prompt=True,
    )
    assert rendered.endswith("<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")
    assert (tiny_vlm / "preprocessor_config.json").exists()


def test_tiny_text_only_loads_as_causal_lm(tiny_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert not (tiny_lm / "preprocessor_config.json").exists()


def test_make_tiny_is_deterministic_for_a_seed(tmp_path):
    from lmmr1.models import make_tiny

    a = load_file(make_tiny(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(make_tiny(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(make_tiny(tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_small_size_has_realistic_proportions(tmp_path):
    from lmmr1.models import make_tiny

    out = make_tiny(tmp_path / "small", size="small")
    cfg = json.loads((out / "config.json").read_text())
    info = json.loads((out / "lmmr1_tiny.json").read_text())
    assert 20e6 <= info["parameters"] <= 50e6
    text = cfg["text_config"]
    assert text["num_attention_heads"] // text["num_key_value_heads"] == 4  # GQA as in Qwen2.5-VL-3B
    assert text["hidden_size"] // text["num_attention_heads"] == 64


def test_cli_make_tiny_text_only(tmp_path):
    out = tmp_path / "t2"
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "make-tiny", str(out), "--text-only"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "qwen2" in res.stderr and str(out) in res.stderr
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"
