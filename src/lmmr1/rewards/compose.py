"""Weighted composition of reward components, with per-component values kept for logging.

LMM-R1's default is accuracy (weight 1.0) + format (weight 0.5).  A row total is the weighted
sum of the components that gave a number; a component that returns ``None`` has no opinion on
that row; a :class:`RowError` from any component makes the whole row an error (total ``None``),
so an unscorable row is reported, never trained on as if it had scored.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from lmmr1.rewards import builtin  # noqa: F401  (registers the built-in rewards)
from lmmr1.rewards.base import REGISTRY, RewardConfigError, RewardError, RowError, Sample, describe_row
from lmmr1.rewards.custom import DEFAULT_TIMEOUT as CUSTOM_TIMEOUT
from lmmr1.rewards.custom import CustomReward
from lmmr1.rewards.remote import DEFAULT_TIMEOUT as REMOTE_TIMEOUT
from lmmr1.rewards.remote import RemoteReward


@dataclass
class RewardSpec:
    """One component: a registered ``name``; or ``path`` + ``name`` (function); or ``url``.

    ``kwargs`` go to the built-in reward's constructor, to a custom function on every call, or
    to the remote client (``retries``, ``backoff``).  ``timeout`` (seconds) bounds each call of a
    custom function (default 60; 0 = none, called inline) or each HTTP attempt of a remote one
    (default 30); built-in rules need none (they are linear-time; math-verify has its own).
    """

    name: str | None = None
    weight: float | None = None  # None: the registry default (format 0.5, others 1.0)
    path: str | None = None
    url: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None

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

    def _check_types(self) -> None:
        what = self.name or self.path or self.url
        if not isinstance(self.kwargs, dict):
            raise RewardConfigError(f"reward {what!r}: kwargs must be a mapping, got {self.kwargs!r}")
        for key in ("weight", "timeout"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise RewardConfigError(f"reward {what!r}: {key} must be a number, got {v!r}")
        if self.timeout is not None and self.timeout < 0:
            raise RewardConfigError(f"reward {what!r}: timeout must be >= 0 seconds (0 = none), got {self.timeout}")

    def build(self):
        self._check_types()
        if self.url:
            kw = dict(self.kwargs)
            kw.setdefault("timeout", REMOTE_TIMEOUT if self.timeout is None else self.timeout)
            try:
                return RemoteReward(self.url, name=self.name or "remote", **kw)
            except TypeError as e:
                raise RewardConfigError(f"reward {self.url}: bad options {self.kwargs} ({e}); "
                                        "valid: retries, backoff") from None
        if self.path:
            if not self.name:
                raise RewardConfigError(f"custom reward {self.path}: give the function with 'name'")
            return CustomReward(self.path, self.name, timeout=CUSTOM_TIMEOUT if self.timeout is None else self.timeout,
                                options=self.kwargs)
        if self.timeout is not None:
            raise RewardConfigError(f"reward {self.name!r}: 'timeout' applies to custom (path) and remote (url) "
                                    "rewards; accuracy's math-verify timeout is kwargs: {timeout: ...}")
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
        try:
            for raw in specs:
                spec = RewardSpec.parse(raw)
                reward = spec.build()
                name = getattr(reward, "name", None) or spec.name
                self.parts.append((name, spec.default_weight(), reward))
                if any(name == n for n, _, _ in self.parts[:-1]):
                    raise RewardConfigError(f"reward {name!r} is listed twice")
        except BaseException:
            self.close()  # math-verify workers of the rewards built so far
            raise

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
                raise RewardError(f"reward {name!r} returned {len(verdicts)} values for {n} samples")
            col: list[float | None] = []
            for i, v in enumerate(verdicts):
                if isinstance(v, RowError):
                    errors[i] = errors[i] or f"{name}: {v.message}"
                    col.append(None)
                else:
                    if v is not None and not math.isfinite(v):  # custom/remote already refuse; any other
                        raise RewardError(f"reward {name!r} returned {v} for {describe_row(samples, i)}; "
                                          "a reward must be finite")
                    col.append(v)
                    if v is not None:
                        totals[i] += weight * float(v)
            components[name] = col
        total = [None if errors[i] else totals[i] for i in range(n)]
        return RewardResult(total=total, components=components, errors=errors)

    def check(self, sample: Sample | None = None) -> None:
        """Call every custom (file) reward once on one sample, so that a broken reward file stops the
        run before minutes of model loading, not at step 1.  Raises a one-line error naming the file.

        The default sample is synthetic (:func:`check_sample`); TRL functions that name a column
        the sample lacks get the gold answer for it.  Remote rewards are not called (a server may
        legitimately start after the trainer).
        """
        for _, _, reward in self.parts:
            if not isinstance(reward, CustomReward):
                continue
            s = sample or check_sample()
            if reward.shape == "trl":
                known = set(reward.trl_columns([s])) | set(reward.options) | {"prompts", "completions"}
                extra = {p: s.answer for p in reward.accepts - known}
                if extra:
                    s = Sample(**{**s.__dict__, "columns": {**s.columns, **extra}})
            try:
                reward([s])
            except RewardError as e:
                raise RewardConfigError(f"{e} (checked on a sample before training: completion "
                                        f"{s.completion[:40]!r}, answer {s.answer!r})") from None

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


def check_sample() -> Sample:
    """The synthetic sample :meth:`CompositeReward.check` scores: a well-formed, correct answer."""
    question = "What is 1 + 1?"
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    return Sample(completion="<think>1 + 1 = 2</think><answer>2</answer>", answer="2", prompt=question,
                  fields={"datasource": "check"}, completion_tokens=12, messages=messages,
                  chat_prompt=f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
                  source="check sample")


def check_rewards(specs: Sequence[Any]) -> CompositeReward:
    """Build the rewards of ``specs`` and :meth:`~CompositeReward.check` them: the reward files are
    imported and called once, before anything expensive.  Returns the ready composite."""
    reward = CompositeReward(specs)
    try:
        reward.check()
    except BaseException:
        reward.close()
        raise
    return reward


def _cli_items(value: str, flag: str) -> list[Any]:
    """One ``--reward`` value: ``a,b``; ``file.py:function``; or YAML like a recipe's reward list."""
    text = value.strip()
    if text.startswith(("[", "{")):
        import yaml

        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise RewardConfigError(f"{flag} {value!r} is not valid YAML ({mark})") from None
        return obj if isinstance(obj, list) else [obj]
    items: list[Any] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        path, sep, fn = part.rpartition(":")
        if sep and path.endswith(".py") and fn:
            items.append({"path": path, "name": fn})
        else:
            items.append(part)
    return items


def parse_cli_rewards(names: str | Sequence[str], weights: str | None) -> list[RewardSpec]:
    """``--reward`` values -> specs; ``--weights 0.5,1.0`` in the same order.

    Each value is ``format,accuracy``, ``my_rewards.py:fn``, or the recipe syntax as YAML, e.g.
    ``{path: my_rewards.py, name: fn, kwargs: {scale: 2}, timeout: 10}`` or a list of such.
    """
    values = [names] if isinstance(names, str) else list(names)
    specs = [RewardSpec.parse(item) for v in values for item in _cli_items(v, "--reward")]
    if not specs:
        raise RewardConfigError("--reward: give at least one reward, e.g. --reward format,accuracy")
    if weights:
        ws = [w.strip() for w in weights.split(",")]
        labels = [s.name or s.url or str(s.path) for s in specs]
        if len(ws) != len(specs):
            raise RewardConfigError(f"--weights has {len(ws)} values for {len(specs)} rewards ({', '.join(labels)})")
        try:
            for s, w in zip(specs, ws, strict=True):
                s.weight = float(w)
        except ValueError as e:
            raise RewardConfigError(f"--weights must be numbers, got {weights!r}") from e
    return specs
