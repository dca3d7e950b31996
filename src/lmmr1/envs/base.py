"""The one environment protocol every agent task speaks, and the registry that builds one from a row.

Why one small protocol: the single-turn rewards (replay a whole answer), the multi-turn trainer
(one action per turn) and ``lmmr1 eval`` all drive environments the same way, so each env is
written once and used by all three.  Observations carry text *and* images because LMM-R1 trains
the same task as a text grid and as a rendered frame.  Everything is pure numpy/PIL and
deterministic by seed, so a data row's ``env`` field plus a seed is the whole episode.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from lmmr1.errors import LmmR1Error


class EnvError(LmmR1Error):
    """An env spec or level cannot be used (unknown env name, malformed XSB, bad option)."""


@dataclass
class Observation:
    """What the agent sees: a text rendering (always) and zero or more images (the frame)."""

    text: str
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class StepResult:
    """One transition.  ``info`` always has ``success`` (task solved), ``valid`` (the action text
    parsed as an action of this env) and ``anchor`` (a hashable key of the state *before* the step,
    so GiGPO can group steps taken from identical states)."""

    observation: Observation
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return bool(self.info.get("success", False))

    @property
    def anchor(self) -> Hashable:
        return self.info.get("anchor")


@runtime_checkable
class Env(Protocol):
    """``reset(seed)`` starts an episode (same seed + same spec -> same episode);
    ``step(action_text)`` applies one action written as text (e.g. ``"Left"``)."""

    def reset(self, seed: int) -> Observation: ...

    def step(self, action_text: str) -> StepResult: ...


EnvFactory = Callable[[dict[str, Any]], Env]


def _sokoban(spec: dict[str, Any]) -> Env:
    from lmmr1.envs.sokoban import SokobanEnv

    return SokobanEnv.from_spec(spec)


def _football(spec: dict[str, Any]) -> Env:
    from lmmr1.envs.football import FootballEnv

    return FootballEnv.from_spec(spec)


# name -> factory; imports are lazy so that importing the protocol costs nothing.
ENVS: dict[str, EnvFactory] = {"sokoban": _sokoban, "football": _football}


def make_env(spec: dict[str, Any], where: str = "env") -> Env:
    """The env a data row's ``env`` field describes, e.g. ``{"name": "sokoban", "level": [...]}``.

    ``where`` names the row (``data.jsonl:7``) in the one-line error for a bad spec.
    """
    if not isinstance(spec, dict):
        raise EnvError(f"{where}: the env field must be an object like {{\"name\": \"sokoban\", ...}}, got {type(spec).__name__}")
    name = spec.get("name")
    if name not in ENVS:
        raise EnvError(f"{where}: unknown env name {name!r}; known: {', '.join(sorted(ENVS))}")
    try:
        return ENVS[name](spec)
    except EnvError as e:
        msg = str(e)
        raise EnvError(msg if msg.startswith(where) else f"{where}: {msg}") from None
