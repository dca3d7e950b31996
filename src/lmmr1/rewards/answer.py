"""Pure text rules: where the answer is, what a choice letter is, how text is normalised.

Peers' verifiers were hacked or wrong here: LMM-R1 scored a ``\\boxed{}`` inside the thinking over
the ``<answer>`` block.  lmmr1 reads only the LAST ``<answer>…</answer>`` block, and inside it the
last ``\\boxed{}`` if there is one.
"""

from __future__ import annotations

import re

# Every parser here is linear in the completion length: completions are untrusted, unbounded text
# (a policy can emit megabytes), and one backtracking regex over them once froze `lmmr1 score` and
# every thread of `lmmr1 serve-rewards` (``<answer>(.*?)</answer>`` is quadratic on a run of
# unclosed ``<answer>`` tags).  Tags are found with str.find; regexes are anchored or unambiguous.

MAX_COMPLETION_CHARS = 1 << 20
"""Completions longer than this (1 Mi characters) are not parsed: they fail the format rule and
have no answer block.  No real answer needs more; the cap bounds the work per row."""

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def too_long(completion: str) -> bool:
    return len(completion) > MAX_COMPLETION_CHARS


def format_ok(completion: str) -> bool:
    """Exactly one non-empty <think> block, then exactly one non-empty <answer> block, nothing after.

    Whitespace is allowed before, between and after.  Counting each tag exactly once rules out
    nested or repeated blocks (a known format-reward hack).
    """
    if too_long(completion):
        return False
    s = completion.strip()
    if any(s.count(t) != 1 for t in _TAGS):
        return False
    t1, a0, a1 = s.find("</think>"), s.find("<answer>"), s.find("</answer>")
    if not (s.startswith("<think>") and s.endswith("</answer>") and t1 < a0 < a1):
        return False
    think, between, answer = s[len("<think>"):t1], s[t1 + len("</think>"):a0], s[a0 + len("<answer>"):a1]
    return bool(think.strip()) and not between.strip() and bool(answer.strip())


def answer_blocks(completion: str) -> list[str]:
    """Contents of the complete <answer>…</answer> blocks, left to right, non-overlapping.

    Same blocks as ``re.findall(r"<answer>(.*?)</answer>", s, re.S)``, found in one pass.
    """
    out: list[str] = []
    if too_long(completion):
        return out
    pos = 0
    while True:
        start = completion.find("<answer>", pos)
        if start < 0:
            break
        end = completion.find("</answer>", start + len("<answer>"))
        if end < 0:
            break
        out.append(completion[start + len("<answer>"):end])
        pos = end + len("</answer>")
    return out


def last_answer_block(completion: str) -> str | None:
    """Content of the last complete <answer>…</answer> block, or None."""
    blocks = answer_blocks(completion)
    return blocks[-1].strip() if blocks else None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


_UNICODE = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",  # en dash used as minus
    "\u00d7": "\\times ",
    "\u00f7": "\\div ",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u03c0": "\\pi ",
    "\u221a": "\\sqrt",
}
# no leading \s*: searched at every position, it would rescan a long run of spaces each time
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°")


def normalize_math(text: str) -> str:
    """Unicode math symbols to LaTeX; degree marks dropped with the spaces before them (30° = 30)."""
    for k, v in _UNICODE.items():
        text = text.replace(k, v)
    parts, last = [], 0
    for m in _DEGREE_RE.finditer(text):
        parts.append(text[last:m.start()].rstrip())
        last = m.end()
    parts.append(text[last:])
    return "".join(parts).strip()


def has_math_delimiters(text: str) -> bool:
    return "$" in text or "\\(" in text or "\\[" in text or "\\boxed" in text


def wrap_math(text: str) -> str:
    """Content without math delimiters is wrapped in $…$ so math-verify parses it as LaTeX."""
    return text if has_math_delimiters(text) else f"${text}$"


_TEXT_WRAP_RE = re.compile(r"^\\text\{(.*)\}$", re.S)


def normalize_text(text: str) -> str:
    """Case, surrounding whitespace/quotes/$, \\text{} wrappers and trailing punctuation removed."""
    s = str(text).strip()
    for _ in range(3):
        s = s.strip().strip("$").strip().rstrip(".!?,;:").strip()
        m = _TEXT_WRAP_RE.match(s)
        if m:
            s = m.group(1)
    s = re.sub(r"\s+", " ", s).strip().strip("\"'").strip()
    s = s.rstrip(".!?,;:").strip()
    return s.lower()


_CHOICE_PATTERNS = (
    re.compile(r"^\(([A-Za-z])\)(?:\s.*)?$", re.S),  # (B)   (B) text
    re.compile(r"^([A-Za-z])[.):](?:\s.*)?$", re.S),  # B.  B)  B:  B. text
    re.compile(r"^([A-Za-z])$"),  # B
)


def choice_letter(text: str, allow_lower: bool = False) -> str | None:
    """The option letter a short answer names: B, (B), B., B), B:, (B) text, B. text -> 'B'."""
    s = str(text).strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.strip().strip("$").strip()
    m = _TEXT_WRAP_RE.match(s)
    if m:
        s = m.group(1).strip()
    for pat in _CHOICE_PATTERNS:
        m = pat.match(s)
        if m:
            letter = m.group(1)
            if letter.isupper() or allow_lower:
                return letter.upper()
    return None


_MATH_WORDS = {"pi", "infinity", "inf", "infty", "sin", "cos", "tan", "log", "ln"}
_WORDS_RE = re.compile(r"[A-Za-z][A-Za-z\s\-']*[A-Za-z]")


def is_text_answer(gold: str) -> bool:
    """A gold made only of words (yes, triangle, 'north east') is compared as normalised text."""
    s = normalize_text(gold)
    return bool(_WORDS_RE.fullmatch(s)) and s not in _MATH_WORDS
