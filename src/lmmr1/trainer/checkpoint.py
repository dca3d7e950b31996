"""Checkpoints: HF-format weights for users + the full training state for exact resumption.

Layout: ``output_dir/checkpoints/step_000004/`` holds ``model/`` (safetensors + processor
files, loadable by transformers), ``trainer_state.pt`` (optimizer, scheduler, RNG states,
data position, KL controller, counters, LoRA adapter and critic weights when used) and a
``COMPLETE`` marker written last, so a checkpoint interrupted mid-write is never resumed from.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.is_dir() and (p / "COMPLETE").exists())
    return done[-1] if done else None


def save_checkpoint(path: Path, save_model, state: dict[str, Any], keep: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(tmp / "model")
    torch.save(state, tmp / "trainer_state.pt")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    (path / "COMPLETE").write_text("ok\n")
    if keep > 0:
        done = sorted(p for p in path.parent.iterdir() if p.is_dir() and (p / "COMPLETE").exists())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
