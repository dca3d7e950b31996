"""Built-in rule rewards: format, accuracy, iou, overlong.  Exact rules: docs/rewards.md."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from lmmr1.rewards.answer import (
    choice_letter,
    format_ok,
    is_text_answer,
    last_answer_block,
    last_boxed,
    normalize_math,
    normalize_text,
    too_long,
    wrap_math,
)
from lmmr1.rewards.base import RowError, Sample, Verdict, is_blank, register
from lmmr1.rewards.mathverify_pool import MathVerifier


@register("format", default_weight=0.5)
class FormatReward:
    """1.0 for exactly one non-empty <think>…</think> then one non-empty <answer>…</answer>, else 0.0."""

    name = "format"

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        return [1.0 if format_ok(s.completion) else 0.0 for s in samples]


def _choices(fields: dict[str, Any]) -> list[str] | None:
    ch = fields.get("choices")
    if isinstance(ch, str):
        try:
            ch = json.loads(ch)
        except json.JSONDecodeError:
            return None
    if isinstance(ch, (list, tuple)) and ch:
        return [str(c) for c in ch]
    return None


_SINGLE_LETTER = re.compile(r"\(?[A-Z]\)?[.):]?")


def _letter_of(text: str, choices: list[str]) -> str | None:
    """The letter of the option whose text equals ``text`` (normalised), if any."""
    t = normalize_text(text)
    for i, c in enumerate(choices):
        if normalize_text(c) == t:
            return chr(ord("A") + i)
    return None


@register("accuracy", default_weight=1.0)
class AccuracyReward:
    """1.0 when the last <answer> block matches the gold answer (math, choice letter or text), else 0.0."""

    name = "accuracy"

    def __init__(self, fallback_to_completion: bool = False, timeout: float = 5.0, workers: int = 2):
        self.fallback_to_completion = fallback_to_completion
        self.verifier = MathVerifier(workers=workers, timeout=timeout)

    def predicted(self, completion: str) -> tuple[str | None, bool]:
        """(the text to judge, whether it came from an <answer> block)."""
        if too_long(completion):  # not parsed at all (answer.MAX_COMPLETION_CHARS): scores 0.0
            return None, False
        block = last_answer_block(completion)
        from_block = block is not None
        if block is None and self.fallback_to_completion:
            block = completion.strip()
        if block is None:
            return None, False
        boxed = last_boxed(block)
        return (boxed, True) if boxed is not None else (block, from_block)

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        out: list[Verdict] = [None] * len(samples)
        math_jobs: list[tuple[int, tuple[str, str]]] = []
        for i, s in enumerate(samples):
            if is_blank(s.answer):
                out[i] = RowError("empty gold answer: a row without an answer can never be scored")
                continue
            gold = str(s.answer).strip()
            pred, from_block = self.predicted(s.completion)
            if pred is None or not pred.strip():
                out[i] = 0.0
                continue
            choices = _choices(s.fields)
            answer_type = str(s.fields.get("answer_type") or "").lower()
            gold_letter = choice_letter(gold, allow_lower=choices is not None)
            if choices and gold_letter is None:
                gold_letter = _letter_of(gold, choices)
            if gold_letter is not None and (choices or _SINGLE_LETTER.fullmatch(gold)):
                pred_letter = choice_letter(pred, allow_lower=choices is not None)
                if pred_letter is None and choices:
                    pred_letter = _letter_of(pred, choices)
                if pred_letter is not None or not choices:
                    out[i] = 1.0 if pred_letter == gold_letter else 0.0
                    continue
                # an option's *value* instead of its letter: compare values below
                k = ord(gold_letter) - ord("A")
                if _SINGLE_LETTER.fullmatch(gold) and 0 <= k < len(choices):
                    gold = choices[k]
            if answer_type == "text" or is_text_answer(gold):
                out[i] = 1.0 if normalize_text(pred) == normalize_text(gold) else 0.0
            else:
                # free prose (fallback mode) goes to math-verify as is: it extracts the answer itself
                p = normalize_math(pred)
                g, p = wrap_math(normalize_math(gold)), (wrap_math(p) if from_block else p)
                if normalize_text(g) == normalize_text(p):
                    out[i] = 1.0
                else:
                    math_jobs.append((i, (g, p)))
        if math_jobs:
            verdicts = self.verifier.verify_many([pair for _, pair in math_jobs])
            for (i, _), v in zip(math_jobs, verdicts, strict=True):
                out[i] = 1.0 if v is True else 0.0
        return out

    def stats(self) -> dict[str, int]:
        return {"timeouts": self.verifier.timeouts}

    def close(self) -> None:
        self.verifier.close()


# One number, unambiguous (digits, then an optional fraction): matched at a fixed position it never
# backtracks.  The former single box regex, searched over an answer holding "[" and a long run of
# digits, took minutes (cubic); scanning "[" by "[" with anchored matches is linear.
_NUM_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_WS_RE = re.compile(r"\s*")


def _box_at(text: str, i: int) -> tuple[float, ...] | None:
    """The 4-number box ``[a, b, c, d]`` starting at ``text[i] == "["``, or None."""
    nums = []
    i += 1
    for k in range(4):
        i = _WS_RE.match(text, i).end()
        m = _NUM_RE.match(text, i)
        if not m:
            return None
        nums.append(float(m.group()))
        i = _WS_RE.match(text, m.end()).end()
        if i >= len(text) or text[i] != ("," if k < 3 else "]"):
            return None
        i += 1
    return tuple(nums)


def _first_box(text: str) -> tuple[float, ...] | None:
    i = text.find("[")
    while i >= 0:
        box = _box_at(text, i)
        if box is not None:
            return box
        i = text.find("[", i + 1)
    return None


def parse_box(value: Any) -> tuple[float, float, float, float] | None:
    """[x1, y1, x2, y2] from a list or from the first bracketed 4-number group in a string."""
    if isinstance(value, (list, tuple)) and len(value) == 4:
        try:
            box = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            return None
    else:
        box = _first_box(str(value))
        if box is None:
            return None
    x1, y1, x2, y2 = box
    return box if x2 > x1 and y2 > y1 else None  # type: ignore[return-value]


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@register("iou", default_weight=1.0)
class IoUReward:
    """IoU between the [x1,y1,x2,y2] box in the answer and the gold box (optionally thresholded)."""

    name = "iou"

    def __init__(self, threshold: float | None = None, fallback_to_completion: bool = False):
        self.threshold = threshold
        self.fallback_to_completion = fallback_to_completion

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        out: list[Verdict] = []
        for s in samples:
            gold = parse_box(s.answer) if not is_blank(s.answer) else None
            if gold is None:
                out.append(RowError(f"gold answer {s.answer!r} is not a box [x1, y1, x2, y2] with x2>x1, y2>y1"))
                continue
            block = last_answer_block(s.completion)
            if block is None and self.fallback_to_completion and not too_long(s.completion):
                block = s.completion
            pred = parse_box(block) if block is not None else None
            iou = box_iou(pred, gold) if pred is not None else 0.0
            if self.threshold is not None:
                iou = 1.0 if iou >= self.threshold else 0.0
            out.append(iou)
        return out


@register("overlong", default_weight=1.0)
class OverlongPenalty:
    """DAPO soft over-length penalty: 0 up to max_tokens-buffer, then linear down to -1 at max_tokens."""

    name = "overlong"

    def __init__(self, max_tokens: int = 4096, buffer: int = 512):
        if not 0 < buffer <= max_tokens:
            raise ValueError(f"overlong needs 0 < buffer <= max_tokens, got buffer={buffer}, max_tokens={max_tokens}")
        self.max_tokens, self.buffer = max_tokens, buffer

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        out: list[Verdict] = []
        for s in samples:
            n = s.completion_tokens if s.completion_tokens is not None else s.fields.get("completion_tokens")
            if n is None:
                out.append(RowError("overlong needs the completion length in tokens (field 'completion_tokens')"))
                continue
            if isinstance(n, bool) or not isinstance(n, (int, float)) or n != n or n < 0:
                out.append(RowError(f"completion_tokens must be a non-negative number, got {n!r}"))
                continue
            n, soft = int(n), self.max_tokens - self.buffer
            out.append(0.0 if n <= soft else (soft - n) / self.buffer if n <= self.max_tokens else -1.0)
        return out



@register("target_fraction", default_weight=1.0)
class TargetFractionReward:
    """Fraction of the completion's non-space characters that belong to repeats of ``target``.

    A diagnostic reward that a randomly initialised model can learn (used by recipes/smoke.yaml):
    it checks that the RL loop moves the policy, independent of any reasoning ability.
    """

    name = "target_fraction"

    def __init__(self, target: str = "7"):
        if not target or target.strip() != target:
            raise ValueError("target must be a non-empty string without surrounding spaces")
        self.target = target

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        out: list[Verdict] = []
        for s in samples:
            text = "".join(s.completion.split())
            out.append(text.count(self.target) * len(self.target) / len(text) if text else 0.0)
        return out
