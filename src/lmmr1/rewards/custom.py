"""User reward functions from a Python file, in the three shapes users already have.

- lmmr1:  ``fn(samples: list[Sample]) -> list[float | None]``
- LMM-R1 / OpenRLHF:  ``reward_func(queries, prompts, labels)`` where a query is prompt + completion
- TRL:  ``fn(prompts, completions, **kwargs)`` where kwargs are the dataset columns (answer, ...)
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmmr1.rewards.base import RewardConfigError, Sample, Verdict


def _to_floats(values: Any, n: int, where: str) -> list[Verdict]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, dict) and "rewards" in values:
        values = values["rewards"]
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise RewardConfigError(f"{where} returned {got} values for {n} samples; return one float (or None) per sample")
    out: list[Verdict] = []
    for v in values:
        if v is None:
            out.append(None)
        else:
            try:
                out.append(float(v))
            except (TypeError, ValueError) as e:
                raise RewardConfigError(f"{where} returned {v!r}, which is not a number or None") from e
    return out


def load_function(path: str | Path, name: str) -> Callable:
    path = Path(path).expanduser()
    if not path.is_file():
        raise RewardConfigError(f"custom reward file {path} does not exist")
    mod_name = f"lmmr1_user_reward_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise RewardConfigError(f"importing custom reward file {path} failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise RewardConfigError(f"{path} has no function {name!r}; callables found: {', '.join(found) or 'none'}")
    return fn


class CustomReward:
    """Adapts a user function to the lmmr1 reward signature (shape detected from its parameters)."""

    def __init__(self, path: str | Path, function: str, name: str | None = None):
        self.fn = load_function(path, function)
        self.name = name or function
        self.where = f"custom reward {function} ({path})"
        params = inspect.signature(self.fn).parameters
        names = list(params)
        self.var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if names[:3] == ["queries", "prompts", "labels"]:
            self.shape = "lmm_r1"
        elif "completions" in names:
            self.shape = "trl"
            self.accepts = set(names)
        elif len(names) == 1:
            self.shape = "lmmr1"
        else:
            raise RewardConfigError(
                f"{self.where}: unrecognised signature ({', '.join(names)}); use fn(samples), "
                "reward_func(queries, prompts, labels) or fn(prompts, completions, **kwargs)"
            )

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        n = len(samples)
        if self.shape == "lmmr1":
            values = self.fn(list(samples))
        elif self.shape == "lmm_r1":
            values = self.fn([s.prompt + s.completion for s in samples], [s.prompt for s in samples],
                             ["" if s.answer is None else str(s.answer) for s in samples])
        else:
            columns: dict[str, list] = {"answer": [s.answer for s in samples],
                                        "completion_tokens": [s.completion_tokens for s in samples]}
            for key in {k for s in samples for k in s.fields}:
                columns.setdefault(key, [s.fields.get(key) for s in samples])
            kwargs = columns if self.var_kw else {k: v for k, v in columns.items() if k in self.accepts}
            values = self.fn(prompts=[s.prompt for s in samples], completions=[s.completion for s in samples],
                             **kwargs)
        return _to_floats(values, n, self.where)
