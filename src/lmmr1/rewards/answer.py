"""Pure text rules: where the answer is, what a choice letter is, how text is normalised.

Peers' verifiers were hacked or wrong here: LMM-R1 scored a ``\\boxed{}`` inside the thinking over
the ``<answer>`` block.  lmmr1 reads only the LAST ``<answer>…</answer>`` block, and inside it the
last ``\\boxed{}`` if there is one.
"""

from __future__ import annotations

import re

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FORMAT_RE = re.compile(r"<think>(.*)</think>\s*<answer>(.*)</answer>", re.S)


def format_ok(completion: str) -> bool:
    """Exactly one non-empty <think> block, then exactly one non-empty <answer> block, nothing after.

    Whitespace is allowed before, between and after.  Counting each tag exactly once rules out
    nested or repeated blocks (a known format-reward hack).
    """
    s = completion.strip()
    if any(s.count(t) != 1 for t in _TAGS):
        return False
    m = _FORMAT_RE.fullmatch(s)
    return bool(m and m.group(1).strip() and m.group(2).strip())


def last_answer_block(completion: str) -> str | None:
    """Content of the last complete <answer>…</answer> block, or None."""
    blocks = _ANSWER_RE.findall(completion)
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
_DEGREE_RE = re.compile(r"\s*(\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°)")


def normalize_math(text: str) -> str:
    """Unicode math symbols to LaTeX; degree marks dropped (30° and 30 are the same answer)."""
    for k, v in _UNICODE.items():
        text = text.replace(k, v)
    return _DEGREE_RE.sub("", text).strip()


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
