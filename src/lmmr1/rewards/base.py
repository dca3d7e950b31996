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
    """What a reward sees of one completion.

    The last four attributes exist so that reward functions written for other frameworks get
    what they were written against: LMM-R1/OpenRLHF functions parse the chat-templated prompt
    (``chat_prompt``), TRL functions receive chat messages when the prompt is a chat
    (``messages``) and every dataset column under its own name (``columns``, e.g. ``solution``);
    ``source`` lets an error name the data row ("data.jsonl:12").
    """

    completion: str  # the generated text (special tokens removed)
    answer: Any = None  # the gold answer (string, number, list for boxes, ...)
    prompt: str = ""  # the user turns as plain text
    fields: dict[str, Any] = field(default_factory=dict)  # other row fields: choices, datasource, ...
    completion_tokens: int | None = None  # length in tokens (overlong penalty)
    chat_prompt: str = ""  # the prompt rendered with the chat template ("" -> ``prompt`` is used)
    messages: list[dict[str, Any]] | None = None  # the prompt as chat messages (None: not a chat)
    columns: dict[str, Any] = field(default_factory=dict)  # columns not in fields, by own name
    source: str = ""  # where the row came from, "file:line" ("" when unknown)


def prompt_parts(value: Any) -> tuple[str, list[dict[str, Any]] | None]:
    """A prompt given as text or as chat messages -> (its user text, the messages or None)."""
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        parts = []
        for m in value:
            c = m.get("content")
            if m.get("role") == "user" and isinstance(c, str):
                parts.append(c)
            elif m.get("role") == "user" and isinstance(c, list):
                parts.extend(str(i.get("text", "")) for i in c if isinstance(i, dict) and i.get("type") == "text")
        return "\n".join(p for p in parts if p), value
    return ("" if value is None else str(value)), None


def describe_row(samples: Sequence[Sample], i: int) -> str:
    """``row 3 (data.jsonl:7)``: the batch index and, when known, the data row."""
    src = samples[i].source if 0 <= i < len(samples) else ""
    return f"row {i} ({src})" if src else f"row {i} of the batch"


def describe_batch(samples: Sequence[Sample]) -> str:
    first = samples[0].source if samples else ""
    return f"a batch of {len(samples)} rows" + (f" (first: {first})" if first else "")


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


class RewardError(LmmR1Error):
    """A reward failed while scoring (raised, hung, returned NaN or a non-number): never trained on."""


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
