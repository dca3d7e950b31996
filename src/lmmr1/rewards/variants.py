"""Rewards of the papers that followed LMM-R1 (docs/rewards.md, "Variants' rewards").

``format_observe`` and ``shortest_correct_bonus`` (Observe-R1), ``accuracy_strict`` (Vision-R1's
hard reward), ``jigsaw`` (Jigsaw-R1), ``answer_consistency`` (ACRE).  Each is a batch rule like the built-ins; the ones that
compare the samples of a prompt find its group as the run of consecutive samples with the same
prompt (the trainer writes a prompt's n samples next to each other).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from lmmr1.rewards.answer import choice_letter, format_ok, last_answer_block, normalize_text, too_long
from lmmr1.rewards.base import RowError, Sample, Verdict, is_blank, register
from lmmr1.rewards.builtin import AccuracyReward, _choices

_OBSERVE_TAGS = ("<observe>", "</observe>", "<think>", "</think>", "<answer>", "</answer>")


def observe_format_ok(completion: str) -> bool:
    """Exactly ``<observe>…</observe><think>…</think><answer>…</answer>``, each block non-empty, each tag
    once, only whitespace between blocks and around them."""
    if too_long(completion):
        return False
    s = completion.strip()
    if any(s.count(t) != 1 for t in _OBSERVE_TAGS):
        return False
    pos = [s.find(t) for t in _OBSERVE_TAGS]
    if pos != sorted(pos) or pos[0] != 0 or not s.endswith("</answer>"):
        return False
    inner = [s[pos[i] + len(_OBSERVE_TAGS[i]):pos[i + 1]] for i in range(5)]
    # inner[0], [2], [4]: the three blocks' contents; inner[1], [3]: what lies between blocks
    return all(inner[i].strip() for i in (0, 2, 4)) and not inner[1].strip() and not inner[3].strip()


@register("format_observe", default_weight=0.5)
class ObserveFormatReward:
    """Observe-R1: 1.0 for <observe>…</observe><think>…</think><answer>…</answer> (each once, non-empty), else 0.0."""

    name = "format_observe"

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        return [1.0 if observe_format_ok(s.completion) else 0.0 for s in samples]


def prompt_groups(samples: Sequence[Sample]) -> list[range]:
    """Runs of consecutive samples of the same prompt (same data row and rendered prompt)."""
    out, start = [], 0
    key = lambda s: (s.source, s.chat_prompt or s.prompt)  # noqa: E731
    for i in range(1, len(samples) + 1):
        if i == len(samples) or key(samples[i]) != key(samples[start]):
            out.append(range(start, i))
            start = i
    return out


def _length(s: Sample) -> int:
    return s.completion_tokens if s.completion_tokens is not None else len(s.completion)


@register("shortest_correct_bonus", default_weight=1.0)
class ShortestCorrectBonus:
    """Observe-R1: +bonus (0.2) for the shortest correct completion of each prompt's group (ties: all of them), else 0."""

    name = "shortest_correct_bonus"

    def __init__(self, bonus: float = 0.2, **accuracy_kwargs):
        self.bonus = float(bonus)
        self.accuracy = AccuracyReward(**accuracy_kwargs)

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        acc = self.accuracy(samples)
        out: list[Verdict] = [a if isinstance(a, RowError) else 0.0 for a in acc]
        for g in prompt_groups(samples):
            right = [i for i in g if acc[i] == 1.0]
            if right:
                shortest = min(_length(samples[i]) for i in right)
                for i in right:
                    if _length(samples[i]) == shortest:
                        out[i] = self.bonus
        return out

    def close(self) -> None:
        self.accuracy.close()


@register("accuracy_strict", default_weight=1.0)
class StrictAccuracyReward:
    """Vision-R1's hard reward: 1.0 only when the format is right AND the answer is right, else 0.0."""

    name = "accuracy_strict"

    def __init__(self, observe: bool = False, **accuracy_kwargs):
        self.check_format = observe_format_ok if observe else format_ok
        self.accuracy = AccuracyReward(**accuracy_kwargs)

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        acc = self.accuracy(samples)
        return [a if isinstance(a, RowError) else (1.0 if a == 1.0 and self.check_format(s.completion) else 0.0)
                for a, s in zip(acc, samples, strict=True)]

    def stats(self) -> dict[str, int]:
        return self.accuracy.stats()

    def close(self) -> None:
        self.accuracy.close()


_INTS = re.compile(r"-?\d+")


def parse_permutation(value) -> list[int] | None:
    """A permutation written as a list of ints or as text ("2 0 1 3", "[2, 0, 1, 3]"); None if none."""
    if isinstance(value, (list, tuple)):
        try:
            return [int(v) for v in value]
        except (TypeError, ValueError):
            return None
    if value is None:
        return None
    nums = _INTS.findall(str(value))
    return [int(v) for v in nums] if nums else None


@register("jigsaw", default_weight=1.0)
class JigsawReward:
    """Jigsaw-R1: fraction of patches put in the right place (answer = the permutation), 0.0 when unparsable.

    A prediction of the wrong length scores 0 (it does not describe this puzzle); positions are
    compared one by one, so 2 of 4 patches right scores 0.5.  Pair with ``format``.
    """

    name = "jigsaw"

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        out: list[Verdict] = []
        for s in samples:
            gold = None if is_blank(s.answer) else parse_permutation(s.answer)
            if not gold or sorted(gold) != list(range(len(gold))):
                out.append(RowError(f"gold answer {s.answer!r} is not a permutation of 0..k-1"))
                continue
            block = last_answer_block(s.completion)
            pred = parse_permutation(block) if block is not None else None
            if pred is None or len(pred) != len(gold):
                out.append(0.0)
                continue
            out.append(sum(p == g for p, g in zip(pred, gold, strict=True)) / len(gold))
        return out


# ------------------------------------------------------------------------------ ACRE: answer consistency
def mc_choices(fields: dict) -> list[str] | None:
    """A multiple-choice row's options (``choices``: a list, or a JSON list as text), else None; one
    option is no choice, so re-asking with it shuffled would test nothing."""
    ch = _choices(fields)
    return ch if ch is not None and len(ch) >= 2 else None


def _option_index(text: str | None, choices: list[str]) -> int | None:
    """Which option an answer names: its letter (A, (B), c.) or its text."""
    if text is None:
        return None
    letter = choice_letter(text, allow_lower=True)
    if letter is not None:
        k = ord(letter) - ord("A")
        return k if 0 <= k < len(choices) else None
    t = normalize_text(text)
    return next((i for i, c in enumerate(choices) if normalize_text(c) == t), None)


def reasoning_of(completion: str) -> str:
    """The reasoning to keep for the re-ask: the <think> block, else everything before <answer>."""
    s = completion
    a, b = s.find("<think>"), s.find("</think>")
    if 0 <= a < b:
        return s[a + len("<think>"):b].strip()
    cut = s.find("<answer>")
    return (s if cut < 0 else s[:cut]).strip()


def reask_turns(reasoning: str, choices: list[str], order: list[int]) -> list[dict]:
    """The follow-up: the model's own reasoning as its turn, then the options in a new order."""
    listed = "\n".join(f"{chr(ord('A') + i)}. {choices[k]}" for i, k in enumerate(order))
    return [{"role": "assistant", "content": [{"type": "text", "text": f"<think>{reasoning}</think>"}]},
            {"role": "user", "content": [{"type": "text", "text": "The same options in a new order:\n" + listed +
                                          "\nGive the letter of your answer in <answer></answer>."}]}]


@register("answer_consistency", default_weight=1.0)
class AnswerConsistencyReward:
    """ACRE: on multiple-choice rows, re-ask with the options shuffled given the same reasoning; 1.0 only
    when both answers are right (hence consistent), else 0.0; None (no opinion) on other rows.

    The re-ask is a greedy generation by the policy being trained: the trainer binds it
    (:meth:`bind`) before each batch is scored; outside training (``lmmr1 score``) rows are errors.
    The new order is a shuffle seeded by the row and the completion (reproducible) that moves at
    least one option, so a letter copied from the first answer is caught.
    """

    name = "answer_consistency"

    def __init__(self):
        self.reask = None
        self.asked = self.consistent = 0

    def bind(self, reask) -> None:
        """``reask(rows, follow_ups) -> completions``: continue row ``rows[i]``'s prompt with ``follow_ups[i]``."""
        self.reask = reask

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        out: list[Verdict] = [None] * len(samples)
        jobs: list[tuple[int, list[int], list[str], int]] = []
        for i, s in enumerate(samples):
            choices = mc_choices(s.fields)
            if choices is None:
                continue
            gold = _option_index(None if is_blank(s.answer) else str(s.answer), choices)
            if gold is None:
                out[i] = RowError(f"gold answer {s.answer!r} names none of the {len(choices)} options")
                continue
            first = _option_index(last_answer_block(s.completion), choices)
            if first != gold:
                out[i] = 0.0  # already wrong: no need to ask again
                continue
            if self.reask is None:
                out[i] = RowError("answer_consistency re-asks the policy: it scores only inside lmmr1 train")
                continue
            order = list(range(len(choices)))
            rng = random.Random(f"{s.source}\x00{s.completion}")
            while order == sorted(order):
                rng.shuffle(order)
            jobs.append((i, order, choices, gold))
        if jobs:
            follow = [reask_turns(reasoning_of(samples[i].completion), ch, order) for i, order, ch, _ in jobs]
            answers = self.reask([i for i, *_ in jobs], follow)
            for (i, order, ch, gold), text in zip(jobs, answers, strict=True):
                k = _option_index(last_answer_block(text), [ch[j] for j in order])
                ok = k is not None and order[k] == gold
                out[i] = 1.0 if ok else 0.0
                self.asked += 1
                self.consistent += ok
        return out

    def stats(self) -> dict[str, int]:
        return {"reasked": self.asked, "consistent": self.consistent}
