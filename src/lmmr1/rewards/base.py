"""The one reward signature, the registry, and the per-row error verdict.

A reward is a callable ``reward(samples) -> list[float | None | RowError]``: one entry per
sample, ``None`` meaning "no opinion" (the component is left out of that row's total), and a
:class:`RowError` meaning "this row cannot be scored" (e.g. an empty gold answer), which is
never turned into a score.  Rewards are batch functions so that expensive checks
(math-verify in worker processes) run in parallel and deduplicated across a GRPO group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lmmr1.errors import LmmR1Error


@dataclass
class Sample:
    """What a reward sees of one completion."""

    completion: str  # the generated text (special tokens removed)
    answer: Any = None  # the gold answer (string, number, list for boxes, ...)
    prompt: str = ""  # the prompt as text (for custom/remote rewards)
    fields: dict[str, Any] = field(default_factory=dict)  # other row fields: choices, datasource, ...
    completion_tokens: int | None = None  # length in tokens (overlong penalty)


@dataclass(frozen=True)
class RowError:
    """A verdict that a row cannot be scored; carries the reason (shown to the user)."""

    message: str


Verdict = float | None | RowError


class Reward(Protocol):
    name: str

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]: ...


class RewardConfigError(LmmR1Error):
    """A reward spec in the config/CLI is wrong (unknown name, bad file, bad signature)."""


@dataclass(frozen=True)
class RegisteredReward:
    factory: Callable[..., Reward]
    default_weight: float
    doc: str


REGISTRY: dict[str, RegisteredReward] = {}


def register(name: str, default_weight: float = 1.0):
    """Class/function decorator: make a reward available by name in configs and the CLI."""

    def deco(factory):
        REGISTRY[name] = RegisteredReward(factory, default_weight, (factory.__doc__ or "").strip().split("\n")[0])
        return factory

    return deco


def is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, (list, tuple)) and len(value) == 0
    )
