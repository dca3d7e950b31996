"""``lmmr1 data prepare``: the released LMM-R1 data files -> the file names the recipes read.

The reference scripts read DeepScaleR-40K and VerMulti as JSONL rows whose ``message`` is a JSON
string of chat turns (the reference's math system prompt included) and whose images are absolute
paths on the authors' machine (``/root/projects/.../images/1.jpg``).  This module copies such rows
unchanged except for the image paths, which are resolved (``image_root`` remaps foreign absolute
paths, see ``images.under_root``) and written as absolute paths that exist here, so every later
command (dry run, train, eval) reads the files without further options.  A row whose image
cannot be found stops the run naming ``file:line`` (or is skipped and counted): an image silently
missing from a prompt would train the model on a question it cannot see.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmmr1.data.dataset import DataError, is_image_item, read_rows
from lmmr1.data.images import ImageError, resolve_image

# released file stem (as the reference scripts name them) -> the recipes' file stem
RELEASED: dict[str, str] = {
    "deepscaler_message": "deepscaler_40k",  # FRE-Text (train_fre_text.sh)
    "mathv60k_message": "vermulti_percereason",  # MGT-PerceReason (train_mgt_percereas.sh)
    "mathv_geo_message": "vermulti_geo",  # MGT-Geo and the direct-RL baseline (train_mgt_geo.sh)
}


@dataclass
class Prepared:
    source: Path
    out: Path
    rows: int = 0
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _remap(ref: Any, base_dir: Path, image_root: Path | None) -> str:
    if not isinstance(ref, str):
        raise DataError("an image that is not a path (embedded bytes); train on such a file directly")
    try:
        found = resolve_image(ref, base_dir, image_root)
    except ImageError as e:
        raise DataError(str(e)) from None
    return str(Path(found).resolve())


def _remap_row(row: dict[str, Any], input_key: str, base_dir: Path, image_root: Path | None) -> int:
    """Rewrite the image references of one row in place; returns how many there were."""
    if input_key not in row:
        raise DataError(f"field '{input_key}' is missing")
    raw, was_text = row[input_key], isinstance(row[input_key], str)
    if was_text:
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"field '{input_key}' is a string but not valid JSON ({e.msg})") from None
    turns = [raw] if isinstance(raw, dict) else raw
    if not isinstance(turns, list):
        raise DataError(f"field '{input_key}' must be a list of {{role, content}} messages")
    n = 0
    for turn in turns:
        for item in turn.get("content") if isinstance(turn, dict) and isinstance(turn.get("content"), list) else []:
            if not is_image_item(item):
                continue
            n += 1
            if isinstance(item.get("image"), str) and item["image"]:
                item["image"] = _remap(item["image"], base_dir, image_root)
            elif isinstance(item.get("image_url"), str):
                item["image_url"] = _remap(item["image_url"], base_dir, image_root)
            elif isinstance(item.get("image_url"), dict) and isinstance(item["image_url"].get("url"), str):
                item["image_url"]["url"] = _remap(item["image_url"]["url"], base_dir, image_root)
    row[input_key] = json.dumps(turns if not isinstance(raw, dict) else raw, ensure_ascii=False) if was_text else raw
    return n


def prepare_file(source: str | Path, out: str | Path, image_root: str | Path | None = None,
                 input_key: str = "message", skip_invalid: bool = False) -> Prepared:
    """Copy one released JSONL/JSON file to ``out`` with every image path resolved here."""
    src, dst = Path(source).expanduser(), Path(out).expanduser()
    if not src.is_file():
        raise DataError(f"{src} does not exist" if not src.exists() else f"{src} is not a file")
    if src.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
        raise DataError(f"{src}: prepare reads the released JSONL/JSON files; a parquet or datasets copy can be "
                        "trained on directly (set data[].image_root for its absolute image paths)")
    if dst.resolve() == src.resolve():
        raise DataError(f"--out {dst} is the input file; write the prepared rows elsewhere")
    root = Path(image_root).expanduser().resolve() if image_root else None
    if root is not None and not root.is_dir():
        raise DataError(f"image root {root} is not a folder")
    result = Prepared(src, dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for where, row in read_rows(src):
                try:
                    if isinstance(row, Exception):
                        raise row
                    if not isinstance(row, dict):
                        raise DataError(f"a row must be a JSON object, got {type(row).__name__}")
                    result.images += _remap_row(row, input_key, src.parent, root)
                except DataError as e:
                    if not skip_invalid:
                        raise DataError(f"{where}: {e}") from None
                    result.skipped.append((where, str(e)))
                    continue
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                result.rows += 1
        os.replace(tmp, dst)  # a half-written file never carries the recipe's name
    finally:
        tmp.unlink(missing_ok=True)
    return result


def prepare_released(download_dir: str | Path, out_dir: str | Path, image_root: str | Path | None = None,
                     skip_invalid: bool = False) -> list[Prepared]:
    """Every released file found under ``download_dir`` (by its reference name), prepared into
    ``out_dir`` under the recipes' names (``RELEASED``)."""
    base = Path(download_dir).expanduser()
    if not base.is_dir():
        raise DataError(f"--lmm-r1 {base} is not a folder (the folder you downloaded the LMM-R1 datasets into)")
    found: dict[str, Path] = {}
    for path in sorted(base.rglob("*")):
        if path.is_file() and path.stem in RELEASED and path.suffix.lower() in (".jsonl", ".json"):
            if path.stem in found:
                raise DataError(f"two files named {path.stem}: {found[path.stem]} and {path}; pass one with "
                                "`lmmr1 data prepare FILE --out ...`")
            found[path.stem] = path
    if not found:
        raise DataError(f"no released LMM-R1 file under {base} (looked for "
                        f"{', '.join(s + '.jsonl' for s in RELEASED)})")
    out = Path(out_dir).expanduser()
    return [prepare_file(src, out / f"{RELEASED[stem]}.jsonl", image_root, skip_invalid=skip_invalid)
            for stem, src in found.items()]
