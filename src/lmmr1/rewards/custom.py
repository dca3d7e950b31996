"""User reward functions from a Python file, in the three shapes users already have.

- lmmr1:  ``fn(samples: list[Sample], **options) -> list[float | None]``
- LMM-R1 / OpenRLHF:  ``reward_func(queries, prompts, labels)``; a query is the chat-templated
  prompt + the completion; the return may be a list, a tensor, or OpenRLHF's
  ``{"rewards": tensor, "scores": ..., "extra_logs": ...}`` (only ``rewards`` is used)
- TRL:  ``fn(prompts, completions, **kwargs)``; kwargs are the dataset columns under their own
  names (``answer`` too); when the prompt is a chat, prompts are message lists and each
  completion is ``[{"role": "assistant", "content": text}]``, as TRL passes them

User code is untrusted in the sense that matters for a long run: it may hang, raise, or return
NaN.  Each call runs under a deadline (:mod:`lmmr1.rewards.guard`), and every failure is a
one-line :class:`RewardError` naming the function, its file and the row — never a traceback from
deep inside the trainer, never a NaN trained on.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmmr1.rewards.base import (
    RewardConfigError,
    RewardError,
    RowError,
    Sample,
    Verdict,
    describe_batch,
    describe_row,
)
from lmmr1.rewards.guard import CallTimeout, call_with_timeout

DEFAULT_TIMEOUT = 60.0  # seconds per call (one call scores a whole batch)
_CULPRIT_ROWS = 64  # after a failed batch, rows re-tried one by one to name the failing row ...
_CULPRIT_SECONDS = 10.0  # ... for at most this long in all (the error path must not hang either)


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg = msg if len(msg) <= 300 else msg[:297] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def to_floats(values: Any, n: int, where: str, samples: Sequence[Sample] | None = None) -> list[Verdict]:
    """One finite float (or None) per sample, else a :class:`RewardError` naming ``where`` and the row."""
    if isinstance(values, dict):  # OpenRLHF: {"rewards": tensor, "scores": ..., "extra_logs": ...}
        if "rewards" not in values:
            raise RewardError(f"{where} returned an object without 'rewards' (keys: {sorted(map(str, values))[:8]}); "
                              "return a list, or {'rewards': [...]}")
        values = values["rewards"]
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = len(values) if isinstance(values, (list, tuple)) else f"a {type(values).__name__}, not a list of"
        raise RewardError(f"{where} returned {got} values for {n} samples; return one float (or None) per sample")
    out: list[Verdict] = []
    for i, v in enumerate(values):
        row = describe_row(samples, i) if samples is not None else f"row {i}"
        if v is None or isinstance(v, RowError):  # no opinion / "this row cannot be scored"
            out.append(v)
            continue
        if isinstance(v, (str, bytes, list, tuple, dict)):  # float("0.5") would pass silently
            raise RewardError(f"{where} returned {str(v)[:60]!r} (a {type(v).__name__}) for {row}; "
                              "a reward is a number or None")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise RewardError(f"{where} returned {v!r} (a {type(v).__name__}) for {row}; "
                              "a reward is a number or None") from None
        if not math.isfinite(f):
            raise RewardError(f"{where} returned {f} for {row}; a reward must be a finite number (or None), "
                              "and a non-finite one is never trained on")
        out.append(f)
    return out


def load_function(path: str | Path, name: str) -> Callable:
    path = Path(path).expanduser()
    if not path.is_file():
        raise RewardConfigError(f"custom reward file {path} does not exist")
    mod_name = f"lmmr1_user_reward_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise RewardConfigError(f"custom reward file {path} is not a Python file (give a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise RewardConfigError(f"custom reward file {path}:{e.lineno}: syntax error: {e.msg}") from None
    except BaseException as e:  # noqa: BLE001  (a SystemExit at import must not end the run silently)
        raise RewardConfigError(f"importing custom reward file {path} failed: {_short(e)}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == mod_name)
        raise RewardConfigError(f"{path} has no function {name!r}; functions found: {', '.join(found) or 'none'}")
    return fn


class CustomReward:
    """Adapts a user function to the lmmr1 reward signature (shape detected from its parameters).

    ``options`` are passed to the function as keyword arguments on every call (the spec's
    ``kwargs``); ``timeout`` bounds each call (None or 0: no deadline, called inline).
    """

    def __init__(self, path: str | Path, function: str, name: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT, options: dict[str, Any] | None = None):
        self.fn = load_function(path, function)
        self.name = name or function
        self.function = function
        self.where = f"custom reward {function} ({path})"
        self.timeout = timeout
        self.options = dict(options or {})
        try:
            params = inspect.signature(self.fn).parameters
        except (TypeError, ValueError) as e:
            raise RewardConfigError(f"{self.where}: cannot read its signature ({e})") from None
        names = list(params)
        self.var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self.accepts = set(names)
        if names[:3] == ["queries", "prompts", "labels"]:
            self.shape, fixed = "lmm_r1", 3
        elif "completions" in names:
            self.shape, fixed = "trl", None
        elif names and params[names[0]].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                 inspect.Parameter.POSITIONAL_OR_KEYWORD):
            self.shape, fixed = "lmmr1", 1
        else:
            raise RewardConfigError(
                f"{self.where}: unrecognised signature ({', '.join(names)}); use fn(samples), "
                "reward_func(queries, prompts, labels) or fn(prompts, completions, **kwargs)"
            )
        unknown = [k for k in self.options if k not in self.accepts] if not self.var_kw else []
        if unknown:
            raise RewardConfigError(f"{self.where} takes no option(s) {unknown} (its parameters: {', '.join(names)})")
        if fixed is not None:  # every other required parameter must come from the options
            missing = [p.name for p in list(params.values())[fixed:]
                       if p.default is inspect.Parameter.empty and p.name not in self.options
                       and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
            if missing:
                raise RewardConfigError(f"{self.where}: parameter(s) {missing} have no value; give them in the "
                                        f"reward's kwargs, e.g. kwargs: {{{missing[0]}: ...}}")

    # ------------------------------------------------------------------ the three shapes
    def trl_columns(self, samples: Sequence[Sample]) -> dict[str, list]:
        """TRL's kwargs: every dataset column under its own name, one list entry per sample."""
        columns: dict[str, list] = {"answer": [s.answer for s in samples],
                                    "completion_tokens": [s.completion_tokens for s in samples]}
        keys: dict[str, None] = {}
        for s in samples:
            keys.update(dict.fromkeys(s.fields))
            keys.update(dict.fromkeys(s.columns))
        for key in keys:
            columns.setdefault(key, [s.columns[key] if key in s.columns else s.fields.get(key) for s in samples])
        return columns

    def _invoke(self, samples: Sequence[Sample]) -> Any:
        if self.shape == "lmmr1":
            return self.fn(list(samples), **self.options)
        if self.shape == "lmm_r1":
            prompts = [s.chat_prompt or s.prompt for s in samples]
            return self.fn([p + s.completion for p, s in zip(prompts, samples, strict=True)], prompts,
                           ["" if s.answer is None else str(s.answer) for s in samples], **self.options)
        conversational = bool(samples) and all(s.messages is not None for s in samples)
        if conversational:
            prompts: list = [s.messages for s in samples]
            completions: list = [[{"role": "assistant", "content": s.completion}] for s in samples]
        else:
            prompts, completions = [s.prompt for s in samples], [s.completion for s in samples]
        columns = self.trl_columns(samples)
        kwargs = columns if self.var_kw else {k: v for k, v in columns.items() if k in self.accepts}
        kwargs.pop("prompts", None)
        kwargs.pop("completions", None)
        missing = [p for p, v in inspect.signature(self.fn).parameters.items()
                   if p not in ("prompts", "completions") and p not in kwargs and p not in self.options
                   and v.default is inspect.Parameter.empty
                   and v.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        if missing:
            raise RewardError(f"{self.where} needs column(s) {missing}, which the data rows do not have "
                              f"(columns: {', '.join(sorted(columns))})")
        return self.fn(prompts=prompts, completions=completions, **{**kwargs, **self.options})

    # ------------------------------------------------------------------ guarded call
    def _call(self, samples: Sequence[Sample], timeout: float | None = None) -> Any:
        return call_with_timeout(lambda: self._invoke(samples), self.timeout if timeout is None else timeout,
                                 self.function)

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        if not samples:
            return []
        try:
            values = self._call(samples)
        except CallTimeout:
            raise RewardError(f"{self.where} did not return within {self.timeout:g} s on {describe_batch(samples)}; "
                              "fix it, or raise 'timeout:' in its reward spec if it is only slow") from None
        except RewardError:
            raise
        except BaseException as e:  # noqa: BLE001  (user code: anything, SystemExit included)
            if isinstance(e, KeyboardInterrupt):
                raise
            raise RewardError(f"{self.where} raised {_short(e)} on {self._culprit(samples)}") from None
        return to_floats(values, len(samples), self.where, samples)

    def _culprit(self, samples: Sequence[Sample]) -> str:
        """The first row that fails alone (re-tried one by one), else the batch."""
        if len(samples) > 1:
            deadline = time.monotonic() + _CULPRIT_SECONDS
            for i in range(min(len(samples), _CULPRIT_ROWS)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    self._call(samples[i:i + 1], timeout=left if not self.timeout else min(left, self.timeout))
                except CallTimeout:
                    break  # slow, not necessarily this row's fault
                except BaseException as e:  # noqa: BLE001
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    return describe_row(samples, i)
        return describe_row(samples, 0) if len(samples) == 1 else describe_batch(samples)
