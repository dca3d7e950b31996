"""Precision as one explicit setting: the parameter dtype and the compute dtype.

Before this module "auto" meant fp32 weights + bf16 autocast in the trainer, bf16 weights in
``lmmr1 eval`` and fp32 on CPU in the pipeline's evaluation, and the trainer decided whether the
rollout's log-probs could stand in for the old policy's by looking at the *parameter* dtype (fp32
master weights) although the forward ran in bf16 (rollout and training log-probs then differ by
up to 8e-3, enough to push a third of the sequences outside GSPO's clip band before any update).
Now every component resolves the same two dtypes from the same two settings:

* ``param`` (``model.dtype``): what the weights are stored and updated in. ``auto`` = fp32, so
  Adam's small updates are not rounded away (see ``trainer.update_probe``); ``bf16`` is the pure
  low-precision mode (half the memory, updates below half a bf16 step of a weight are lost).
* ``compute`` (``model.compute_dtype``): what the matmuls run in. ``auto`` = bf16 on a CUDA device
  that supports it when the weights are fp32 (autocast), otherwise the parameter dtype. ``bf16``
  with fp32 weights on CPU is the CPU stand-in for the GPU path (tests use it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lmmr1.errors import LmmR1Error

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class PrecisionError(LmmR1Error):
    pass


@dataclass(frozen=True)
class Precision:
    param: torch.dtype
    compute: torch.dtype
    device_type: str

    @property
    def autocast_enabled(self) -> bool:
        return self.compute != self.param

    def autocast(self):
        """The context every forward (rollout, log-probs, values, evaluation) runs in."""
        if self.autocast_enabled:
            return torch.autocast(device_type=self.device_type, dtype=self.compute)
        return contextlib.nullcontext()

    @property
    def exact(self) -> bool:
        """Whether forwards run in fp32: only then do the sampler's log-probs equal a training
        forward's closely enough to be used as the old policy's (``train.old_logprobs: auto``)."""
        return self.compute == torch.float32

    def describe(self) -> str:
        p, c = SHORT.get(self.param, str(self.param)), SHORT.get(self.compute, str(self.compute))
        return f"{p} weights, {c} compute" + (" (autocast)" if self.autocast_enabled else "")


def _dtype(key: str, value: str | torch.dtype) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise PrecisionError(f"{key}={value!r} is not valid (choose from auto, {', '.join(DTYPES)})")
    return DTYPES[value]


def resolve_precision(dtype: str | torch.dtype = "auto", compute_dtype: str | torch.dtype = "auto",
                      device: str | torch.device = "cpu") -> Precision:
    """The one place ``auto`` is given a meaning (loader, trainer and evaluation all call this)."""
    dev = torch.device(device)
    param = torch.float32 if dtype == "auto" else _dtype("model.dtype", dtype)
    if compute_dtype == "auto":
        bf16_ok = dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        compute = torch.bfloat16 if (param == torch.float32 and bf16_ok) else param
    else:
        compute = _dtype("model.compute_dtype", compute_dtype)
    if compute != param:
        if param != torch.float32:
            raise PrecisionError(f"model.compute_dtype={SHORT[compute]} with model.dtype={SHORT[param]}: autocast "
                                 "only lowers precision from fp32 weights; set model.dtype: auto (fp32) or "
                                 f"model.compute_dtype: {SHORT[param]}")
        if compute == torch.float16:
            raise PrecisionError("model.compute_dtype=fp16 with fp32 weights needs loss scaling, which lmmr1 does "
                                 "not do; use bf16")
    return Precision(param=param, compute=compute, device_type=dev.type)


def resolve_device(spec: str = "auto") -> torch.device:
    """``model.device``: ``auto`` = the GPU when there is one (training and evaluation alike)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise PrecisionError(f"device {spec!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrecisionError(f"device {spec!r}: torch sees no CUDA GPU here (use auto or cpu)")
    return dev


def needs_recompute(old_logprobs: str, precision: Precision) -> bool:
    """``train.old_logprobs``: recompute the behaviour log-probs with a training forward unless the
    rollout's are exact (``rollout``), always (``recompute``), or whenever compute is not fp32 (``auto``)."""
    return old_logprobs == "recompute" or (old_logprobs == "auto" and not precision.exact)
