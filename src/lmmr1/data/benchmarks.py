"""Loaders for the evaluation benchmarks of the LMM-R1 paper, from local files in their public layouts.

Each layout is recognised by its columns and converted to LMM-R1 rows (``message`` + ``answer`` +
``choices``), then validated by the same code as training data (so errors name file:row).

| layout     | recognised by                                            | prompt                         | gold |
|------------|----------------------------------------------------------|--------------------------------|------|
| mathvista  | pid, question, answer, question_type, answer_type        | question + (A)..(E) choices    | answer (option text for multi_choice) |
| mathverse  | sample_index, problem_version, question, answer          | query_cot / question           | answer (a letter for multi-choice) |
| mathvision | id, question, options, answer, level, subject            | question + (A)..(E) options    | answer (a letter when options exist) |
| dynamath   | question, ground_truth, answer_type                      | question                       | ground_truth |
| lmmr1      | message, answer                                          | message                        | answer |

Images: ``decoded_image`` (bytes or a PIL image) when present, else ``image`` (a path relative to
the file).  Formats: .jsonl, .json, .parquet (see data.md).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from lmmr1.data.dataset import DataConfig, DataError, PromptDataset, read_rows

LAYOUTS: dict[str, tuple[str, ...]] = {
    "mathvista": ("pid", "question", "answer", "question_type", "answer_type"),
    "mathverse": ("sample_index", "problem_version", "question", "answer"),
    "mathvision": ("id", "question", "options", "answer", "level", "subject"),
    "dynamath": ("question", "ground_truth", "answer_type"),
    "lmmr1": ("message", "answer"),
}


def detect_layout(row: dict[str, Any], path: Path) -> str:
    for name, cols in LAYOUTS.items():
        if all(c in row for c in cols):
            return name
    raise DataError(
        f"{path}: unknown benchmark layout (columns: {sorted(row)[:12]}); known layouts and their required "
        "columns: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in LAYOUTS.items())
    )


def _image_of(row: dict[str, Any]) -> Any:
    img = row.get("decoded_image")
    if img is None or img == {} or (isinstance(img, dict) and not img.get("bytes") and not img.get("path")):
        img = row.get("image")
    return img


def _options_text(options: list[str]) -> str:
    return " ".join(f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(options))


def to_lmmr1_row(row: dict[str, Any], layout: str) -> dict[str, Any]:
    if layout == "lmmr1":
        return row
    text, answer, extra = "", None, {}
    if layout == "mathvista":
        choices = row.get("choices")
        text = row["question"]
        if row.get("question_type") == "multi_choice" and choices:
            text += "\nChoices: " + _options_text(list(choices))
            extra["choices"] = list(choices)
        answer = row["answer"]
        extra.update(answer_type=row.get("answer_type"), precision=row.get("precision"),
                     datasource=f"mathvista/{row.get('question_type', '')}")
    elif layout == "mathverse":
        text = row.get("query_cot") or row["question"]
        answer = row["answer"]
        extra["datasource"] = f"mathverse/{row.get('problem_version', '')}"
    elif layout == "mathvision":
        options = list(row.get("options") or [])
        text = row["question"] + (("\nChoices: " + _options_text(options)) if options else "")
        answer = row["answer"]
        if options:
            extra["choices"] = options
        extra["datasource"] = f"mathvision/level{row.get('level', '')}"
    elif layout == "dynamath":
        text = row["question"]
        answer = row["ground_truth"]
        if "multiple" in str(row.get("answer_type", "")).lower():
            extra["answer_type"] = "choice"
        extra["datasource"] = f"dynamath/{row.get('subject', '')}"
    img = _image_of(row)
    content: Any = [{"type": "text", "text": text}]
    if img is not None and img != "":
        content.insert(0, {"type": "image", "image": img})
    return {"message": [{"role": "user", "content": content}], "answer": answer, **extra}


def load_benchmark(path: str | Path, *, name: str | None = None, system_prompt: str | None = "r1",
                   limit: int | None = None, max_pixels: int | None = None) -> PromptDataset:
    """Read a benchmark file in any known layout into a validated PromptDataset."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"benchmark file {p} does not exist")
    p = p.resolve()  # relative image paths are rewritten against this folder: it must be absolute
    rows, layout = [], None
    for where, row in read_rows(p):
        if isinstance(row, Exception):
            raise DataError(f"{where}: {row}")
        layout = layout or detect_layout(row, p)
        rows.append(to_lmmr1_row(row, layout))
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{p}: no rows")
    # Validate through the training-data path: write the converted rows to a temporary JSONL (relative
    # image paths made absolute against the benchmark's folder; the loaded examples keep resolved
    # image references, so the file is not needed afterwards).
    base = p if p.is_dir() else p.parent
    with tempfile.TemporaryDirectory(prefix="lmmr1_bench_") as tmpdir:
        tmp = Path(tmpdir) / f"{p.stem}.jsonl"
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(_portable(row, base)) + "\n")
        try:
            ds = PromptDataset.load(DataConfig(path=str(tmp), system_prompt=system_prompt, max_pixels=max_pixels,
                                               name=name or p.stem))
        except DataError as e:
            raise DataError(str(e).replace(str(tmp), f"{p} ({layout})")) from None
    for ex in ds.examples:  # point locations at the user's file, not the converted copy
        ex.source = ex.source.replace(str(tmp), f"{p} ({layout})")
    return ds


def _portable(row: dict[str, Any], base: Path) -> dict[str, Any]:
    """JSON-safe copy: image bytes become data URIs, relative image paths become absolute."""
    import base64
    import io

    from PIL import Image

    def fix(item: Any) -> Any:
        if isinstance(item, dict) and item.get("type") == "image":
            ref = item.get("image")
            if isinstance(ref, Image.Image):
                buf = io.BytesIO()
                ref.save(buf, format="PNG")
                ref = buf.getvalue()
            if isinstance(ref, dict) and ref.get("bytes"):
                ref = ref["bytes"]
            if isinstance(ref, (bytes, bytearray)):
                ref = "data:image/png;base64," + base64.b64encode(bytes(ref)).decode()
            elif isinstance(ref, dict) and ref.get("path"):
                ref = ref["path"]
            if isinstance(ref, str) and not ref.startswith(("data:", "file://", "/")):
                ref = str(base / ref)
            return {"type": "image", "image": ref}
        return item

    out = dict(row)
    msgs = out["message"]
    if isinstance(msgs, str):
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError:
            return out  # validation reports it with the row's location
    if not isinstance(msgs, list):
        return out
    out["message"] = [{**m, "content": [fix(i) for i in m["content"]] if isinstance(m.get("content"), list)
                       else m.get("content")} for m in msgs]
    return {k: (v if _jsonable(v) else str(v)) for k, v in out.items()}


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False
