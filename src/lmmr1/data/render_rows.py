"""``lmmr1 data render``: LMM-R1 rows with text problems -> rows whose problem is an image.

Rows are read with the training reader's raw-row reader and validated with its ``parse_row`` (so
a row that renders is a row ``lmmr1 train`` accepts).  The text of the (last) user turn becomes
a page drawn by :class:`lmmr1.data.render.ProblemRenderer`, and that turn becomes
``[the row's own images..., the page, the instruction]``; system turn, answer and every other
field are kept.  The row's own images stay, in their order, *before* the page: a figure the
problem refers to keeps its place ahead of the problem, as in the original row, and the page
sits next to the instruction that points at it.

Workers are a ``spawn`` pool (safe next to torch and on every OS) fed in input order; results
come back in input order, so the output is the same bytes for any number of workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmmr1.data.dataset import DataConfig, DataError, is_image_item, parse_row, read_rows
from lmmr1.data.images import decode_image
from lmmr1.data.render import Fallback, ProblemRenderer, RenderConfig, png_bytes, require_matplotlib
from lmmr1.errors import LmmR1Error

DEFAULT_INSTRUCTION = "Solve the problem in the image."


# --------------------------------------------------------------------------------- row convert
@dataclass(frozen=True)
class RowOptions:
    """Everything a worker needs to convert a row (picklable, sent once per worker)."""

    render: RenderConfig
    out_dir: str  # the output file's folder; image references are relative to it
    images_dir: str
    image_prefix: str  # file names are PREFIX000001.png by input row ordinal (1-based)
    base_dir: str  # the input file's folder (relative references in the input resolve from it)
    instruction: str = DEFAULT_INSTRUCTION
    strict: bool = False
    input_key: str = "message"
    label_key: str = "answer"
    image_key: str = "images"


@dataclass
class RowResult:
    index: int
    where: str
    line: str | None = None  # the output JSONL line
    error: str | None = None
    fallbacks: list[Fallback] = field(default_factory=list)


def _ref_for(path: Path, out_dir: Path) -> str:
    """How the output row names an image file: relative to the output's folder when possible."""
    try:
        return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return path.resolve().as_posix()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy values from parquet
        return obj.tolist()
    raise TypeError(f"a {type(obj).__name__} value cannot be written to JSON")


def convert_row(row: Any, index: int, where: str, opts: RowOptions, renderer: ProblemRenderer) -> RowResult:
    """One input row -> one output JSONL line (or the reason it cannot be converted)."""
    res = RowResult(index, where)
    try:
        if isinstance(row, Exception):
            raise row
        cfg = DataConfig(path=where, input_key=opts.input_key, label_key=opts.label_key, image_key=opts.image_key,
                         system_prompt="none")
        ex = parse_row(row, cfg, Path(opts.base_dir), None)  # the training reader's own validation
        raw = row[opts.input_key]
        was_string = isinstance(raw, str)
        messages = json.loads(raw) if was_string else raw
        messages = [dict(m) for m in ([messages] if isinstance(messages, dict) else messages)]
        user_at = max(k for k, m in enumerate(messages) if m.get("role") == "user")
        content = messages[user_at].get("content")
        if isinstance(content, str):
            text = content
        else:
            text = "\n".join(str(it.get("text", "")) for it in content
                             if isinstance(it, dict) and not is_image_item(it))
        if not text.strip():
            raise DataError(f"field '{opts.input_key}': the user turn has no text to render")

        img, fallbacks = renderer.render(text)
        if fallbacks and opts.strict:
            f = fallbacks[0]
            raise DataError(f"formula {f.formula} cannot be typeset by matplotlib mathtext ({f.reason}); "
                            "fix the LaTeX or drop --strict to draw it as source text")
        res.fallbacks = fallbacks
        images_dir, out_dir = Path(opts.images_dir), Path(opts.out_dir)
        stem = f"{opts.image_prefix}{index + 1:06d}"

        # the row's own images keep their order; files are re-referenced from the output's folder,
        # in-memory images (bytes, a datasets Image column) are written next to the rendered page
        refs = iter(ex.image_refs)
        n_own = 0
        for m in messages:
            c = m.get("content")
            if not isinstance(c, list):
                continue
            new = []
            for it in c:
                if is_image_item(it):
                    ref = next(refs)
                    n_own += 1
                    if isinstance(ref, Path):
                        ref_s = _ref_for(ref, out_dir)
                    else:
                        p = images_dir / f"{stem}_{n_own}.png"
                        p.write_bytes(png_bytes(decode_image(ref)))
                        ref_s = _ref_for(p, out_dir)
                    it = {"type": "image", "image": ref_s}
                new.append(it)
            m["content"] = new
        page = images_dir / f"{stem}.png"
        page.write_bytes(png_bytes(img))
        user_content = messages[user_at]["content"]
        own = [it for it in user_content if is_image_item(it)] if isinstance(user_content, list) else []
        new_content = own + [{"type": "image", "image": _ref_for(page, out_dir)}]
        if opts.instruction:
            new_content.append({"type": "text", "text": opts.instruction})
        messages[user_at]["content"] = new_content

        out = {k: v for k, v in row.items() if k != opts.image_key}
        out[opts.input_key] = json.dumps(messages, ensure_ascii=False) if was_string else messages
        try:
            res.line = json.dumps(out, ensure_ascii=False, default=_json_default)
        except (TypeError, ValueError) as e:
            raise DataError(f"cannot write the row as JSON: {e}") from e
    except DataError as e:
        res.error = str(e)
    return res


# ---------------------------------------------------------------------------- worker processes
_WORKER: tuple[RowOptions, ProblemRenderer] | None = None  # set only inside pool worker processes


def _init_worker(opts: RowOptions) -> None:
    global _WORKER
    _WORKER = (opts, ProblemRenderer(opts.render))


def _work(task: tuple[int, str, Any]) -> RowResult:
    assert _WORKER is not None, "worker not initialised"
    opts, renderer = _WORKER
    return convert_row(task[2], task[0], task[1], opts, renderer)


# ------------------------------------------------------------------------------------- driver
@dataclass
class RenderSummary:
    out: Path
    images_dir: Path
    rows: int  # rows written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (location, reason)
    fallbacks: list[tuple[str, Fallback]] = field(default_factory=list)  # (location, formula)

    @property
    def fallback_rows(self) -> int:
        return len({w for w, _ in self.fallbacks})

    def report_lines(self, limit: int = 20) -> list[str]:
        """The warnings to show a user: the first ``limit`` fall-backs and skips, then the counts.

        The library does not log each one: 40K rows can have thousands, and a caller's logging
        setup (or Python's last-resort handler) would print them all, next to this report.
        """
        out = [f"warning: {w}: formula {f.formula} cannot be typeset ({f.reason}); drawn as source text"
               for w, f in self.fallbacks[:limit]]
        if len(self.fallbacks) > limit:
            out.append(f"warning: ... and {len(self.fallbacks) - limit} more formula(s) drawn as source text")
        out += [f"skipped {w}: {reason}" for w, reason in self.skipped[:limit]]
        if len(self.skipped) > limit:
            out.append(f"skipped ... and {len(self.skipped) - limit} more row(s)")
        out.append(f"wrote {self.rows} rows to {self.out} (images in {self.images_dir}); {len(self.fallbacks)} "
                   f"formula(s) in {self.fallback_rows} row(s) drawn as source text; {len(self.skipped)} row(s) skipped")
        return out


def render_dataset(
    input_path: str | Path,
    out: str | Path,
    cfg: RenderConfig | None = None,
    *,
    images_dir: str | Path | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
    workers: int = 1,
    strict: bool = False,
    skip_invalid: bool = False,
    input_key: str = "message",
    label_key: str = "answer",
    image_key: str = "images",
    progress: Callable[[int, int], None] | None = None,
) -> RenderSummary:
    """Render every row of an LMM-R1 dataset (JSONL, JSON, parquet, ``datasets`` folder) to ``out`` (JSONL).

    Images go to ``images_dir`` (default: ``<out stem>_images/`` next to ``out``) as
    ``<out stem>_<input row ordinal, 6 digits>.png`` (so several outputs can share a folder), and
    are referenced relative to ``out``'s folder.  Output order = input
    order whatever ``workers`` is.  A bad row raises ``DataError`` naming ``file:line`` (or, with
    ``skip_invalid``, is counted in ``skipped``); formulas drawn as source text are listed in
    ``fallbacks`` (``strict``: an error instead); ``summary.report_lines()`` words both for a user.
    ``progress(done, total)`` is called as rows finish.
    """
    cfg = cfg or RenderConfig()
    cfg.check()
    require_matplotlib()
    src, out = Path(input_path).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise DataError(f"dataset {src} does not exist")
    if out.suffix.lower() not in (".jsonl", ".ndjson"):
        raise LmmR1Error(f"--out {out}: the rendered dataset is written as JSONL; give a .jsonl path")
    if out.resolve() == src.resolve():
        raise LmmR1Error(f"--out {out} is the input file; write the rendered rows to a new file")
    if workers < 1:
        raise LmmR1Error(f"workers must be >= 1, got {workers}")
    img_dir = Path(images_dir).expanduser() if images_dir is not None else out.parent / f"{out.stem}_images"
    out.parent.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    opts = RowOptions(render=cfg, out_dir=str(out.parent), images_dir=str(img_dir), image_prefix=f"{out.stem}_",
                      base_dir=str(src if src.is_dir() else src.parent), instruction=instruction, strict=strict,
                      input_key=input_key, label_key=label_key, image_key=image_key)
    tasks = [(i, where, row) for i, (where, row) in enumerate(read_rows(src))]
    total = len(tasks)
    summary = RenderSummary(out=out, images_dir=img_dir, rows=0)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for res in _run(tasks, opts, workers):
                if res.error is not None:
                    if not skip_invalid:
                        raise DataError(f"{res.where}: {res.error}")
                    summary.skipped.append((res.where, res.error))
                else:
                    fh.write(res.line + "\n")
                    summary.rows += 1
                    summary.fallbacks.extend((res.where, f) for f in res.fallbacks)
                if progress is not None:
                    progress(res.index + 1, total)
        if summary.rows == 0:
            raise DataError(f"{src}: no rows rendered ({len(summary.skipped)} skipped)")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def _run(tasks: list[tuple[int, str, Any]], opts: RowOptions, workers: int) -> Iterable[RowResult]:
    """Results in input order; a spawn pool (safe with torch and on every OS) when workers > 1."""
    if workers == 1 or len(tasks) < 2:
        renderer = ProblemRenderer(opts.render)
        for i, where, row in tasks:
            yield convert_row(row, i, where, opts, renderer)
        return
    import multiprocessing as mp

    workers = min(workers, len(tasks))
    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(opts,)) as pool:
        yield from pool.imap(_work, tasks, chunksize=chunk)
