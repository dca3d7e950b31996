"""Image references -> RGB PIL images, each decoded once per prompt.

References come as ``file:///abs/path``, a path relative to the dataset file, an absolute path,
a ``data:image/...;base64,`` URI, a PIL image, raw bytes, or a Hugging Face ``datasets`` Image
dict (``{"bytes": ..., "path": ...}``).  Camera JPEGs carry their orientation in EXIF, so it is
applied; RGBA/LA/P images are composited on white (dropping alpha would paint transparent
regions black); everything else becomes RGB.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from PIL import Image, ImageOps, UnidentifiedImageError


class ImageError(ValueError):
    """An image reference cannot be resolved or decoded; the message says why."""


def resolve_image(ref: Any, base_dir: Path | None) -> Path | bytes | Image.Image:
    """Turn a reference into a path (checked to exist), raw bytes, or a PIL image. No decoding."""
    if isinstance(ref, Image.Image):
        return ref
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        if ref.get("path"):
            return resolve_image(ref["path"], base_dir)
        if ref.get("url"):  # OpenAI image_url style
            return resolve_image(ref["url"], base_dir)
        raise ImageError(f"image object {sorted(ref)} has no 'bytes', 'path' or 'url'")
    if not isinstance(ref, str) or not ref.strip():
        raise ImageError(f"image reference must be a path, URL or data URI, got {type(ref).__name__}")
    ref = ref.strip()
    if ref.startswith("data:"):
        head, _, payload = ref.partition(",")
        if ";base64" not in head or not payload:
            raise ImageError("data URI must look like data:image/png;base64,<payload>")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageError(f"data URI has invalid base64 ({e})") from e
    if ref.startswith(("http://", "https://")):
        raise ImageError(f"remote image {ref[:80]} is not fetched; download it and use a local path")
    if ref.startswith("file://"):
        path = Path(unquote(urlparse(ref).path))
    else:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist")
    return path


def probe_image(resolved: Path | bytes | Image.Image) -> tuple[int, int]:
    """(width, height) from the header only; raises ImageError if the file is not an image."""
    if isinstance(resolved, Image.Image):
        return resolved.size
    try:
        with Image.open(resolved if isinstance(resolved, Path) else io.BytesIO(resolved)) as im:
            size = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF rotation by 90/270 swaps w and h
                size = (size[1], size[0])
            return size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"not a readable image ({type(e).__name__}: {e})") from e


def to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def fit_pixels(img: Image.Image, max_pixels: int | None) -> Image.Image:
    """Downscale (keeping the aspect ratio) so that width*height <= max_pixels."""
    if max_pixels is None or img.width * img.height <= max_pixels:
        return img
    scale = math.sqrt(max_pixels / (img.width * img.height))
    size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)


def decode_image(resolved: Path | bytes | Image.Image, max_pixels: int | None = None) -> Image.Image:
    """Fully decode to an RGB image within the pixel budget."""
    try:
        if isinstance(resolved, Image.Image):
            img = resolved
        else:
            img = Image.open(resolved if isinstance(resolved, Path) else io.BytesIO(resolved))
            img.load()
        return fit_pixels(to_rgb(img), max_pixels)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot decode image ({type(e).__name__}: {e})") from e
