"""``math_lmmr1``: the LMM-R1 reference verifier, reproduced rule for rule.

The built-in ``accuracy`` + ``format`` rewards are deliberately stricter or more lenient than the
verifier the paper's numbers were trained with (docs/rewards.md lists each difference).  Users who
want the paper's reward signal use this one instead; it scores ``acc + format_weight * fmt``, the
reference server's total (format weight 0.5; 0 is its ``--disable-format-reward``):

* the completion has the end-of-sequence markers removed and is stripped, as the reference does
  after cutting the response out of the chat text;
* format: the whole response is ``<think>…</think><answer>…</answer>`` with nothing between the
  blocks (a newline fails), each tag exactly once; an empty think block passes;
* accuracy: the gold answer is wrapped in ``$…$`` unless it starts with ``$``; a gold answer
  math-verify cannot parse scores 1.0 for every completion (the reference's "skip"); otherwise the
  prediction is extracted from the *whole* completion (not only ``<answer>``), ``\\boxed{}`` first,
  LaTeX only (a bare ``42`` outside ``$`` or ``\\boxed{}`` is not read), last match in the text,
  and compared with math-verify.  Runs in the same killable worker pool as ``accuracy``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmmr1.rewards.base import RowError, Sample, Verdict, is_blank, register
from lmmr1.rewards.mathverify_pool import MathVerifier

# the chat-end markers the reference strips from the response (ChatML, DeepSeek, GPT-style, Gemma)
END_MARKERS = ("<|im_end|>", "<｜end▁of▁sentence｜>", "<|endoftext|>", "<end_of_turn>")
_FORMAT = re.compile(r"^<think>(?:(?!</think>).)*</think><answer>(?:(?!</answer>).)*</answer>\Z", re.DOTALL)


def reference_response(completion: str) -> str:
    for marker in END_MARKERS:
        completion = completion.replace(marker, "")
    return completion.strip()


def reference_format(response: str) -> bool:
    """The reference's format rule on an already cleaned response."""
    return bool(_FORMAT.match(response)) and response.count("<think>") == 1 and response.count("<answer>") == 1


def reference_gold(answer: object) -> str:
    gold = str(answer)
    return gold if gold.startswith("$") else f"${gold}$"


@register("math_lmmr1", default_weight=1.0)
class LmmR1MathReward:
    """The LMM-R1 reference verifier: accuracy (math-verify, boxed-first, whole completion) + 0.5 x format."""

    name = "math_lmmr1"

    def __init__(self, format_weight: float = 0.5, timeout: float = 5.0, workers: int = 2):
        if isinstance(format_weight, bool) or not isinstance(format_weight, (int, float)) or format_weight < 0:
            raise ValueError(f"format_weight must be a number >= 0 (the reference uses 0.5), got {format_weight!r}")
        self.format_weight = float(format_weight)
        self.verifier = MathVerifier(workers=workers, timeout=timeout, mode="lmmr1")

    def __call__(self, samples: Sequence[Sample]) -> list[Verdict]:
        out: list[Verdict] = [None] * len(samples)
        jobs: list[tuple[int, float, tuple[str, str]]] = []
        for i, s in enumerate(samples):
            if is_blank(s.answer):
                out[i] = RowError("empty gold answer: a row without an answer can never be scored")
                continue
            response = reference_response(s.completion)
            fmt = self.format_weight * float(reference_format(response))
            jobs.append((i, fmt, (reference_gold(s.answer), response)))
        if jobs:
            verdicts = self.verifier.verify_many([pair for _, _, pair in jobs])
            for (i, fmt, _), v in zip(jobs, verdicts, strict=True):
                out[i] = (1.0 if v is True else 0.0) + fmt
        return out

    def stats(self) -> dict[str, int]:
        return {"timeouts": self.verifier.timeouts}

    def close(self) -> None:
        self.verifier.close()
