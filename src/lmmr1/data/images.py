"""Image references -> RGB PIL images, each decoded once per prompt.

References come as ``file:///abs/path``, a path relative to the dataset file, an absolute path,
a ``data:image/...;base64,`` URI, a PIL image, raw bytes, or a Hugging Face ``datasets`` Image
dict (``{"bytes": ..., "path": ...}``).  Camera JPEGs carry their orientation in EXIF, so it is
applied; RGBA/LA/P images are composited on white (dropping alpha would paint transparent
regions black); 16-bit and 32-bit grayscale (medical scans, depth maps) is scaled to 8 bits
(PIL's own conversion clips every value above 255 to white); everything else becomes RGB.

An image is refused with one line, before any pixel is decoded, when its header says it would be
a decompression bomb (more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels), when it has no pixels, or
when its aspect ratio exceeds what the Qwen2-VL image processor accepts (``MAX_ASPECT_RATIO``).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_ASPECT_RATIO = 200  # Qwen2-VL's smart_resize raises for a longer side over 200x the shorter one


class ImageError(ValueError):
    """An image reference cannot be resolved or decoded; the message says why."""


def under_root(path: Path, root: Path) -> Path | None:
    """Where an absolute image path of another machine lies under ``root``, or None.

    Released datasets (LMM-R1's VerMulti) hold absolute paths of the authors' machine, e.g.
    ``/root/projects/OpenRLHF/data/VerMulti/images/1.jpg``, and users unpack the images somewhere
    else.  Without knowing the old prefix, the path's tails are tried under ``root``, longest first
    (``root/root/projects/.../1.jpg``, ``root/projects/.../1.jpg``, ..., ``root/1.jpg``): the
    longest tail that exists is the most specific match, so two images that share a file name in
    different folders stay apart as long as their folders are kept.
    """
    parts = path.parts[1:] if path.is_absolute() else path.parts
    for k in range(len(parts)):
        candidate = root.joinpath(*parts[k:])
        if candidate.is_file():
            return candidate
    return None


def resolve_image(ref: Any, base_dir: Path | None, image_root: Path | None = None) -> Path | bytes | Image.Image:
    """Turn a reference into a path (checked to exist), raw bytes, or a PIL image. No decoding.

    ``image_root``: absolute paths (and ``file://`` URLs) are looked up under it first (:func:`under_root`)."""
    if isinstance(ref, Image.Image):
        return ref
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        if ref.get("path"):
            return resolve_image(ref["path"], base_dir, image_root)
        if ref.get("url"):  # OpenAI image_url style
            return resolve_image(ref["url"], base_dir, image_root)
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
    if image_root is not None and path.is_absolute():
        found = under_root(path, image_root)
        if found is not None:
            return found
        if not path.is_file():
            raise ImageError(f"image file {path} does not exist, neither under image_root {image_root} "
                             f"(tried {image_root / path.relative_to(path.anchor)} down to {image_root / path.name})")
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist")
    return path


def _open(resolved: Path | bytes) -> Image.Image:
    """Image.open with PIL's decompression-bomb warning turned into a one-line ImageError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(resolved if isinstance(resolved, Path) else io.BytesIO(resolved))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"decompression bomb refused ({e}); downscale the image, or raise "
                             "PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None


def check_size(size: tuple[int, int]) -> None:
    """Refuse sizes the model's image processor cannot take (zero-size, extreme aspect ratio)."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"image is {w}x{h} pixels: it has no pixels")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise ImageError(f"image is {w}x{h} pixels: aspect ratio {max(w, h) / min(w, h):.0f} is over "
                         f"{MAX_ASPECT_RATIO}, which the Qwen2-VL image processor refuses; crop or pad it")


def probe_image(resolved: Path | bytes | Image.Image) -> tuple[int, int]:
    """(width, height) from the header only; raises ImageError if the file is not a usable image."""
    if isinstance(resolved, Image.Image):
        check_size(resolved.size)
        return resolved.size
    try:
        with _open(resolved) as im:
            size = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF rotation by 90/270 swaps w and h
                size = (size[1], size[0])
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"not a readable image ({type(e).__name__}: {e})") from e
    check_size(size)
    return size


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit "L", scaled rather than clipped.

    "I;16*" is 16-bit by definition (divide by 257 maps 65535 to 255).  Mode "I" is how PIL opens
    some 16-bit files too, so values that fit 16 bits are scaled like 16-bit data; larger ones by
    the image's actual maximum.  Float images in [0, 1] are scaled by 255, others by their maximum.
    """
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        scaled = arr / 257.0
    else:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = arr
        elif lo >= 0.0 and hi <= 65535.0 and img.mode == "I":
            scaled = arr / 257.0
        else:
            scaled = (arr - min(lo, 0.0)) * (255.0 / max(hi - min(lo, 0.0), 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit(img)
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
            img = _open(resolved)
            img.load()
        check_size(img.size)
        return fit_pixels(to_rgb(img), max_pixels)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot decode image ({type(e).__name__}: {e})") from e
