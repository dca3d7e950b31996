"""Turn chat messages (+ images) into model inputs, for VLMs and text-only LMs alike.

Why not ``AutoProcessor``?  Without torchvision, transformers 5.x cannot build the shipped
Qwen2.5-VL processor (its video processor needs torchvision), and TRL/verl break on batches that
mix text-only and image rows.  This processor drives the tokenizer and the (PIL) image processor
directly, so one batch can hold rows with zero, one or several images, left-padded, and every
row's image-token count is checked *before* the forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lmmr1.errors import InputError
from lmmr1.models.chat_template import (
    IMAGE_PAD,
    IMAGE_PLACEHOLDER,
    QWEN2_VL_CHAT_TEMPLATE,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
)

Messages = list[dict[str, Any]]


@dataclass
class PromptBatch:
    """A left-padded batch of prompts; images of all rows are concatenated in row order."""

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long, 0 on the left padding
    mm_token_type_ids: torch.Tensor  # (B, L) int, 0 text / 1 image
    pixel_values: torch.Tensor | None = None  # (sum of patches, patch_dim)
    image_grid_thw: torch.Tensor | None = None  # (num_images, 3)
    images_per_row: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the rendered prompt strings

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_images(self) -> int:
        return sum(self.images_per_row)

    def to(self, device: torch.device | str) -> PromptBatch:
        def mv(t):
            return None if t is None else t.to(device)

        return replace(
            self,
            input_ids=mv(self.input_ids),
            attention_mask=mv(self.attention_mask),
            mm_token_type_ids=mv(self.mm_token_type_ids),
            pixel_values=mv(self.pixel_values),
            image_grid_thw=mv(self.image_grid_thw),
        )

    def image_slices(self) -> list[tuple[slice, slice]]:
        """Per row: (slice into image_grid_thw rows, slice into pixel_values rows)."""
        out, img, patch = [], 0, 0
        grid = self.image_grid_thw
        for k in self.images_per_row:
            n_patch = int(grid[img : img + k].prod(-1).sum()) if k else 0
            out.append((slice(img, img + k), slice(patch, patch + n_patch)))
            img, patch = img + k, patch + n_patch
        return out


def is_image_item(item: Any) -> bool:
    return isinstance(item, dict) and (item.get("type") == "image" or "image" in item or "image_url" in item)


def count_image_items(messages: Messages) -> int:
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            n += sum(1 for item in content if is_image_item(item))
    return n


def images_in_messages(messages: Messages) -> list[Any]:
    """The PIL images embedded in the messages' image items, in order (items without one are skipped)."""
    from PIL import Image

    found = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for item in content:
                if is_image_item(item) and isinstance(item.get("image"), Image.Image):
                    found.append(item["image"])
    return found


class ChatProcessor:
    """Chat messages (+ PIL images) -> :class:`PromptBatch`; also decodes completions."""

    def __init__(self, tokenizer, image_processor=None, *, max_prompt_tokens: int | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_prompt_tokens = max_prompt_tokens
        if getattr(tokenizer, "chat_template", None) is None:
            # Base checkpoints ship no template; LMM-R1 data is chat messages, so use Qwen's ChatML.
            tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
        vocab = tokenizer.get_vocab()
        self.image_token_id = vocab.get(IMAGE_PAD)
        self.video_token_id = vocab.get(VIDEO_PAD)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad)
        stops = {tokenizer.eos_token_id}
        for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
            if t in vocab:
                stops.add(vocab[t])
        self.stop_token_ids: set[int] = {int(s) for s in stops if s is not None}
        # Tokens a policy must never emit: vision placeholders (an emitted <|image_pad|> breaks the
        # next forward with "image features and image tokens do not match").
        self.never_generate_ids: set[int] = {
            vocab[t] for t in (IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END) if t in vocab
        }
        self.merge_size = int(getattr(image_processor, "merge_size", 2) or 2) if image_processor else 2

    @property
    def is_multimodal(self) -> bool:
        return self.image_processor is not None

    def __len__(self) -> int:
        return len(self.tokenizer)

    # ------------------------------------------------------------------ text
    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as e:  # jinja errors are unreadable deep inside; say which input failed
            raise InputError(f"cannot render chat messages with the tokenizer's chat template: {e}") from e

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ---------------------------------------------------------------- images
    def num_image_tokens(self, grid_thw: torch.Tensor) -> int:
        return int(grid_thw.prod()) // (self.merge_size**2)

    def image_tokens_for_size(self, width: int, height: int) -> int:
        """Image tokens an image of this size becomes (after resizing to the pixel budget)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        ip = self.image_processor
        patch = int(ip.patch_size)
        h, w = smart_resize(height, width, factor=patch * self.merge_size,
                            min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])
        return (h // patch) * (w // patch) // (self.merge_size**2)

    def count_prompt_tokens(self, messages: Messages, image_sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """(total prompt tokens, image tokens) without decoding any pixels: for dataset validation."""
        text = self.render(messages)
        n_img = sum(self.image_tokens_for_size(w, h) for w, h in image_sizes) if image_sizes else 0
        return len(self.encode_text(text)) - len(image_sizes) + n_img, n_img

    def process_images(self, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Resize to the pixel budget, patchify; returns (pixel_values, image_grid_thw)."""
        out = self.image_processor(images=list(images), return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    # ----------------------------------------------------------------- batch
    def __call__(
        self,
        batch_messages: Sequence[Messages],
        images: Sequence[Sequence[Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
        row_names: Sequence[str] | None = None,
    ) -> PromptBatch:
        """Build a left-padded batch.

        ``images[i]`` are row i's images in placeholder order; if ``images`` is None, PIL images
        found inside the messages' image items are used.  ``row_names`` (e.g. "data.jsonl:12")
        are used in error messages.
        """
        n = len(batch_messages)
        if n == 0:
            raise InputError("empty prompt batch")
        names = list(row_names) if row_names is not None else [f"row {i}" for i in range(n)]
        if images is None:
            images = [images_in_messages(m) for m in batch_messages]
        if len(images) != n:
            raise InputError(f"{n} prompts but {len(images)} image lists; give one (possibly empty) list per prompt")

        texts, row_images = self._render_rows(batch_messages, images, names, add_generation_prompt)
        flat = [im for imgs in row_images for im in imgs]
        pixel_values = grid = None
        if flat:
            pixel_values, grid = self.process_images(flat)
        ids_rows, g = [], 0
        for i, (text, imgs) in enumerate(zip(texts, row_images, strict=True)):
            ids_rows.append(self._tokenize_row(text, grid[g : g + len(imgs)] if imgs else None, len(imgs), names[i]))
            g += len(imgs)
        input_ids, attention_mask, mm = self._left_padded(ids_rows)
        return PromptBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=mm,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            images_per_row=[len(x) for x in row_images],
            texts=texts,
        )

    def _render_rows(self, batch_messages, images, names, add_generation_prompt: bool):
        """Check each row (messages, one image per placeholder, images only for a VLM) and render it."""
        texts, row_images = [], []
        for i, (msgs, imgs) in enumerate(zip(batch_messages, images, strict=True)):
            if not isinstance(msgs, list) or not msgs:
                raise InputError(f"{names[i]}: messages must be a non-empty list of {{role, content}} dicts")
            n_placeholders = count_image_items(msgs)
            if n_placeholders != len(imgs):
                raise InputError(
                    f"{names[i]}: field 'message' has {n_placeholders} image placeholder(s) but "
                    f"{len(imgs)} image(s) were given; they must match one to one"
                )
            if imgs and not self.is_multimodal:
                raise InputError(
                    f"{names[i]}: has {len(imgs)} image(s) but the model is text-only; "
                    "use a vision-language checkpoint or drop the image rows"
                )
            texts.append(self.render(msgs, add_generation_prompt))
            row_images.append(list(imgs))
        return texts, row_images

    def _tokenize_row(self, text: str, grid: torch.Tensor | None, n_images: int, name: str) -> list[int]:
        """Token ids of one rendered prompt, each image marker expanded to its image's token count
        (``grid``: the row's image_grid_thw rows); the counts are checked before any forward pass."""
        if text.count(IMAGE_PAD) != n_images or text.count(IMAGE_PLACEHOLDER) != n_images:
            raise InputError(
                f"{name}: the rendered prompt has {text.count(IMAGE_PAD)} '{IMAGE_PAD}' markers for "
                f"{n_images} image(s); the message text must not contain '{IMAGE_PAD}' itself"
            )
        expected = 0
        if n_images:
            parts = text.split(IMAGE_PAD)
            pieces = [parts[0]]
            for k in range(n_images):
                n_tok = self.num_image_tokens(grid[k])
                expected += n_tok
                pieces.append(IMAGE_PAD * n_tok)
                pieces.append(parts[k + 1])
            text = "".join(pieces)
        ids = self.encode_text(text)
        got = sum(1 for t in ids if t == self.image_token_id) if self.image_token_id is not None else 0
        if got != expected:
            raise InputError(
                f"{name}: prompt holds {got} image tokens but its images need {expected}; "
                f"the text must not contain '{IMAGE_PAD}' itself"
            )
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise InputError(
                f"{name}: prompt is {len(ids)} tokens ({expected} of them image tokens), over "
                f"max_prompt_tokens={self.max_prompt_tokens}; raise the limit or shrink the image "
                "pixel budget (truncating would cut image tokens)"
            )
        return ids

    def tokenize_segment(self, text: str, grid: torch.Tensor | None, n_images: int, name: str) -> list[int]:
        """Token ids of one rendered piece of a conversation (e.g. a later turn's observation), its
        image markers expanded once; multi-turn rollouts append these ids and never re-tokenise."""
        return self._tokenize_row(text, grid, n_images, name)

    def batch_from_ids(self, ids_rows: list[list[int]], pixel_values: torch.Tensor | None,
                       image_grid_thw: torch.Tensor | None, images_per_row: list[int],
                       texts: list[str]) -> PromptBatch:
        """A left-padded batch from token ids already expanded (multi-turn contexts built from the
        ids of earlier turns); ``pixel_values``/``image_grid_thw`` in the rows' image order."""
        input_ids, attention_mask, mm = self._left_padded(ids_rows)
        return PromptBatch(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm,
                           pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                           images_per_row=list(images_per_row), texts=list(texts))

    def _left_padded(self, ids_rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, mm_token_type_ids), left-padded to the longest row."""
        n, length = len(ids_rows), max(len(r) for r in ids_rows)
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        for i, r in enumerate(ids_rows):
            if r:
                input_ids[i, length - len(r) :] = torch.tensor(r, dtype=torch.long)
                attention_mask[i, length - len(r) :] = 1
        mm = torch.zeros_like(input_ids, dtype=torch.int32)
        if self.image_token_id is not None:
            mm[input_ids == self.image_token_id] = 1
        if self.video_token_id is not None:
            mm[input_ids == self.video_token_id] = 2
        mm[attention_mask == 0] = 0
        return input_ids, attention_mask, mm

    def save_pretrained(self, out_dir: str | Path) -> None:
        self.tokenizer.save_pretrained(out_dir)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(out_dir)


def _left_pad(t: torch.Tensor, length: int, value) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    pad = torch.full((t.shape[0], length - t.shape[1]), value, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t], dim=1)


def select_prompts(batch: PromptBatch, rows: list[int]) -> PromptBatch:
    """A sub-batch of prompt rows (their images come along)."""
    slices = batch.image_slices()
    grids = [batch.image_grid_thw[slices[r][0]] for r in rows if batch.images_per_row[r]]
    pixels = [batch.pixel_values[slices[r][1]] for r in rows if batch.images_per_row[r]]
    idx = torch.tensor(rows, dtype=torch.long, device=batch.input_ids.device)
    return PromptBatch(
        input_ids=batch.input_ids[idx], attention_mask=batch.attention_mask[idx],
        mm_token_type_ids=batch.mm_token_type_ids[idx],
        pixel_values=torch.cat(pixels) if pixels else None, image_grid_thw=torch.cat(grids) if grids else None,
        images_per_row=[batch.images_per_row[r] for r in rows], texts=[batch.texts[r] for r in rows],
    )


def concat_prompts(batches: list[PromptBatch], pad_token_id: int) -> PromptBatch:
    """Stack prompt batches, re-padding on the left to the longest."""
    length = max(b.input_ids.shape[1] for b in batches)
    pixels = [b.pixel_values for b in batches if b.pixel_values is not None]
    grids = [b.image_grid_thw for b in batches if b.image_grid_thw is not None]
    return PromptBatch(
        input_ids=torch.cat([_left_pad(b.input_ids, length, pad_token_id) for b in batches]),
        attention_mask=torch.cat([_left_pad(b.attention_mask, length, 0) for b in batches]),
        mm_token_type_ids=torch.cat([_left_pad(b.mm_token_type_ids, length, 0) for b in batches]),
        pixel_values=torch.cat(pixels) if pixels else None, image_grid_thw=torch.cat(grids) if grids else None,
        images_per_row=[k for b in batches for k in b.images_per_row], texts=[t for b in batches for t in b.texts],
    )
