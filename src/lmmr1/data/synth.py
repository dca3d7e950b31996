"""Synthetic verifiable task suites, each in a text version and an image version of the same problem.

LMM-R1's FRE-Multi idea — the same reasoning problem given as text or rendered into an image —
is made with PIL here (no Typst, no PyMuPDF).  Every problem has an exact answer and a worked
solution in the ``<think>…</think><answer>…</answer>`` format (the ``response`` field, used by a
cold-start SFT stage).  Splits are disjoint and deterministic: a problem belongs to the split that
a hash of its content selects, so train and test never share a problem for any seed.

Suites:
- ``arithmetic``: ``a + b``, ``a - b``, ``a * b`` (knobs: ``max_operand``, ``ops``);
- ``counting``: shapes on a canvas, "how many <colour> <shape>s" (knobs: ``max_count``, ``distractors``,
  ``grid``: shapes sit in the cells of a grid x grid layout);
- ``geometry``: a right triangle with labelled legs (Pythagorean triples), asking for the
  hypotenuse or the area (knob: ``scale``);
- ``jigsaw`` (Jigsaw-R1): a picture cut into rows x cols tiles shown shuffled; the answer is the
  permutation putting them back (knobs: ``rows``, ``cols``); score it with the ``jigsaw`` reward.
- ``sokoban``, ``football``: agent tasks with an ``env`` field (:mod:`lmmr1.data.synth_agents`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lmmr1.errors import LmmR1Error

SPLITS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
COLORS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60)}
SHAPES = ("circle", "square")


@dataclass
class Problem:
    key: str  # identity used for the split hash
    question: str  # the text version's question
    image_question: str  # the question asked next to the image version
    answer: str
    response: str  # worked solution for SFT
    draw: Any = None  # callable(size) -> PIL image, for the image version
    fields: dict[str, Any] = field(default_factory=dict)
    split_key: str | None = None  # what decides the split when several problems share one source (default: key)


def _split_of(key: str) -> str:
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    for name, (lo, hi) in SPLITS.items():
        if lo <= u < hi:
            return name
    return "test"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_text(text: str, size: int = 112) -> Image.Image:
    """The problem text drawn on a white canvas, large enough to read at the model's pixel budget."""
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    font_size = size // 3
    while font_size > 8:
        font = _font(font_size)
        box = d.textbbox((0, 0), text, font=font)
        if box[2] - box[0] <= size - 6:
            break
        font_size -= 2
    w, h = box[2] - box[0], box[3] - box[1]
    d.text(((size - w) / 2 - box[0], (size - h) / 2 - box[1]), text, fill="black", font=font)
    return img


# ------------------------------------------------------------------------------------------ suites
def arithmetic(rng: random.Random, max_operand: int = 9, ops: str = "+-") -> Problem:
    op = rng.choice(ops)
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    if op == "-" and b > a:
        a, b = b, a
    val = {"+": a + b, "-": a - b, "*": a * b}[op]
    expr = f"{a}{op}{b}"
    return Problem(
        key=f"arith:{expr}", question=f"What is {a} {op} {b}?", image_question="Solve the problem in the image.",
        answer=str(val), response=f"<think>{a} {op} {b} = {val}</think><answer>{val}</answer>",
        draw=lambda size: render_text(f"{a}{op}{b}", size), fields={"expression": expr},
    )


def counting(rng: random.Random, max_count: int = 5, distractors: int = 2, grid: int = 4) -> Problem:
    if grid < 1 or max_count < 1 or distractors < 0 or max_count + distractors > grid * grid:
        raise LmmR1Error(f"counting: max_count ({max_count}) + distractors ({distractors}) must fit the "
                         f"{grid}x{grid} grid (at most {grid * grid} shapes), max_count >= 1")
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    count = rng.randint(1, max_count)
    others = [(c, s) for c in COLORS for s in SHAPES if (c, s) != (color, shape)]
    items = [(color, shape)] * count + [rng.choice(others) for _ in range(rng.randint(0, distractors))]
    rng.shuffle(items)
    cells = rng.sample(range(grid * grid), len(items))  # one shape per grid cell keeps shapes apart

    def draw(size: int, items=tuple(items), cells=tuple(cells)) -> Image.Image:
        img = Image.new("RGB", (size, size), "white")
        d = ImageDraw.Draw(img)
        step = size / grid
        r = step * 0.36
        for (c, s), cell in zip(items, cells, strict=True):
            cx, cy = (cell % grid + 0.5) * step, (cell // grid + 0.5) * step
            box = (cx - r, cy - r, cx + r, cy + r)
            (d.ellipse if s == "circle" else d.rectangle)(box, fill=COLORS[c])
        return img

    desc = ", ".join(f"a {c} {s}" for c, s in items)
    q = f"How many {color} {shape}s are there?"
    return Problem(
        key=f"count:{'' if grid == 4 else f'g{grid}:'}{color}:{shape}:{'|'.join(f'{c}{s}{p}' for (c, s), p in zip(items, cells, strict=True))}",
        question=f"The picture shows {desc}. {q}", image_question=q, answer=str(count),
        response=f"<think>I count the {color} {shape}s: {count}.</think><answer>{count}</answer>",
        draw=draw, fields={"color": color, "shape": shape},
    )


_TRIPLES = ((3, 4, 5), (6, 8, 10), (5, 12, 13), (8, 15, 17), (9, 12, 15), (12, 16, 20), (7, 24, 25))


def geometry(rng: random.Random, scale: int = 4) -> Problem:
    k = rng.randint(1, scale)
    a, b, c = (x * k for x in rng.choice(_TRIPLES))
    if rng.random() < 0.5:
        a, b = b, a
    ask = rng.choice(("hypotenuse", "area"))
    ans = c if ask == "hypotenuse" else a * b // 2  # every leg pair of these triples has an even product

    def draw(size: int, a=a, b=b) -> Image.Image:
        img = Image.new("RGB", (size, size), "white")
        d = ImageDraw.Draw(img)
        m = size * 0.15
        w, h = size - 2 * m, size - 2 * m
        sx, sy = (w, h * b / a) if a >= b else (w * a / b, h)
        p0, p1, p2 = (m, m + sy), (m + sx, m + sy), (m, m)
        d.polygon([p0, p1, p2], outline="black", width=2)
        font = _font(max(10, size // 8))
        d.text(((p0[0] + p1[0]) / 2 - 6, p0[1] + 2), str(a), fill="black", font=font)
        d.text((p0[0] - m * 0.9, (p0[1] + p2[1]) / 2 - 6), str(b), fill="black", font=font)
        return img

    what = "the hypotenuse" if ask == "hypotenuse" else "the area"
    work = (f"{a}^2 + {b}^2 = {a * a + b * b} = {c}^2, so the hypotenuse is {c}" if ask == "hypotenuse"
            else f"area = {a} * {b} / 2 = {ans}")
    return Problem(
        key=f"geo:{a}:{b}:{ask}", question=f"A right triangle has legs {a} and {b}. What is {what}?",
        image_question=f"The right triangle in the image has its legs labelled. What is {what}?",
        answer=str(ans), response=f"<think>{work}.</think><answer>{ans}</answer>", draw=draw,
        fields={"ask": ask},
    )


def _jigsaw_picture(size: int, cols: int, rows: int, disc: tuple[int, int, str]) -> Image.Image:
    """A colour ramp (red grows left to right, blue top to bottom) and one disc: every tile differs,
    and where a tile belongs can be read off its colours (the ramp) and the disc's edges."""
    img = Image.new("RGB", (size, size))
    px = img.load()
    for y in range(size):
        for x in range(size):
            px[x, y] = (40 + 200 * x // size, 90, 40 + 200 * y // size)
    d = ImageDraw.Draw(img)
    cx, cy, color = (disc[0] + 0.5) * size / 3, (disc[1] + 0.5) * size / 3, COLORS[disc[2]]
    r = size / 5
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    return img


def jigsaw(rng: random.Random, rows: int = 2, cols: int = 2) -> Problem:
    """Tiles of a picture, shown in shuffled order (row-major in a rows x cols grid).  The answer lists,
    for each shown tile in order, its position in the original picture (row-major, 0-based), e.g.
    "2 0 3 1".  The text version gives each tile's ramp levels (its red and blue), so the same
    permutation can be worked out from text."""
    if rows < 1 or cols < 1 or rows * cols < 2 or rows * cols > 16:
        raise LmmR1Error(f"jigsaw: rows x cols must be 2..16 tiles, got {rows} x {cols}")
    k = rows * cols
    perm = list(range(k))
    while perm == sorted(perm):  # a solved puzzle is no puzzle
        rng.shuffle(perm)
    disc = (rng.randrange(3), rng.randrange(3), rng.choice(list(COLORS)))

    def draw(size: int, perm=tuple(perm), disc=disc) -> Image.Image:
        whole = _jigsaw_picture(size, cols, rows, disc)
        tw, th = size // cols, size // rows
        out = Image.new("RGB", (size, size), "white")
        for shown, orig in enumerate(perm):
            box = ((orig % cols) * tw, (orig // cols) * th, (orig % cols + 1) * tw, (orig // cols + 1) * th)
            out.paste(whole.crop(box), ((shown % cols) * tw, (shown // cols) * th))
        return out

    levels = ", ".join(f"tile {i}: red level {p % cols}, blue level {p // cols}" for i, p in enumerate(perm))
    answer = " ".join(map(str, perm))
    rule = (f"A picture was cut into {rows} x {cols} tiles (positions numbered row by row from 0) and shuffled. "
            "For each tile in the order shown, give its original position, separated by spaces.")
    return Problem(
        key=f"jigsaw:{rows}x{cols}:{answer}:{disc}",
        question=f"{rule} Red grows from left to right and blue from top to bottom; {levels}.",
        image_question=f"{rule} The image shows the shuffled tiles in a {rows} x {cols} grid.",
        answer=answer, response=f"<think>{levels}.</think><answer>{answer}</answer>", draw=draw,
        fields={"rows": rows, "cols": cols},
    )


SUITES = {"arithmetic": arithmetic, "counting": counting, "geometry": geometry, "jigsaw": jigsaw}
from lmmr1.data import synth_agents  # noqa: E402  (agent suites build on Problem above)

SUITES.update(sokoban=synth_agents.sokoban, football=synth_agents.football)
SUITES.update(sokoban_turns=synth_agents.sokoban_turns)  # multi-turn rows (rollout/episodes.py)


def knob_names(suite: str) -> dict[str, Any]:
    """The difficulty knobs of a suite with their defaults (the generator's keyword arguments)."""
    params = list(inspect.signature(SUITES[suite]).parameters.values())[1:]  # after rng
    return {q.name: q.default for q in params}


def problems(suite: str, split: str, n: int, seed: int = 0, **knobs: Any) -> Iterator[Problem]:
    """n distinct problems of ``split`` (fewer if the suite has fewer distinct problems)."""
    if suite not in SUITES:
        raise LmmR1Error(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    if split not in SPLITS:
        raise LmmR1Error(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    valid = knob_names(suite)
    unknown = sorted(set(knobs) - set(valid))
    if unknown:
        raise LmmR1Error(f"suite {suite}: unknown knob(s) {', '.join(unknown)}; valid knobs: "
                         + ", ".join(f"{k} (default {v!r})" for k, v in valid.items()))
    rng = random.Random(f"{suite}:{seed}")
    seen: set[str] = set()
    misses = 0
    while len(seen) < n and misses < 5000:  # 5000 draws in a row without a new problem: space exhausted
        try:
            p = SUITES[suite](rng, **knobs)
        except TypeError as e:
            raise LmmR1Error(f"suite {suite}: bad knob value ({e}); valid knobs: {', '.join(valid)}") from e
        if p.key in seen or _split_of(p.split_key or p.key) != split:
            misses += 1
            continue
        misses = 0
        seen.add(p.key)
        yield p


def shortfall_message(suite: str, split: str, asked: int, made: int, knobs: dict[str, Any]) -> str:
    """Why a suite produced fewer problems than asked, and which knobs enlarge it."""
    set_knobs = ", ".join(f"{k}={v!r}" for k, v in knobs.items()) or "default knobs"
    return (f"{suite}/{split}: produced {made} of {asked} requested problems: with {set_knobs} the suite has no "
            f"more distinct {split} problems; raise a knob ({', '.join(knob_names(suite))}) for more")


def write_suite(out_dir: str | Path, suite: str, split: str, n: int, modality: str = "both", seed: int = 0,
                image_size: int = 112, name: str | None = None, **knobs: Any) -> dict[str, Path]:
    """Write ``{name}_{split}_text.jsonl`` and/or ``{name}_{split}_image.jsonl`` (+ PNGs) in LMM-R1 format.

    ``name`` defaults to the suite; with the same seed a smaller ``n`` gives a prefix of a larger one.
    A suite with fewer distinct problems than ``n`` writes what it has: callers compare the line
    count with ``n`` and warn with :func:`shortfall_message` (the CLI and the pipeline do).
    """
    name = name or suite
    if modality not in ("text", "image", "both"):
        raise LmmR1Error("modality must be text, image or both")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probs = list(problems(suite, split, n, seed, **knobs))
    written: dict[str, Path] = {}
    for mod in (("text", "image") if modality == "both" else (modality,)):
        path = out / f"{name}_{split}_{mod}.jsonl"
        img_dir = out / "images" / f"{name}_{split}"
        if mod == "image":
            img_dir.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for i, p in enumerate(probs):
                if mod == "text":
                    content: Any = p.question
                else:
                    rel = f"images/{name}_{split}/{i:05d}.png"
                    p.draw(image_size).save(out / rel)
                    content = [{"type": "image", "image": rel}, {"type": "text", "text": p.image_question}]
                row = {"message": json.dumps([{"role": "user", "content": content}]), "answer": p.answer,
                       "response": p.response, "datasource": f"{suite}_{mod}", **p.fields}
                if isinstance(row.get("env"), dict):  # agent suites: the env shows what the row shows
                    row["env"] = {**row["env"], "view": mod}
                fh.write(json.dumps(row) + "\n")
        written[mod] = path
    return written
