"""The one model loader: VLMs, text-only LMs, options, and one-line errors for bad directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from lmmr1.errors import ModelLoadError
from lmmr1.models import LoraOptions, load_model
from lmmr1.models.sequence import completion_logprobs
from tests.conftest import user


def _copy(src, dst, **config_updates):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config_updates)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_loader_returns_model_and_processor(loaded_vlm, tiny_lm):
    assert loaded_vlm.is_multimodal and loaded_vlm.uses_mrope
    assert loaded_vlm.processor.is_multimodal
    assert loaded_vlm.processor.image_token_id == loaded_vlm.image_token_id
    assert loaded_vlm.image_token_id in loaded_vlm.suppress_ids
    lm = load_model(tiny_lm)
    assert not lm.is_multimodal and not lm.processor.is_multimodal
    assert lm.dtype == torch.float32


def test_loader_supports_qwen2_vl(tmp_path, images):
    from lmmr1.models import make_tiny

    lm = load_model(make_tiny(tmp_path / "q2vl", arch="qwen2_vl"))
    assert lm.model_type == "qwen2_vl"
    batch = lm.processor([user("count", images[0]), user("text only")])
    feats = lm.encode_images(batch)
    assert feats[0].shape[0] == int((batch.input_ids[0] == lm.image_token_id).sum()) and feats[1] is None
    from lmmr1.rollout import SamplingParams, sample

    ro = sample(lm, batch, SamplingParams(n=2, max_new_tokens=8, seed=0))
    with torch.no_grad():
        lp, _ = completion_logprobs(lm, ro.prompts, ro.prompt_index, ro.completion_ids, ro.completion_mask)
    assert (lp - ro.logprobs)[ro.completion_mask > 0].abs().max() < 1e-5


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist"),
        ("no_config", "has no config.json"),
        ("unsupported", "unsupported architecture 'bert'"),
        ("token_mismatch", "tokenizer maps <|image_pad|> to id"),
        ("no_weights", "no weights"),
    ],
)
def test_bad_model_directories_give_one_line_errors(tmp_path, tiny_vlm, case, expected):
    if case == "missing":
        path = tmp_path / "nope"
    elif case == "no_config":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "unsupported":
        path = _copy(tiny_vlm, tmp_path / "bert", model_type="bert")
    elif case == "token_mismatch":
        path = _copy(tiny_vlm, tmp_path / "mismatch", image_token_id=5)
    else:
        path = _copy(tiny_vlm, tmp_path / "noweights")
        (path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg
    if case == "unsupported":
        assert "qwen2_5_vl" in msg and "qwen2" in msg  # lists what is supported


def test_cli_prints_a_one_line_error_and_exits_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "generate", str(tmp_path / "none"), "-p", "hi"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "does not exist" in lines[0]
    assert "Traceback" not in res.stderr


def test_freeze_vision_and_gradient_checkpointing(tiny_vlm, images):
    ref = load_model(tiny_vlm)
    lm = load_model(tiny_vlm, freeze_vision=True, gradient_checkpointing=True)
    assert not any(p.requires_grad for p in lm.base.model.visual.parameters())
    assert all(p.requires_grad for p in lm.language_model.parameters())
    batch = lm.processor([user("a", images[0]), user("b c")])
    comp = torch.tensor([[5, 6, 7], [8, 9, 10]])
    mask = torch.ones(2, 3)
    grads = []
    for m in (ref, lm):
        m.model.train()
        lp, _ = completion_logprobs(m, batch, torch.tensor([0, 1]), comp, mask)
        lp.sum().backward()
        grads.append(m.language_model.layers[0].mlp.up_proj.weight.grad.clone())
    # checkpointing recomputes activations; gradients must be the same
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    assert lm.base.model.visual.patch_embed.proj.weight.grad is None


def test_lora_trains_adapters_only_and_saves_merged_checkpoint(tiny_vlm, tmp_path, images):
    pytest.importorskip("peft")
    lm = load_model(tiny_vlm, lora=LoraOptions(r=4, alpha=8))
    trainable = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)  # LoRA targets the language model only
    batch = lm.processor([user("a", images[0]), user("b")])
    comp, mask, idx = torch.tensor([[5, 6], [7, 8]]), torch.ones(2, 2), torch.tensor([0, 1])
    lp, _ = completion_logprobs(lm, batch, idx, comp, mask)
    (-lp.sum()).backward()
    with torch.no_grad():
        for p in lm.model.parameters():
            if p.requires_grad:
                assert p.grad is not None
                p.add_(torch.randn_like(p) * 0.05)  # move the adapters so the merge matters
        lp_lora, _ = completion_logprobs(lm, batch, idx, comp, mask)
    lm.save_pretrained(tmp_path / "merged")
    merged = load_model(tmp_path / "merged")
    with torch.no_grad():
        lp_merged, _ = completion_logprobs(merged, batch, idx, comp, mask)
    torch.testing.assert_close(lp_merged, lp_lora, rtol=1e-4, atol=1e-5)
