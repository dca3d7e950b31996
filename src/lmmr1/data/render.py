"""Text problems with LaTeX maths -> images: the data of LMM-R1's FRE-Multi ablation.

FRE-Multi trains on the *same* text problems shown as pictures.  The reference builds that data
with a system TeX and hard-coded paths; here the page is laid out in Python so that any
LMM-R1-format dataset can be rendered offline, deterministically, with one command
(``lmmr1 data render``):

* plain text is word-wrapped to a fixed width with the DejaVu Serif font that matplotlib ships
  (so no system font is looked up and every machine draws the same glyphs);
* maths -- inline ``$...$`` / ``\\(...\\)``, display ``$$...$$`` / ``\\[...\\]`` -- is typeset by
  matplotlib's mathtext (a maintained TeX-subset typesetter; no TeX, no network), placed on the
  text baseline; display maths is centred on its own line; fractions are typeset in display
  style (``\\dfrac``, legible at training resolutions; ``display_fractions=False`` keeps inline
  ones small); a few LaTeX spellings mathtext lacks are rewritten first (``\\le``, ``\\tfrac``,
  ``\\frac12``, ``\\textbf``, ``\\pmod`` ... see ``_REWRITES``);
* a formula mathtext still cannot typeset is drawn as its source text (``$...$`` included) and
  reported as a :class:`Fallback` -- never dropped; ``strict`` turns it into an error.

Same input + same matplotlib/Pillow versions -> the same PNG bytes (no timestamps in the PNG,
Pillow's basic text layout rather than an optional shaping library, no randomness).

The row conversion and the ``lmmr1 data render`` driver live in :mod:`lmmr1.data.render_rows`.
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lmmr1.errors import LmmR1Error

MATPLOTLIB_HINT = "rendering needs matplotlib: pip install 'lmmr1[render]'"


def require_matplotlib():
    """Import matplotlib lazily: it is an optional extra and the rest of lmmr1 never needs it."""
    try:
        import matplotlib
        from matplotlib.font_manager import FontProperties
        from matplotlib.mathtext import MathTextParser
    except ImportError as e:
        raise LmmR1Error(MATPLOTLIB_HINT) from e
    return matplotlib, FontProperties, MathTextParser


@dataclass(frozen=True)
class RenderConfig:
    """Page geometry.  Pixel font size = ``font_size * dpi / 72``; maths uses the same size."""

    width: int = 768  # image width in pixels (the height follows the text)
    font_size: float = 14.0  # points
    dpi: int = 100
    margin: int = 16  # pixels on every side
    line_spacing: float = 1.3  # line pitch as a multiple of the font's height
    math_fontset: str = "cm"  # matplotlib mathtext fontset: cm (LaTeX look), dejavuserif, stix, ...
    # mathtext's text-style fractions are about half the font size, too small to read at the
    # resolutions VLMs train on; True typesets inline \frac as \dfrac (display maths always is)
    display_fractions: bool = True

    def check(self) -> None:
        if self.font_size <= 0 or self.dpi <= 0:
            raise LmmR1Error(f"font size ({self.font_size}) and dpi ({self.dpi}) must be positive")
        if self.width - 2 * self.margin < 4 * self.px:
            raise LmmR1Error(f"width {self.width}px leaves no room for text at {self.font_size}pt/{self.dpi}dpi "
                             f"(margins {self.margin}px); raise --width or lower --font-size")
        if self.line_spacing < 1.0:
            raise LmmR1Error(f"line_spacing must be >= 1.0, got {self.line_spacing}")

    @property
    def px(self) -> int:
        return max(1, round(self.font_size * self.dpi / 72))


@dataclass(frozen=True)
class Fallback:
    """A formula drawn as its source text because mathtext could not typeset it."""

    formula: str  # the source, delimiters included
    reason: str


# ------------------------------------------------------------------------------------ splitting
@dataclass(frozen=True)
class Segment:
    kind: str  # "text", "inline" or "display"
    body: str  # the text, or the maths without delimiters
    source: str  # what the user wrote (maths: with delimiters)


def split_maths(text: str) -> list[Segment]:
    """Split text into plain-text and maths segments.

    ``\\$`` is a literal dollar; an opening delimiter without its closing one is literal text
    (a price such as "$5" must not swallow the rest of the problem).
    """
    out: list[Segment] = []
    buf: list[str] = []
    i, n = 0, len(text)

    def flush() -> None:
        if buf:
            s = "".join(buf)
            out.append(Segment("text", s, s))
            buf.clear()

    def find_close(close: str, start: int) -> int:
        j = start
        while True:
            j = text.find(close, j)
            if j < 0 or close != "$" or text[j - 1] != "\\":
                return j
            j += 1

    while i < n:
        if text.startswith("\\$", i):
            buf.append("$")
            i += 2
            continue
        for open_, close, kind in (("$$", "$$", "display"), ("\\[", "\\]", "display"), ("\\(", "\\)", "inline"),
                                   ("$", "$", "inline")):
            if text.startswith(open_, i):
                j = find_close(close, i + len(open_))
                body = text[i + len(open_):j] if j >= 0 else ""
                if j >= 0 and body.strip():
                    flush()
                    out.append(Segment(kind, body, text[i:j + len(close)]))
                    i = j + len(close)
                else:
                    buf.append(open_)
                    i += len(open_)
                break
        else:
            buf.append(text[i])
            i += 1
    flush()
    return out


# ------------------------------------------------------------------------------ LaTeX rewrites
# LaTeX spellings mathtext does not know -> ones it does (same glyphs).  Applied before parsing;
# a fallback still shows the user's original source.
_REWRITES: list[tuple[re.Pattern[str], str]] = [(re.compile(p), r) for p, r in [
    (r"\\(?:displaystyle|textstyle|scriptstyle|scriptscriptstyle)(?![a-zA-Z])\s*", ""),
    (r"\\le(?![a-zA-Z])", r"\\leq"), (r"\\ge(?![a-zA-Z])", r"\\geq"),
    (r"\\(?:lvert|rvert)(?![a-zA-Z])", "|"), (r"\\(?:lVert|rVert)(?![a-zA-Z])", r"\\|"),
    (r"\\(?:mbox|textrm|textnormal|textup|textsf|texttt)\s*\{", r"\\text{"),
    (r"\\textbf\s*\{", r"\\mathbf{"), (r"\\(?:textit|emph)\s*\{", r"\\mathit{"),
    (r"\\tfrac(?![a-zA-Z])", r"\\frac"), (r"\\cfrac(?![a-zA-Z])", r"\\dfrac"),
    (r"\\[dt]binom(?![a-zA-Z])", r"\\binom"),
    (r"\\pmod\s*\{([^{}]*)\}", r"\\ (\\mathrm{mod}\\ \1)"), (r"\\(?:bmod|mod)(?![a-zA-Z])", r"\\ \\mathrm{mod}\\ "),
    (r"\\implies(?![a-zA-Z])", r"\\Longrightarrow"), (r"\\impliedby(?![a-zA-Z])", r"\\Longleftarrow"),
    (r"\\iff(?![a-zA-Z])", r"\\Longleftrightarrow"),
    (r"\\hspace\*?\s*\{[^{}]*\}", r"\\ "), (r"\\(?:nobreak|limits|nolimits)(?![a-zA-Z])", ""),
]]
_TWO_ARGS = re.compile(r"\\(d?frac|binom)(?![a-zA-Z])")
_ONE_ARG = re.compile(r"\\sqrt(?![a-zA-Z])")


def _group_end(s: str, i: int) -> int:
    """Index just past the TeX argument starting at ``i`` (a {group}, a \\command or one char)."""
    if i >= len(s):
        return i
    if s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            if s[j] == "{" and (j == 0 or s[j - 1] != "\\"):
                depth += 1
            elif s[j] == "}" and s[j - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return j + 1
        return len(s)
    if s[i] == "\\":
        m = re.match(r"\\([a-zA-Z]+|.)", s[i:])
        return i + (m.end() if m else 1)
    return i + 1


def _brace_args(s: str, pattern: re.Pattern[str], nargs: int) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``: TeX lets one-token arguments go without braces, mathtext not."""
    out, pos = [], 0
    for m in pattern.finditer(s):
        if m.start() < pos:
            continue
        out.append(s[pos:m.end()])
        i = m.end()
        if nargs == 1 and i < len(s) and s[i] == "[":  # \sqrt[n]{x}: keep the index as written
            j = s.find("]", i)
            if j < 0:
                pos = i
                continue
            out.append(s[i:j + 1])
            i = j + 1
        for _ in range(nargs):
            while i < len(s) and s[i] == " ":
                i += 1
            j = _group_end(s, i)
            arg = s[i:j]
            if len(arg) >= 2 and arg[0] == "{" and arg[-1] == "}":  # a group: its inside too (\frac{\frac12}3)
                out.append("{" + _brace_args(arg[1:-1], pattern, nargs) + "}")
            else:
                out.append("{" + arg + "}" if arg else "")
            i = j
        pos = i
    out.append(s[pos:])
    return "".join(out)


def normalize_latex(body: str, display: bool) -> str:
    """The mathtext spelling of a LaTeX formula (see ``_REWRITES``); ``display``: \\frac -> \\dfrac."""
    s = " ".join(body.split())  # mathtext rejects newlines; TeX treats them as spaces
    for pat, rep in _REWRITES:
        s = pat.sub(rep, s)
    s = _brace_args(_brace_args(s, _TWO_ARGS, 2), _ONE_ARG, 1)
    if display:
        s = _top_level_dfrac(s)
    return s


def _top_level_dfrac(s: str) -> str:
    """``\\frac`` -> ``\\dfrac`` outside braces only: as in TeX's display style, a fraction inside a
    fraction, an exponent or an index stays small."""
    out, depth, i = [], 0, 0
    while i < len(s):
        if s.startswith("\\frac", i) and depth == 0 and not s[i + 5:i + 6].isalpha():
            out.append("\\dfrac")
            i += 5
            continue
        if s[i] == "\\":  # a command or an escaped brace: copy both characters
            out.append(s[i:i + 2])
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(s[i], 0)
        out.append(s[i])
        i += 1
    return "".join(out)


def _short_reason(e: Exception) -> str:
    """mathtext's multi-line pyparsing message -> e.g. 'Unknown symbol: \\boxed'."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    for x in lines:
        if "Exception:" in x:
            x = x.split("Exception:", 1)[1].strip()
            return re.sub(r",?\s*found .*$|\s*\(at char.*$", "", x).strip() or x
    return (lines[-1] if lines else type(e).__name__)[:120]


# ------------------------------------------------------------------------------------- layout
@dataclass
class _Box:
    """One unbreakable piece of a line: a text run or a typeset formula (coverage bitmap)."""

    width: int
    ascent: int
    descent: int
    text: str | None = None
    ink: Image.Image | None = None  # "L" coverage, 255 = ink


class ProblemRenderer:
    """Renders one problem text to a grayscale PIL image; holds fonts and a formula cache."""

    def __init__(self, cfg: RenderConfig | None = None):
        self.cfg = cfg or RenderConfig()
        self.cfg.check()
        matplotlib, font_properties, parser_cls = require_matplotlib()
        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSerif.ttf"
        self.font = ImageFont.truetype(str(ttf), self.cfg.px, layout_engine=ImageFont.Layout.BASIC)
        self.ascent, self.descent = self.font.getmetrics()
        self.space = max(1, round(self.font.getlength(" ")))
        self._parser = parser_cls("agg")
        self._prop = font_properties(size=self.cfg.font_size, math_fontfamily=self.cfg.math_fontset)
        self._typeset = functools.lru_cache(maxsize=4096)(self._typeset_uncached)

    # -- pieces
    def _text_box(self, s: str) -> _Box:
        return _Box(round(self.font.getlength(s)), self.ascent, self.descent, text=s)

    def _typeset_uncached(self, latex: str) -> _Box | str:
        """A formula's box, or the reason mathtext refused it."""
        try:
            r = self._parser.parse(f"${latex}$", dpi=self.cfg.dpi, prop=self._prop, antialiased=True)
        except Exception as e:  # mathtext raises ValueError, but any failure must become a fallback
            return _short_reason(e)
        ink = np.asarray(r.image, dtype=np.uint8)
        h, w = ink.shape
        if h == 0 or w == 0:
            return _Box(0, 0, 0)
        # mathtext pads the bitmap by one pixel; its baseline is depth + 1 rows above the bottom
        # (depth < 0: an operator such as \cdot or a lone minus floats above the baseline)
        ascent = min(h + 1, round(h - r.depth - 1))
        return _Box(w, ascent, h - ascent, ink=Image.fromarray(ink))  # uint8 2-D: mode "L"

    def _fit(self, box: _Box, avail: int) -> list[_Box]:
        """A piece wider than the line: text is cut by characters, a formula is scaled down."""
        if box.width <= avail:
            return [box]
        if box.ink is not None:
            scale = avail / box.width
            ink = box.ink.resize((avail, max(1, round(box.ink.height * scale))), Image.Resampling.LANCZOS)
            descent = round(box.descent * scale)
            return [_Box(ink.width, ink.height - descent, descent, ink=ink)]
        pieces, cur = [], ""
        for ch in box.text or "":
            if cur and self.font.getlength(cur + ch) > avail:
                pieces.append(self._text_box(cur))
                cur = ""
            cur += ch
        if cur:
            pieces.append(self._text_box(cur))
        return pieces

    # -- the page
    def _items(self, text: str, fallbacks: list[Fallback]) -> list[tuple[str, list[_Box]]]:
        """The text as ("word", boxes) / ("break", []) / ("soft", []) / ("display", boxes) items.

        A word is a run of boxes with no space between them, so "$x$," never breaks before the comma.
        """
        avail = self.cfg.width - 2 * self.cfg.margin
        items: list[tuple[str, list[_Box]]] = []
        word: list[_Box] = []

        def end_word() -> None:
            if word:
                items.append(("word", list(word)))
                word.clear()

        def add_text(s: str) -> None:
            if s[:1].isspace():
                end_word()
            for k, line in enumerate(s.split("\n")):
                if k:
                    end_word()
                    items.append(("break", []))
                for j, w in enumerate(line.split()):
                    if j or line[:1].isspace():
                        end_word()
                    word.append(self._text_box(w))
                if line[-1:].isspace():
                    end_word()

        for seg in split_maths(text.replace("\t", " ").replace("\r\n", "\n").replace("\r", "\n")):
            if seg.kind == "text":
                add_text(seg.body)
                continue
            box = self._typeset(normalize_latex(seg.body, seg.kind == "display" or self.cfg.display_fractions))
            if isinstance(box, str):  # drawn as its source text, and reported
                fallbacks.append(Fallback(seg.source, box))
                if seg.kind == "display":
                    end_word()
                    items.append(("soft", []))
                    add_text(seg.source)
                    end_word()
                    items.append(("soft", []))
                else:
                    add_text(seg.source)
            elif seg.kind == "display":
                end_word()
                items.append(("display", self._fit(box, avail)))
            else:
                word.append(box)
        end_word()
        return items

    def render(self, text: str) -> tuple[Image.Image, list[Fallback]]:
        """Lay out ``text`` (plain text + LaTeX maths) on a page ``cfg.width`` pixels wide."""
        cfg, avail = self.cfg, self.cfg.width - 2 * self.cfg.margin
        fallbacks: list[Fallback] = []
        lines: list[tuple[list[tuple[int, _Box]], bool]] = []  # (boxes at x offsets, is_display)
        cur: list[tuple[int, _Box]] = []
        x, after_display = 0, False
        for kind, boxes in self._items(text, fallbacks):  # greedy line breaking
            if kind in ("break", "soft", "display"):
                if cur or (kind == "break" and not after_display):
                    lines.append((cur, False))
                cur, x = [], 0
                after_display = kind != "break"  # a newline right after display maths adds no blank line
                if kind == "display" and boxes:
                    lines.append(([((avail - sum(b.width for b in boxes)) // 2, boxes[0])], True))
                continue
            after_display = False
            w = sum(b.width for b in boxes)
            gap = self.space if cur else 0
            if cur and x + gap + w > avail:
                lines.append((cur, False))
                cur, x, gap = [], 0, 0
            x += gap
            for b in (boxes if w <= avail else [p for big in boxes for p in self._fit(big, avail)]):
                if cur and x + b.width > avail:
                    lines.append((cur, False))
                    cur, x = [], 0
                cur.append((x, b))
                x += b.width
        if cur:
            lines.append((cur, False))
        while lines and not lines[-1][0]:
            lines.pop()
        while lines and not lines[0][0]:
            lines.pop(0)

        # vertical placement: each line as tall as its tallest piece; display maths gets extra room
        extra = round((cfg.line_spacing - 1.0) * (self.ascent + self.descent))
        placed: list[tuple[int, list[tuple[int, _Box]]]] = []  # (baseline y, boxes)
        y = cfg.margin
        for k, (boxes, is_display) in enumerate(lines):
            asc = max([self.ascent] + [b.ascent for _, b in boxes])
            desc = max([self.descent] + [b.descent for _, b in boxes])
            if is_display and k:
                y += extra
            placed.append((y + asc, boxes))
            y += asc + desc + extra * (2 if is_display else 1)
        height = max(y - extra + cfg.margin, 2 * cfg.margin + self.ascent + self.descent)

        page = Image.new("L", (cfg.width, height), 255)
        draw = ImageDraw.Draw(page)
        for baseline, boxes in placed:
            for bx, b in boxes:
                if b.text is not None:
                    draw.text((cfg.margin + bx, baseline), b.text, font=self.font, fill=0, anchor="ls")
                elif b.ink is not None:
                    page.paste(0, (cfg.margin + bx, baseline - b.ascent), b.ink)
        return page, fallbacks


def png_bytes(img: Image.Image) -> bytes:
    """PNG with no metadata (so equal pixels give equal bytes)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
