"""Weighted composition of reward components, with per-component values kept for logging.

LMM-R1's default is accuracy (weight 1.0) + format (weight 0.5).  A row total is the weighted
sum of the components that gave a number; a component that returns ``None`` has no opinion on
that row; a :class:`RowError` from any component makes the whole row an error (total ``None``),
so an unscorable row is reported, never trained on as if it had scored.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from lmmr1.rewards import builtin  # noqa: F401  (registers the built-in rewards)
from lmmr1.rewards.base import REGISTRY, RewardConfigError, RowError, Sample
from lmmr1.rewards.custom import CustomReward
from lmmr1.rewards.remote import RemoteReward


@dataclass
class RewardSpec:
    """One component: a registered ``name``; or ``path`` + ``name`` (function); or ``url``."""

    name: str | None = None
    weight: float | None = None  # None: the registry default (format 0.5, others 1.0)
    path: str | None = None
    url: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: Any) -> RewardSpec:
        if isinstance(obj, RewardSpec):
            return obj
        if isinstance(obj, str):
            return cls(name=obj)
        if not isinstance(obj, dict):
            raise RewardConfigError(f"a reward spec must be a name or a mapping, got {obj!r}")
        valid = {f.name for f in fields(cls)}
        unknown = set(obj) - valid
        if unknown:
            raise RewardConfigError(f"unknown reward spec key(s) {sorted(unknown)}; valid keys: {sorted(valid)}")
        return cls(**obj)

    def build(self):
        if self.url:
            return RemoteReward(self.url, name=self.name or "remote", **self.kwargs)
        if self.path:
            if not self.name:
                raise RewardConfigError(f"custom reward {self.path}: give the function with 'name'")
            return CustomReward(self.path, self.name, **self.kwargs)
        if self.name not in REGISTRY:
            close = difflib.get_close_matches(str(self.name), REGISTRY, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RewardConfigError(f"unknown reward {self.name!r}{hint} (available: {', '.join(sorted(REGISTRY))})")
        try:
            return REGISTRY[self.name].factory(**self.kwargs)
        except TypeError as e:
            raise RewardConfigError(f"reward {self.name!r}: bad options {self.kwargs}: {e}") from e

    def default_weight(self) -> float:
        if self.weight is not None:
            return float(self.weight)
        return REGISTRY[self.name].default_weight if self.name in REGISTRY and not self.path else 1.0


@dataclass
class RewardResult:
    total: list[float | None]  # None only for error rows
    components: dict[str, list[float | None]]
    errors: list[str | None]

    @property
    def num_errors(self) -> int:
        return sum(e is not None for e in self.errors)


class CompositeReward:
    def __init__(self, specs: Sequence[Any]):
        if not specs:
            raise RewardConfigError("no reward given; e.g. [accuracy, format]")
        self.parts: list[tuple[str, float, Any]] = []
        for raw in specs:
            spec = RewardSpec.parse(raw)
            reward = spec.build()
            name = getattr(reward, "name", None) or spec.name
            if any(name == n for n, _, _ in self.parts):
                raise RewardConfigError(f"reward {name!r} is listed twice")
            self.parts.append((name, spec.default_weight(), reward))

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self.parts]

    @property
    def weights(self) -> dict[str, float]:
        return {n: w for n, w, _ in self.parts}

    def __call__(self, samples: Sequence[Sample]) -> RewardResult:
        n = len(samples)
        components: dict[str, list[float | None]] = {}
        errors: list[str | None] = [None] * n
        totals = [0.0] * n
        for name, weight, reward in self.parts:
            verdicts = reward(samples)
            if len(verdicts) != n:
                raise RewardConfigError(f"reward {name!r} returned {len(verdicts)} values for {n} samples")
            col: list[float | None] = []
            for i, v in enumerate(verdicts):
                if isinstance(v, RowError):
                    errors[i] = errors[i] or f"{name}: {v.message}"
                    col.append(None)
                else:
                    col.append(v)
                    if v is not None:
                        totals[i] += weight * float(v)
            components[name] = col
        total = [None if errors[i] else totals[i] for i in range(n)]
        return RewardResult(total=total, components=components, errors=errors)

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, _, reward in self.parts:
            for k, v in (reward.stats() if hasattr(reward, "stats") else {}).items():
                out[f"{name}/{k}"] = v
        return out

    def close(self) -> None:
        for _, _, reward in self.parts:
            if hasattr(reward, "close"):
                reward.close()


def parse_cli_rewards(names: str, weights: str | None) -> list[RewardSpec]:
    """``format,accuracy`` + ``0.5,1.0`` -> specs (weights in the same order)."""
    parts = [n.strip() for n in names.split(",") if n.strip()]
    specs = [RewardSpec(name=n) for n in parts]
    if weights:
        ws = [w.strip() for w in weights.split(",")]
        if len(ws) != len(parts):
            raise RewardConfigError(f"--weights has {len(ws)} values for {len(parts)} rewards ({', '.join(parts)})")
        try:
            for s, w in zip(specs, ws, strict=True):
                s.weight = float(w)
        except ValueError as e:
            raise RewardConfigError(f"--weights must be numbers, got {weights!r}") from e
    return specs
