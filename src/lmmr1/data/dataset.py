"""Prompt datasets in the LMM-R1 format (JSONL, JSON, parquet, ``datasets.load_from_disk``).

One row = ``message`` (an OpenAI-style chat list, or that list as a JSON *string*, as LMM-R1
writes it), ``answer``, optional ``datasource``/``choices``/``answer_type``/``env``.  Image items
``{"type": "image", "image": X}`` reference a file, a data URI or a column of images.

Every row is validated when the dataset is loaded: a missing or unreadable image, no user turn,
an empty answer, placeholders that do not match the images — each is an error that names
``file:line`` and the field.  With ``skip_invalid`` they become counted, logged skips instead.
Nothing is ever dropped silently.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmmr1.data.images import ImageError, decode_image, probe_image, resolve_image
from lmmr1.data.prompts import resolve_system_prompt, with_system_prompt
from lmmr1.errors import LmmR1Error, utf8_text

log = logging.getLogger("lmmr1.data")

KNOWN_FIELDS = ("datasource", "choices", "answer_type", "env")


class DataError(LmmR1Error):
    """A dataset row (or file) is invalid; the message starts with file:line."""


@dataclass
class DataConfig:
    path: str
    input_key: str = "message"
    label_key: str = "answer"
    image_key: str = "images"  # a column of images (datasets / parquet), used by empty image items
    system_prompt: str | None = "r1"  # r1, r1_boxed, none, or custom text
    skip_invalid: bool = False
    max_pixels: int | None = None  # downscale on decode (the processor then fits the model's budget)
    max_prompt_tokens: int | None = None  # checked with check_prompt_lengths()
    name: str | None = None  # defaults to the file stem; used in metrics
    image_root: str | None = None  # absolute image paths of another machine are looked up under it


@dataclass
class Example:
    """One validated prompt row.  Images are resolved and probed, decoded only when used."""

    messages: list[dict[str, Any]]  # image items keep their position; pixels come from images()
    answer: Any
    source: str  # "file:line" (or "file:row N")
    datasource: str
    fields: dict[str, Any] = field(default_factory=dict)
    image_refs: list[Any] = field(default_factory=list)  # resolved: Path | bytes | PIL.Image
    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def has_images(self) -> bool:
        return bool(self.image_refs)

    def images(self, max_pixels: int | None = None) -> list[Any]:
        """Decode this prompt's images (call once per prompt and share across its samples)."""
        out = []
        for k, ref in enumerate(self.image_refs):
            try:
                out.append(decode_image(ref, max_pixels))
            except ImageError as e:
                raise DataError(f"{self.source}: image {k + 1}: {e}") from e
        return out

    def prompt_text(self) -> str:
        """The user turns as plain text (for rewards and logs)."""
        parts = []
        for m in self.messages:
            if m.get("role") != "user":
                continue
            c = m.get("content")
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts.extend(str(i.get("text", "")) for i in c if isinstance(i, dict) and i.get("type") == "text")
        return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------- readers
def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
    """(location, row or the parse error) for every row of a supported file or directory."""
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            yield from _read_hf_dataset(path)
            return
        raise DataError(f"{path} is a directory but not a datasets.save_to_disk() folder")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open("rb") as fh:  # bytes: a non-UTF-8 line is that line's error, not a traceback
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a BOM
                except UnicodeDecodeError as e:
                    yield f"{path}:{lineno}", DataError(
                        f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); re-save the file as UTF-8")
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip("\r\n"))  # columns then count within the line
                except json.JSONDecodeError as e:
                    yield f"{path}:{lineno}", DataError(f"invalid JSON ({e.msg} at column {e.colno})")
                    continue
                yield f"{path}:{lineno}", row
    elif suffix == ".json":
        text = utf8_text(path.read_bytes(), str(path), DataError)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json dataset must be a list of rows (or {{'data': [...]}})")
        for i, row in enumerate(data):
            yield f"{path}:row {i + 1}", row
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError("reading parquet needs pyarrow: pip install 'lmmr1[data]'") from e
        table = pq.read_table(path)
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}:row {i + 1}", row
    else:
        raise DataError(f"{path}: unsupported dataset format {suffix!r}; use .jsonl, .json, .parquet or a "
                        "datasets.save_to_disk() directory")


def _read_hf_dataset(path: Path) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
    try:
        import datasets
    except ImportError as e:
        raise DataError("reading a datasets directory needs the datasets package: pip install 'lmmr1[data]'") from e
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {list(ds)})")
        ds = ds["train"]
    for i, row in enumerate(ds):
        yield f"{path}:row {i + 1}", row


# ----------------------------------------------------------------------------------------- parsing
def is_image_item(item: Any) -> bool:
    return isinstance(item, dict) and (item.get("type") in ("image", "image_url") or "image" in item
                                       or "image_url" in item)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_answer(answer: Any, key: str) -> Any:
    """The gold answer as a string.  Numbers are written as text (``3`` -> ``"3"``); a box for the
    ``iou`` reward (a list of 4 numbers) is kept as it is.  An object, any other list, a bool, null or
    blank is refused: the rule rewards compare strings, and ``str({})`` would be scored as if it
    were a real answer."""
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise DataError(f"field '{key}' is missing or empty; a row without a gold answer cannot be scored")
    if isinstance(answer, (list, tuple)) and len(answer) == 4 and all(_is_number(v) for v in answer):
        return list(answer)  # a box [x1, y1, x2, y2]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        kind = {dict: "an object", list: "a list", tuple: "a list", bool: "a bool"}.get(type(answer),
                                                                                       type(answer).__name__)
        raise DataError(f"field '{key}' is {kind} ({json.dumps(answer, default=str)[:60]}); the gold answer must "
                        "be a string or a number (or a box [x1, y1, x2, y2] for the iou reward)")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise DataError(f"field '{key}' is {answer}; the gold answer must be a finite number or a string")
    return answer if isinstance(answer, str) else str(answer)


def parse_row(row: Any, cfg: DataConfig, base_dir: Path, system: str | None) -> Example:
    """Validate one row; raises DataError (without location; the caller prefixes it)."""
    if not isinstance(row, dict):
        raise DataError(f"a row must be a JSON object, got {type(row).__name__}")
    if cfg.input_key not in row:
        raise DataError(f"field '{cfg.input_key}' is missing (set input_key if your column is named otherwise)")
    raw = row[cfg.input_key]
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"field '{cfg.input_key}' is a string but not valid JSON ({e.msg})") from e
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(m, dict) and "role" in m for m in raw):
        raise DataError(f"field '{cfg.input_key}' must be a list of {{role, content}} messages")
    if not any(m.get("role") == "user" for m in raw):
        raise DataError(f"field '{cfg.input_key}' has no user turn")

    column = row.get(cfg.image_key)
    column = [] if column is None else (list(column) if isinstance(column, (list, tuple)) else [column])
    next_col = 0
    messages, refs = [], []
    for m in raw:
        content = m.get("content")
        if isinstance(content, list):
            items = []
            for item in content:
                if is_image_item(item):
                    ref = item.get("image")
                    if ref is None and "image_url" in item:
                        ref = item["image_url"]
                    if ref is None or ref == "":
                        if next_col >= len(column):
                            n_ph = sum(1 for mm in raw if isinstance(mm.get("content"), list)
                                       for it in mm["content"] if is_image_item(it))
                            raise DataError(f"field '{cfg.input_key}' has {n_ph} image placeholder(s) but column "
                                            f"'{cfg.image_key}' has {len(column)} image(s)")
                        ref = column[next_col]
                        next_col += 1
                    refs.append(ref)
                    items.append({"type": "image"})
                elif isinstance(item, dict) and item.get("type", "text") == "text":
                    items.append({"type": "text", "text": str(item.get("text", ""))})
                else:
                    raise DataError(f"field '{cfg.input_key}': unsupported content item {item!r:.80}")
            messages.append({"role": m["role"], "content": items})
        elif isinstance(content, str):
            messages.append({"role": m["role"], "content": content})
        else:
            raise DataError(f"field '{cfg.input_key}': message content must be a string or a list")
    if next_col < len(column) and any(c is not None for c in column[next_col:]):
        raise DataError(f"column '{cfg.image_key}' has {len(column)} image(s) but field '{cfg.input_key}' has "
                        f"only {next_col} image placeholder(s)")

    answer = check_answer(row.get(cfg.label_key), cfg.label_key)

    resolved, sizes = [], []
    for k, ref in enumerate(refs):
        try:
            r = resolve_image(ref, base_dir, Path(cfg.image_root).expanduser() if cfg.image_root else None)
            sizes.append(probe_image(r))
        except ImageError as e:
            raise DataError(f"field '{cfg.input_key}', image {k + 1}: {e}") from e
        resolved.append(r)

    fields = {k: v for k, v in row.items() if k not in (cfg.input_key, cfg.label_key, cfg.image_key)}
    for key in ("choices", "env"):
        if isinstance(fields.get(key), str) and fields[key].strip().startswith(("[", "{")):
            try:
                fields[key] = json.loads(fields[key])
            except json.JSONDecodeError:
                pass
    return Example(
        messages=with_system_prompt(messages, system),
        answer=answer,
        source="",
        datasource=str(row.get("datasource") or cfg.name or ""),
        fields=fields,
        image_refs=resolved,
        image_sizes=sizes,
    )


class PromptDataset:
    """Validated prompt rows of one file; ``skipped`` lists (location, reason) of skipped rows."""

    def __init__(self, examples: list[Example], skipped: list[tuple[str, str]], cfg: DataConfig):
        self.examples, self.skipped, self.cfg = examples, skipped, cfg
        self.name = cfg.name or Path(cfg.path).stem

    @classmethod
    def load(cls, cfg: DataConfig | str, **overrides: Any) -> PromptDataset:
        if isinstance(cfg, str):
            cfg = DataConfig(path=cfg, **overrides)
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise DataError(f"dataset {path} does not exist")
        system = resolve_system_prompt(cfg.system_prompt)
        base_dir = path if path.is_dir() else path.parent
        if cfg.name is None:
            cfg.name = path.stem
        examples, skipped = [], []
        for where, row in read_rows(path):
            try:
                if isinstance(row, Exception):
                    raise row
                ex = parse_row(row, cfg, base_dir, system)
            except DataError as e:
                if not cfg.skip_invalid:
                    raise DataError(f"{where}: {e}") from None
                skipped.append((where, str(e)))
                log.warning("skipping %s: %s", where, e)
                continue
            ex.source = where
            examples.append(ex)
        if not examples:
            raise DataError(f"{path}: no valid rows ({len(skipped)} skipped)")
        return cls(examples, skipped, cfg)

    def check_prompt_lengths(self, processor, max_prompt_tokens: int | None = None,
                             context_tokens: int | None = None) -> int:
        """Reject (or skip) rows whose prompt, image tokens included, exceeds the limit.

        The limit is ``max_prompt_tokens`` and, always, the model's context (``context_tokens``, its
        ``max_position_embeddings``; see :func:`model_context_tokens`): a longer prompt would be
        trained on positions the model never saw, silently.  Uses image sizes from the headers, so
        no pixels are decoded.  Returns the longest prompt.
        """
        limit = max_prompt_tokens or self.cfg.max_prompt_tokens
        keep, longest = [], 0
        for ex in self.examples:
            if ex.has_images and not processor.is_multimodal:
                msg = f"{ex.source}: has {len(ex.image_refs)} image(s) but the model is text-only"
                if not self.cfg.skip_invalid:
                    raise DataError(msg)
                self.skipped.append((ex.source, msg))
                continue
            n, n_img = processor.count_prompt_tokens(ex.messages, ex.image_sizes)
            if limit is not None and n > limit:
                msg = (f"{ex.source}: field '{self.cfg.input_key}': prompt is {n} tokens ({n_img} image tokens), "
                       f"over max_prompt_tokens={limit}; raise the limit or lower max_pixels")
                if not self.cfg.skip_invalid:
                    raise DataError(msg)
                self.skipped.append((ex.source, msg))
                log.warning("skipping %s", msg)
                continue
            if context_tokens is not None and n >= context_tokens:
                msg = (f"{ex.source}: field '{self.cfg.input_key}': prompt is {n} tokens ({n_img} image tokens), "
                       f"but the model's context is {context_tokens} tokens (max_position_embeddings), which "
                       "leaves no room to generate; shorten the prompt or lower max_pixels")
                if not self.cfg.skip_invalid:
                    raise DataError(msg)
                self.skipped.append((ex.source, msg))
                log.warning("skipping %s", msg)
                continue
            longest = max(longest, n)
            keep.append(ex)
        self.examples = keep
        if not keep:
            raise DataError(f"{self.cfg.path}: no rows left after the prompt-length check")
        return longest

    def decode_all(self) -> int:
        """Fully decode every image (what ``train --dry-run`` does): truncated or corrupt files fail
        here, naming the row and the image, instead of mid-training.  Returns the images decoded;
        under ``skip_invalid`` failing rows are skipped and counted."""
        keep, n = [], 0
        for ex in self.examples:
            try:
                n += len(ex.images(max_pixels=1))  # decode fully, keep nothing big in memory
            except DataError as e:
                if not self.cfg.skip_invalid:
                    raise
                self.skipped.append((ex.source, str(e)))
                log.warning("skipping %s", e)
                continue
            keep.append(ex)
        self.examples = keep
        if not keep:
            raise DataError(f"{self.cfg.path}: no rows left after decoding the images")
        return n

    def skip_summary(self) -> str:
        return f"{self.name}: {len(self.examples)} rows, {len(self.skipped)} skipped"

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


def model_context_tokens(model_dir: str | Path) -> int | None:
    """The language model's context length (``max_position_embeddings``) from ``config.json``,
    without loading weights; None when the file does not say."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (cfg, cfg.get("text_config") or {}):
        value = section.get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    return None
