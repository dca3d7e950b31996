"""System-prompt templates.  ``r1`` is the one LMM-R1 trains with (the DeepSeek-R1 wording)."""

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

TEMPLATES: dict[str, str | None] = {"r1": R1, "r1_boxed": R1_BOXED, "none": None}


def resolve_system_prompt(spec: str | None) -> str | None:
    """A template name (r1, r1_boxed, none) or any other text, used verbatim."""
    if spec is None:
        return None
    return TEMPLATES[spec] if spec in TEMPLATES else spec


def with_system_prompt(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    """Prepend the system prompt unless the row brings its own system turn (the row wins)."""
    if system is None or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system}] + copy.copy(messages)
