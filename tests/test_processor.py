"""ChatProcessor: mixed text/image batches, left padding, image-token counts checked up front."""

from __future__ import annotations

import pytest
import torch

from lmmr1.errors import InputError
from lmmr1.models import load_model
from tests.conftest import user


def test_mixed_batch_is_left_padded_with_right_image_token_counts(loaded_vlm, images):
    proc = loaded_vlm.processor
    batch = proc([user("one image", images[0]), user("no image at all, but a longer text here"),
                  user("two images", images[1], images[2])])
    assert batch.images_per_row == [1, 0, 2]
    assert batch.image_grid_thw.shape == (3, 3)
    merge = proc.merge_size**2
    per_image = (batch.image_grid_thw.prod(-1) // merge).tolist()
    counts = (batch.input_ids == proc.image_token_id).sum(-1).tolist()
    assert counts == [per_image[0], 0, per_image[1] + per_image[2]]
    assert batch.pixel_values.shape[0] == int(batch.image_grid_thw.prod(-1).sum())
    # left padding: each row's zeros come first, and its last column is a real token
    for row in batch.attention_mask:
        first = int(row.argmax())
        assert row[:first].sum() == 0 and row[first:].all()
    assert bool(batch.attention_mask[:, -1].all())
    assert torch.equal(batch.mm_token_type_ids.bool(), batch.input_ids == proc.image_token_id)


def test_images_are_resized_to_the_pixel_budget(loaded_vlm):
    from PIL import Image

    proc = loaded_vlm.processor
    big = Image.new("RGB", (1000, 800), (1, 2, 3))
    batch = proc([user("big", big)])
    n_tokens = int((batch.input_ids == proc.image_token_id).sum())
    max_tokens = proc.image_processor.size["longest_edge"] // (28 * 28)
    assert 1 <= n_tokens <= max_tokens


@pytest.mark.parametrize(
    "case, expected",
    [
        ("placeholders", "1 image placeholder(s) but 0 image(s)"),
        ("literal_pad", "must not contain"),
        ("too_long", "over max_prompt_tokens=20"),
        ("empty", "non-empty list"),
    ],
)
def test_bad_prompts_raise_clear_errors(tiny_vlm, images, case, expected):
    lm = load_model(tiny_vlm, max_prompt_tokens=20 if case == "too_long" else None)
    proc = lm.processor
    names = ["data.jsonl:7"]
    with pytest.raises(InputError) as e:
        if case == "placeholders":
            proc([[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]], images=[[]],
                 row_names=names)
        elif case == "literal_pad":
            proc([user("sneaky <|image_pad|> token", images[0])], row_names=names)
        elif case == "too_long":
            proc([user("a long prompt " * 3, images[2])], row_names=names)
        else:
            proc([[]], images=[[]], row_names=names)
    assert expected in str(e.value)
    assert str(e.value).startswith("data.jsonl:7")


def test_text_only_model_rejects_images(tiny_lm, images):
    lm = load_model(tiny_lm)
    with pytest.raises(InputError, match="text-only"):
        lm.processor([user("x", images[0])])
    batch = lm.processor([user("plain"), [{"role": "user", "content": "plain string content"}]])
    assert batch.pixel_values is None and batch.images_per_row == [0, 0]
