"""Checkpoints: HF-format weights for users + the full training state for exact resumption.

Layout: ``output_dir/checkpoints/step_000004/`` holds ``model/`` (safetensors + processor
files, loadable by transformers), the training state (optimizer, scheduler, RNG states, data
position, KL controller, counters, LoRA adapter and critic weights when used) as
``trainer_state.safetensors`` (every tensor) + ``trainer_state.json`` (everything else), and a
``COMPLETE`` marker, so a checkpoint interrupted mid-write is never resumed from.

Why no pickle: ``torch.load(weights_only=False)`` runs whatever code the file asks for, so a
checkpoint someone hands you (or a copied output_dir) could run arbitrary code on resume.
safetensors and JSON are data only.  Checkpoints written by older lmmr1 versions
(``trainer_state.pt``) are refused with a one-line error; they are never unpickled.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmmr1.errors import LmmR1Error

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_PICKLE = "trainer_state.pt"
FORMAT = "lmmr1.trainer_state"
VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
# JSON objects with exactly one of these keys are encoded values, not plain dicts.
_MARKERS = ("__tensor__", "__tuple__", "__dict__", "__ndarray__")


class CheckpointError(LmmR1Error):
    """A checkpoint on disk cannot be used as-is (corrupt, incomplete, or an unsafe old format)."""


# ----------------------------------------------------------------------------- flatten / unflatten
def flatten_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, numpy arrays, scalars) into a
    JSON-able tree and a flat ``{key: tensor}`` dict for safetensors.

    Tensors are replaced by ``{"__tensor__": key}``; tuples, dicts with non-string keys
    (optimizer states are keyed by int) and numpy arrays get their own one-key wrappers, so
    :func:`unflatten_state` rebuilds the exact same types and values.
    """
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()

    def put(path: str, t: torch.Tensor) -> dict:
        key, n = path or "tensor", 1
        while key in tensors:
            key, n = f"{path}#{n}", n + 1
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        # safetensors refuses tensors that share memory (tied weights) or are not contiguous: copy those
        if not t.is_contiguous() or (ptr is not None and ptr in storages) or t.numel() != t.untyped_storage().nbytes() // max(1, t.element_size()):
            t = t.contiguous().clone()
            ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None:
            storages.add(ptr)
        tensors[key] = t
        return {"__tensor__": key}

    def enc(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            return put(path, x)
        if isinstance(x, np.ndarray):
            return {"__ndarray__": {"dtype": str(x.dtype), "shape": list(x.shape), "data": x.ravel().tolist()}}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}.{i}") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and not (len(x) == 1 and next(iter(x)) in _MARKERS):
                return {k: enc(v, f"{path}.{k}" if path else k) for k, v in x.items()}
            return {"__dict__": [[enc(k, f"{path}.key"), enc(v, f"{path}.{k}" if path else str(k))]
                                 for k, v in x.items()]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} at {path or 'the top'} of the trainer state")

    return enc(state, ""), tensors


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor], where: str = "trainer state") -> Any:
    """Inverse of :func:`flatten_state`; a missing tensor is a :class:`CheckpointError` naming it."""

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if len(x) == 1:
            (k, v), = x.items()
            if k == "__tensor__":
                if v not in tensors:
                    raise CheckpointError(f"{where}: tensor '{v}' is missing; the checkpoint is incomplete or "
                                          "corrupt (delete it to resume from an earlier one)")
                return tensors[v]
            if k == "__tuple__":
                return tuple(dec(i) for i in v)
            if k == "__dict__":
                return {dec(a): dec(b) for a, b in v}
            if k == "__ndarray__":
                return np.array(v["data"], dtype=np.dtype(v["dtype"])).reshape(v["shape"])
        return {k: dec(v) for k, v in x.items()}

    return dec(tree)


# ----------------------------------------------------------------------------- RNG
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


# ----------------------------------------------------------------------------- directories
def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step_{step:06d}"


def checkpoint_step(path: Path) -> int | None:
    m = _STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """``step_NNNNNN`` directories with a COMPLETE marker, oldest first (``*.tmp`` never counts)."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / "COMPLETE").exists()]
    return sorted(done, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(output_dir: Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def save_checkpoint(path: Path, save_model, state: dict[str, Any], keep: int) -> None:
    """Write into ``step_N.tmp`` (marker included), then rename: the step directory appears whole."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(tmp / "model")
    tree, tensors = flatten_state(state)
    save_file(tensors, str(tmp / STATE_TENSORS), metadata={"format": FORMAT})
    (tmp / STATE_JSON).write_text(json.dumps({"format": FORMAT, "version": VERSION, "state": tree}))
    (tmp / "COMPLETE").write_text("ok\n")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    if keep > 0:
        for old in complete_checkpoints(path.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def load_state(path: Path) -> dict[str, Any]:
    """The training state of checkpoint ``path``; never unpickles anything."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    jfile, tfile = path / STATE_JSON, path / STATE_TENSORS
    if not jfile.exists() and (path / LEGACY_PICKLE).exists():
        raise CheckpointError(
            f"{path / LEGACY_PICKLE} is a pickled trainer state from an older lmmr1; it is not loaded because "
            f"unpickling can run arbitrary code. Start a new run from its weights instead: "
            f"model.path={path / 'model'} train.resume=none (optimizer/data position are not carried over)")
    for f in (jfile, tfile):
        if not f.exists():
            raise CheckpointError(f"{f} is missing although {path.name} is marked COMPLETE; the checkpoint is "
                                  "damaged: delete it to resume from an earlier one, or use train.resume=none")
    try:
        doc = json.loads(jfile.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{jfile} is corrupt ({str(e).splitlines()[0]}); delete {path} to resume from an "
                              "earlier checkpoint, or use train.resume=none") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "state" not in doc:
        raise CheckpointError(f"{jfile} is not an lmmr1 trainer state (no '{FORMAT}' header); delete {path} "
                              "to resume from an earlier checkpoint")
    if int(doc.get("version", 0)) > VERSION:
        raise CheckpointError(f"{jfile} was written by a newer lmmr1 (state version {doc['version']} > {VERSION}); "
                              "upgrade lmmr1 to resume it")
    try:
        tensors = load_file(str(tfile), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{tfile} is corrupt or truncated ({str(e).splitlines()[0]}); delete {path} to "
                              "resume from an earlier checkpoint, or use train.resume=none") from None
    state = unflatten_state(doc["state"], tensors, where=str(tfile))
    if not isinstance(state, dict):
        raise CheckpointError(f"{jfile}: the trainer state must be a mapping; delete {path}")
    return state
