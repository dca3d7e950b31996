"""Shared fixtures: tiny real checkpoints built once per test session (offline, seeded)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    from lmmr1.models import make_tiny

    return make_tiny(tmp_path_factory.mktemp("ckpt") / "tiny_vlm", seed=0)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    from lmmr1.models import make_tiny

    return make_tiny(tmp_path_factory.mktemp("ckpt") / "tiny_lm", text_only=True, seed=0)


@pytest.fixture(scope="session")
def loaded_vlm(tiny_vlm):
    from lmmr1.models import load_model

    return load_model(tiny_vlm)


@pytest.fixture
def images():
    """Three real PIL images of different sizes (different image-token counts)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(120, 80, 3, generator=g) * 255).byte().numpy()
    return [Image.new("RGB", (90, 60), (255, 0, 0)), Image.fromarray(noise), Image.new("RGB", (200, 200), (0, 90, 200))]


def user(text, *imgs):
    content = [{"type": "image", "image": im} for im in imgs] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def short_context_copy(tiny_vlm, out_dir, context: int):
    """A copy of the tiny VLM whose config.json says its context is ``context`` tokens."""
    import json
    import shutil

    shutil.copytree(tiny_vlm, out_dir)
    cfg = json.loads((out_dir / "config.json").read_text())
    for section in (cfg, cfg.get("text_config") or {}):
        if "max_position_embeddings" in section:
            section["max_position_embeddings"] = context
    (out_dir / "config.json").write_text(json.dumps(cfg))
    return out_dir
