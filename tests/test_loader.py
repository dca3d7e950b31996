"""The one model loader: VLMs, text-only LMs, options, and one-line errors for bad directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

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


def test_freeze_vision_encoder_trains_only_the_merger(tiny_vlm, images):
    lm = load_model(tiny_vlm, freeze_vision="encoder")
    visual = lm.base.model.visual
    assert all(p.requires_grad for p in visual.merger.parameters())
    assert not any(p.requires_grad for n, p in visual.named_parameters() if not n.startswith("merger."))
    batch = lm.processor([user("a", images[0])])
    lm.model.train()
    lp, _ = completion_logprobs(lm, batch, torch.tensor([0]), torch.tensor([[5, 6, 7]]), torch.ones(1, 3))
    lp.sum().backward()
    # the answer's gradient reaches the projector through the picture's tokens, not the ViT
    assert visual.merger.mlp[0].weight.grad is not None and visual.merger.mlp[0].weight.grad.abs().sum() > 0
    assert visual.patch_embed.proj.weight.grad is None


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


def test_gradient_checkpointing_forward_backward_emits_no_future_warning(tiny_vlm, images):
    """Regression: transformers 5 deprecated ``is_gradient_checkpointing``; lmmr1 read it (and so
    printed a FutureWarning) on every training forward, and peft read it on every LoRA load."""
    pytest.importorskip("peft")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for lora in (None, LoraOptions(r=2)):
            lm = load_model(tiny_vlm, gradient_checkpointing=True, lora=lora)
            assert lm.activation_checkpointing
            lm.model.train()
            batch = lm.processor([user("a", images[0]), user("b c")])
            lp, _ = completion_logprobs(lm, batch, torch.tensor([0, 0, 1]), torch.tensor([[5, 6], [7, 8], [9, 10]]),
                                        torch.ones(3, 2))
            lp.sum().backward()
    future = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert future == []
    assert not load_model(tiny_vlm).activation_checkpointing


def _lora_leaf_names(lm):
    return {n.rsplit(".", 1)[1] for n, mod in lm.model.named_modules() if hasattr(mod, "lora_A") and "." in n}


def test_lora_target_modules_and_dropout_are_respected(tiny_vlm, tiny_lm):
    pytest.importorskip("peft")
    lm = load_model(tiny_vlm, lora=LoraOptions(r=2, dropout=0.1, target_modules=("q_proj", "down_proj")))
    assert _lora_leaf_names(lm) == {"q_proj", "down_proj"}
    assert not any("visual" in n for n, mod in lm.model.named_modules() if hasattr(mod, "lora_A"))
    assert lm.model.peft_config["default"].lora_dropout == 0.1
    q = lm.language_model.layers[0].self_attn.q_proj
    assert q.lora_dropout["default"].p == 0.1
    text = load_model(tiny_lm, lora=LoraOptions(r=2, target_modules=("v_proj",)))
    assert _lora_leaf_names(text) == {"v_proj"}
    assert load_model(tiny_lm, lora=LoraOptions(r=2)).model.peft_config["default"].lora_dropout == 0.0


def test_unknown_lora_target_module_is_one_line_naming_the_valid_modules(tiny_vlm):
    pytest.importorskip("peft")
    with pytest.raises(ModelLoadError) as e:
        load_model(tiny_vlm, lora=LoraOptions(r=2, target_modules=("q_proj", "qkv")))
    msg = str(e.value)
    assert "\n" not in msg and "'qkv' is not a linear layer of the language model" in msg
    assert "choose from down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in msg
    with pytest.raises(ModelLoadError, match="LoRA dropout must be in"):
        load_model(tiny_vlm, lora=LoraOptions(r=2, dropout=1.0))


def test_lora_adapter_only_save_loads_with_peft_and_gives_the_same_logits(tiny_vlm, tmp_path, images):
    peft = pytest.importorskip("peft")
    lm = load_model(tiny_vlm, lora=LoraOptions(r=4, alpha=8, target_modules=("q_proj", "v_proj", "up_proj")))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in lm.model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.2)  # lora_B starts at 0: move it so the adapter matters
    batch = lm.processor([user("a", images[0]), user("b")])
    comp, mask, idx = torch.tensor([[5, 6], [7, 8]]), torch.ones(2, 2), torch.tensor([0, 1])
    lm.model.eval()
    with torch.no_grad():
        lp_lora, _ = completion_logprobs(lm, batch, idx, comp, mask)
    lm.save_pretrained(tmp_path / "a", lora_save="adapter")
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
    assert "config.json" not in files and not any(f.startswith("model") for f in files)
    adapter_mb = (tmp_path / "a" / "adapter_model.safetensors").stat().st_size
    base = load_model(tiny_vlm)
    with torch.no_grad():
        lp_base, _ = completion_logprobs(base, batch, idx, comp, mask)
    assert (lp_base - lp_lora).abs().max() > 1e-3  # the adapter changes the model
    with warnings.catch_warnings():  # peft itself reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        base.model = peft.PeftModel.from_pretrained(base.model, tmp_path / "a").eval()
    with torch.no_grad():
        lp_loaded, _ = completion_logprobs(base, batch, idx, comp, mask)
    torch.testing.assert_close(lp_loaded, lp_lora, rtol=1e-5, atol=1e-6)
    # load_model takes the adapter folder too: its base model (from adapter_config.json), adapter merged
    from_adapter = load_model(tmp_path / "a")
    assert not hasattr(from_adapter.model, "peft_config") and from_adapter.path == tmp_path / "a"
    with torch.no_grad():
        lp_adapter_dir, _ = completion_logprobs(from_adapter, batch, idx, comp, mask)
    torch.testing.assert_close(lp_adapter_dir, lp_lora, rtol=1e-4, atol=1e-5)
    # both: merged checkpoint in the folder, the adapter beside it
    lm.save_pretrained(tmp_path / "b", lora_save="both")
    assert (tmp_path / "b" / "adapter" / "adapter_model.safetensors").stat().st_size == adapter_mb
    merged = load_model(tmp_path / "b")
    with torch.no_grad():
        lp_merged, _ = completion_logprobs(merged, batch, idx, comp, mask)
    torch.testing.assert_close(lp_merged, lp_lora, rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelLoadError, match="lora_save='adaptor' is not valid"):
        lm.save_pretrained(tmp_path / "c", lora_save="adaptor")


def test_cli_generate_images_use_the_training_decoder(tiny_vlm, tmp_path):
    """`generate --image` decodes like the data reader: a 16-bit grayscale PNG is scaled, not
    clipped to white, and a file that is not an image is one line naming it."""
    import numpy as np
    from PIL import Image

    from lmmr1.data.images import decode_image

    dark = tmp_path / "dark16.png"
    Image.fromarray(np.full((32, 32), 4096, dtype=np.uint16)).save(dark)
    assert decode_image(dark).getpixel((0, 0)) == (16, 16, 16)  # 4096 / 257 -> 15.9; PIL.convert gives 255
    ok = subprocess.run([sys.executable, "-m", "lmmr1.cli", "generate", str(tiny_vlm), "-p", "hi", "-i", str(dark),
                         "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "generate", str(tiny_vlm), "-p", "hi", "-i", str(bad)],
                         capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: --image {bad}: cannot decode image"), lines[0]
