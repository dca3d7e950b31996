"""How many weights an optimizer step actually changed, measured on a fixed sample of elements.

With pure bf16 weights (``model.dtype: bf16``) an Adam update of size ~lr changes a weight only
if it exceeds half a bf16 step of that weight (2^-8 of its magnitude): at lr 1e-6 a weight of
0.02 needs 7.8e-5, so nearly every update rounds away and training silently does nothing (a
review measured 98% of weights unchanged after 100 steps).  Snapshotting every weight would
double the memory, so a fixed random sample (at most ``max_elements``, spread over the tensors
in proportion to their size) is compared before and after the step; only elements with a
non-zero gradient count, since the others do not move in any precision.
"""

from __future__ import annotations

import torch

ROUNDING_WARN_FRACTION = 0.5  # warn when more than half of the updated sample did not change


class UpdateProbe:
    def __init__(self, params: list[torch.nn.Parameter], max_elements: int = 1 << 18, seed: int = 0):
        self.params = [p for p in params if p.numel() > 0]
        total = sum(p.numel() for p in self.params)
        gen = torch.Generator().manual_seed(seed)
        self.index: list[torch.Tensor] = []
        for p in self.params:
            k = min(p.numel(), max(1, round(p.numel() * max_elements / max(total, 1))))
            self.index.append(torch.randint(0, p.numel(), (k,), generator=gen).to(p.device))
        self._before: list[torch.Tensor] = []
        self._moving: list[torch.Tensor] = []

    @torch.no_grad()
    def before_step(self) -> None:
        """Call after backward, before ``optimizer.step()``."""
        self._before, self._moving = [], []
        for p, idx in zip(self.params, self.index, strict=True):
            self._before.append(p.detach().reshape(-1)[idx].clone())
            g = p.grad
            self._moving.append(g.reshape(-1)[idx] != 0 if g is not None else torch.zeros_like(idx, dtype=torch.bool))

    @torch.no_grad()
    def unchanged_fraction(self) -> float | None:
        """After ``optimizer.step()``: the fraction of sampled weights with a gradient that kept their value
        (None when no sampled weight had a gradient)."""
        same = moving = 0
        for p, idx, before, mov in zip(self.params, self.index, self._before, self._moving, strict=True):
            after = p.detach().reshape(-1)[idx]
            moving += int(mov.sum())
            same += int(((after == before) & mov).sum())
        return same / moving if moving else None


def rounding_warning(fraction: float, lr: float, dtype_name: str) -> str:
    return (f"model.dtype {dtype_name}: {fraction:.0%} of the sampled weights with a gradient did not change in this "
            f"update: at lr {lr:g} Adam's steps are smaller than half a {dtype_name} step of those weights and round "
            f"away, so training barely moves the model. Use model.dtype: auto (fp32 master weights; compute stays "
            f"{dtype_name} with model.compute_dtype: {dtype_name}), or a larger optim.lr")
