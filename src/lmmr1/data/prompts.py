"""System-prompt templates.

``r1`` is the DeepSeek-R1 wording.  ``lmm_r1`` is the math prompt the LMM-R1 reference carries
inside its released rows (VerMulti, DeepScaleR message files): answers in LaTeX ``$...$`` with the
final answer in ``\\boxed{}``.  It matters for fidelity because the reference's verifier parses
LaTeX only (a bare ``42`` is not extracted), so a model prompted with ``r1`` is judged by rules its
prompt never stated.  The text is reproduced verbatim, grammar included, so prompts tokenise as the
reference's did.
"""

from __future__ import annotations

import copy
from typing import Any

R1 = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think><answer> answer here "
    "</answer>"
)
R1_BOXED = R1 + ". Inside the answer tags, put the final answer within \\boxed{}."
LMM_R1 = (
    "Solve the question. The user asks a question, and you solves it. You first thinks about the reasoning "
    "process in the mind and then provides the user with the answer. The answer is in latex format and wrapped "
    "in $...$. The final answer must be wrapped using the \\boxed{} command. The reasoning process and answer "
    "are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> Since "
    "$1+1=2$, so the answer is $2$. </think><answer> The answer is $\\boxed{2}$ </answer>, which means "
    "assistant's output should start with <think> and end with </answer>.\n"
)

TEMPLATES: dict[str, str | None] = {"r1": R1, "r1_boxed": R1_BOXED, "lmm_r1": LMM_R1, "none": None}


def resolve_system_prompt(spec: str | None) -> str | None:
    """A template name (r1, r1_boxed, lmm_r1, none) or any other text, used verbatim."""
    if spec is None:
        return None
    return TEMPLATES[spec] if spec in TEMPLATES else spec


def with_system_prompt(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    """Prepend the system prompt unless the row brings its own system turn (the row wins)."""
    if system is None or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system}] + copy.copy(messages)
