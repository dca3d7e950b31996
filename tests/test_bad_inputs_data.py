"""Bad-input suite, data and config half: each kind asserts the exact one-line error (file:line and
field where relevant) or the correct handling.  Real files, real PIL decoding, the real tiny tokenizer."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lmmr1.data import DataError, PromptDataset
from lmmr1.data.images import ImageError, decode_image, probe_image
from lmmr1.trainer.config import ConfigError, load_config
from tests.conftest import short_context_copy

Q = json.dumps([{"role": "user", "content": "What is 1+1?"}])


def img_row(ref: str, answer="2") -> dict:
    msg = [{"role": "user", "content": [{"type": "image", "image": ref}, {"type": "text", "text": "How many?"}]}]
    return {"message": json.dumps(msg), "answer": answer}


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def load_error(path, **kw) -> str:
    with pytest.raises(DataError) as e:
        PromptDataset.load(str(path), system_prompt=None, **kw)
    msg = str(e.value)
    assert "\n" not in msg  # one line
    return msg


def png_header(w: int, h: int) -> bytes:
    """A 1x1 PNG whose IHDR claims w x h (CRC fixed): what a decompression bomb looks like to a probe."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    d = bytearray(buf.getvalue())
    d[16:20], d[20:24] = struct.pack(">I", w), struct.pack(">I", h)
    d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])) & 0xFFFFFFFF)
    return bytes(d)


# ------------------------------------------------------------------------------------- gold answers
@pytest.mark.parametrize("answer, expected", [
    ({}, "field 'answer' is an object ({}); the gold answer must be a string or a number (or a box "
         "[x1, y1, x2, y2] for the iou reward)"),
    ({"value": 3}, "field 'answer' is an object ({\"value\": 3}); the gold answer must be a string or a number "
                   "(or a box [x1, y1, x2, y2] for the iou reward)"),
    (["4", "four"], "field 'answer' is a list ([\"4\", \"four\"]); the gold answer must be a string or a number "
                    "(or a box [x1, y1, x2, y2] for the iou reward)"),
    ([], "field 'answer' is a list ([]); the gold answer must be a string or a number (or a box "
         "[x1, y1, x2, y2] for the iou reward)"),
    (True, "field 'answer' is a bool (true); the gold answer must be a string or a number (or a box "
           "[x1, y1, x2, y2] for the iou reward)"),
    (None, "field 'answer' is missing or empty; a row without a gold answer cannot be scored"),
    ("   ", "field 'answer' is missing or empty; a row without a gold answer cannot be scored"),
    (float("nan"), "field 'answer' is nan; the gold answer must be a finite number or a string"),
])
def test_gold_answer_that_is_not_a_string_or_number_names_file_line_and_field(tmp_path, answer, expected):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"message": Q, "answer": "2"}) + "\n" + json.dumps({"message": Q, "answer": answer}) + "\n")
    assert load_error(f) == f"{f}:2: {expected}"


def test_numeric_answers_become_strings_and_a_box_stays_a_box(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"message": Q, "answer": 3}, {"message": Q, "answer": 2.5},
                                           {"message": Q, "answer": [0, 0, 10.5, 20]}])
    ds = PromptDataset.load(str(f), system_prompt=None)
    assert [ex.answer for ex in ds] == ["3", "2.5", [0, 0, 10.5, 20]]


def test_missing_answer_is_skipped_and_counted_under_skip_invalid(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"message": Q, "answer": {}}, {"message": Q, "answer": "2"}])
    ds = PromptDataset.load(str(f), system_prompt=None, skip_invalid=True)
    assert len(ds) == 1 and ds.skipped[0][0] == f"{f}:1" and "is an object" in ds.skipped[0][1]


# ---------------------------------------------------------------------------------------- encodings
def test_non_utf8_jsonl_line_names_file_line_and_byte(tmp_path):
    f = tmp_path / "latin1.jsonl"
    good = json.dumps({"message": Q, "answer": "2"}).encode()
    bad = json.dumps({"message": Q, "answer": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    f.write_bytes(good + b"\n" + bad + b"\n")
    col = bad.index(b"\xe9") + 1
    assert load_error(f) == f"{f}:2: not UTF-8 text (byte 0xe9 at column {col}); re-save the file as UTF-8"
    ds = PromptDataset.load(str(f), system_prompt=None, skip_invalid=True)  # the other rows still load
    assert len(ds) == 1 and ds.skipped[0][0] == f"{f}:2"


def test_non_utf8_json_file_names_the_line(tmp_path):
    f = tmp_path / "rows.json"
    f.write_bytes(b'[\n {"message": "x",\n  "answer": "caf\xe9"}\n]\n')
    assert load_error(f) == f"{f}:3: not UTF-8 text (byte 0xe9); re-save the file as UTF-8"


def test_utf8_bom_at_the_start_of_a_jsonl_is_accepted(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"message": Q, "answer": "2"}).encode() + b"\n")
    assert PromptDataset.load(str(f), system_prompt=None)[0].answer == "2"


def test_invalid_json_line_names_file_line_and_column(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"message": Q, "answer": "2"}) + "\n{\"message\": \n")
    assert load_error(f) == f"{f}:2: invalid JSON (Expecting value at column 13)"


# ------------------------------------------------------------------------------------------- images
def test_16bit_grayscale_png_is_scaled_not_clipped_to_white(tmp_path):
    arr = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    opened = Image.open(tmp_path / "g16.png")
    assert opened.mode.startswith("I")  # PIL opens it as 16-bit; convert("RGB") would clip to 255
    assert opened.convert("RGB").getpixel((1, 0)) == (255, 255, 255)
    rgb = decode_image(tmp_path / "g16.png")
    assert rgb.mode == "RGB" and [rgb.getpixel((x, 0))[0] for x in range(4)] == [0, 64, 128, 255]


def test_32bit_integer_and_float_grayscale_are_scaled():
    as16 = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32), "I")  # 16-bit data in mode I
    assert [decode_image(as16).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    wide = Image.fromarray(np.array([[0, 500_000, 1_000_000]], dtype=np.int32), "I")  # scaled by its max
    assert [decode_image(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert [decode_image(unit).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    small = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")  # already 8-bit range: unchanged
    assert [decode_image(small).getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]


@pytest.mark.parametrize("w, h, limit", [(20000, 20000, 178956970), (10000, 10000, 89478485)])
def test_decompression_bomb_names_row_and_image(tmp_path, w, h, limit):
    (tmp_path / "bomb.png").write_bytes(png_header(w, h))
    f = write_jsonl(tmp_path / "d.jsonl", [img_row("bomb.png")])
    assert load_error(f) == (
        f"{f}:1: field 'message', image 1: decompression bomb refused (Image size ({w * h} pixels) exceeds limit "
        f"of {limit} pixels, could be decompression bomb DOS attack.); downscale the image, or raise "
        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file")


def test_extreme_aspect_ratio_names_row_and_image(tmp_path):
    Image.new("RGB", (2000, 5), "white").save(tmp_path / "strip.png")
    f = write_jsonl(tmp_path / "d.jsonl", [img_row("strip.png")])
    assert load_error(f) == (f"{f}:1: field 'message', image 1: image is 2000x5 pixels: aspect ratio 400 is over "
                             "200, which the Qwen2-VL image processor refuses; crop or pad it")


def test_aspect_ratio_200_is_still_accepted(tmp_path):
    Image.new("RGB", (2000, 10), "white").save(tmp_path / "strip.png")
    f = write_jsonl(tmp_path / "d.jsonl", [img_row("strip.png")])
    assert PromptDataset.load(str(f), system_prompt=None)[0].image_sizes == [(2000, 10)]


def test_zero_size_images_are_refused():
    with pytest.raises(ImageError, match=r"^image is 0x10 pixels: it has no pixels$"):
        probe_image(Image.new("RGB", (0, 10)))
    with pytest.raises(ImageError, match=r"^image is 7x0 pixels: it has no pixels$"):
        decode_image(Image.new("RGB", (7, 0)))
    with pytest.raises(ImageError, match=r"^not a readable image \(UnidentifiedImageError: "):
        probe_image(png_header(0, 5))  # a PNG header with width 0


def test_truncated_image_fails_at_dry_run_decode_naming_row_and_image(tmp_path):
    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    f = write_jsonl(tmp_path / "d.jsonl", [img_row("cut.png")])
    try:
        ds = PromptDataset.load(str(f), system_prompt=None)  # the header may still probe fine
    except DataError as e:
        assert str(e).startswith(f"{f}:1: field 'message', image 1: not a readable image")
        return
    with pytest.raises(DataError) as e:
        ds.decode_all()
    assert re.fullmatch(rf"{re.escape(str(f))}:1: image 1: cannot decode image \((OSError|SyntaxError): .+\)",
                        str(e.value)), str(e.value)


# ------------------------------------------------------------------------------------ prompt length
def test_prompt_longer_than_the_model_context_is_refused_or_skipped(tmp_path, tiny_vlm):
    from lmmr1.dryrun import load_processor

    proc = load_processor(tiny_vlm)
    long_q = json.dumps([{"role": "user", "content": "one two three " * 40}])
    f = write_jsonl(tmp_path / "d.jsonl", [{"message": Q, "answer": "2"}, {"message": long_q, "answer": "2"}])
    ds = PromptDataset.load(str(f), system_prompt=None)
    n = proc.count_prompt_tokens(ds[1].messages, [])[0]
    assert n > 64
    with pytest.raises(DataError) as e:
        ds.check_prompt_lengths(proc, context_tokens=64)
    assert str(e.value) == (f"{f}:2: field 'message': prompt is {n} tokens (0 image tokens), but the model's "
                            "context is 64 tokens (max_position_embeddings), which leaves no room to generate; "
                            "shorten the prompt or lower max_pixels")
    ds = PromptDataset.load(str(f), system_prompt=None, skip_invalid=True)
    ds.check_prompt_lengths(proc, context_tokens=64)
    assert len(ds) == 1 and ds.skipped[0][0] == f"{f}:2"


def test_model_context_is_read_from_config_json(tmp_path, tiny_vlm):
    from lmmr1.data import model_context_tokens

    assert model_context_tokens(tiny_vlm) == json.loads((tiny_vlm / "config.json").read_text()).get(
        "max_position_embeddings", json.loads((tiny_vlm / "config.json").read_text())["text_config"].get(
            "max_position_embeddings"))
    assert model_context_tokens(tmp_path) is None  # no config.json: no limit known


# ------------------------------------------------------------------------------------ config values
BASE = ["model.path=/m", "data=[{path: d.jsonl}]", "reward=[{name: accuracy}]", "train.steps=10"]


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, BASE + list(overrides)).validate()
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=-1e-6", "optim.lr=-1e-06 is out of range: must be > 0"),
    ("optim.lr=0", "optim.lr=0.0 is out of range: must be > 0"),
    ("optim.weight_decay=-0.01", "optim.weight_decay=-0.01 is out of range: must be >= 0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas=[0.9, 1.0] is out of range: must be two numbers in [0, 1), e.g. [0.9, 0.999]"),
    ("optim.betas=[0.9]", "optim.betas=[0.9] is out of range: must be two numbers in [0, 1), e.g. [0.9, 0.999]"),
    ("optim.max_grad_norm=0", "optim.max_grad_norm=0.0 is out of range: must be > 0"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio=2.0 is out of range: must be in [0, 1]"),
    ("rollout.n=0", "rollout.n=0 is out of range: must be >= 1"),
    ("rollout.temperature=-0.5", "rollout.temperature=-0.5 is out of range: must be >= 0 (0 is greedy)"),
    ("rollout.top_p=0", "rollout.top_p=0.0 is out of range: must be in (0, 1]"),
    ("rollout.top_p=1.5", "rollout.top_p=1.5 is out of range: must be in (0, 1]"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens=0 is out of range: must be >= 1"),
    ("train.micro_batch_size=0", "train.micro_batch_size=0 is out of range: must be >= 1"),
    ("train.mini_batch_size=-4", "train.mini_batch_size=-4 is out of range: must be >= 0 (0: the whole rollout batch)"),
    ("train.prompts_per_step=0", "train.prompts_per_step=0 is out of range: must be >= 1"),
    ("train.steps=0", "train.steps=0 is out of range: must be >= 1 (0 steps would save an untrained model as 'final')"),
    ("train.steps=-3", "train.steps=-3 is out of range: must be >= 1 (0 steps would save an untrained model as 'final')"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints=-1 is out of range: must be >= 0"),
    ("train.save_every=-5", "train.save_every=-5 is out of range: must be >= 0 (0: only at the end)"),
    ("train.ppo_epochs=0", "train.ppo_epochs=0 is out of range: must be >= 1"),
    ("algo.clip_low=-0.1", "algo.clip_low=-0.1 is out of range: must be >= 0"),
    ("algo.clip_high=-0.2", "algo.clip_high=-0.2 is out of range: must be >= 0"),
    ("algo.dual_clip=0.5", "algo.dual_clip=0.5 is out of range: must be > 1 (typically 3) or null"),
    ("algo.gamma=1.5", "algo.gamma=1.5 is out of range: must be in [0, 1]"),
    ("algo.lam=-0.1", "algo.lam=-0.1 is out of range: must be in [0, 1]"),
    ("algo.kl_coef=-0.001", "algo.kl_coef=-0.001 is out of range: must be >= 0"),
    ("algo.advantage=grpoo", "algo.advantage='grpoo' is not valid; did you mean 'grpo'? (choose from grpo, dr_grpo, "
                             "rloo, reinforce_pp, reinforce_pp_baseline, gae, ema_grpo, observe_grpo, episode_grpo, gigpo, turn_discount)"),
    ("algo.loss_agg=token_sum", "algo.loss_agg='token_sum' is not valid; did you mean 'token_mean'? (choose from "
                                "token_mean, seq_mean_token_mean, seq_mean_token_sum_norm)"),
    ("algo.kl_estimator=k4", "algo.kl_estimator='k4' is not valid (choose from k1, k2, k3)"),
    ("algo.ratio_level=seq", "algo.ratio_level='seq' is not valid (choose from token, sequence)"),
    ("train.old_logprobs=never", "train.old_logprobs='never' is not valid (choose from auto, rollout, recompute)"),
    ("model.tiny=huge", "model.tiny='huge' is not valid (choose from tiny, small)"),
    ("data.0.prob=-0.5", "data[0].prob=-0.5 is out of range: must be >= 0"),
    ("data=[{path: a.jsonl, prob: 0}, {path: b.jsonl, prob: 0}]",
     "data[].prob are [0.0, 0.0]: at least one dataset needs a positive prob"),
    ("type=rlhf", "type='rlhf' is not valid; did you mean 'rl'? (choose from rl, sft)"),
    ("optim.lr=fast", "optim.lr must be float, got 'fast'"),
    ("rollout.nn=4", "unknown config key 'rollout.nn'; did you mean 'rollout.n'?"),
])
def test_invalid_config_value_is_one_line_naming_the_dotted_key(override, expected):
    assert config_error(override) == expected


def test_range_checks_apply_to_sft_runs_too():
    assert config_error("type=sft", "train.steps=0").startswith("train.steps=0 is out of range")


def test_a_mini_batch_that_is_not_a_multiple_of_the_micro_batch_is_allowed():
    # losses are normalised by the whole mini-batch's counts, so a short last micro-batch is exact
    load_config(None, BASE + ["train.prompts_per_step=4", "rollout.n=4", "train.mini_batch_size=8",
                              "train.micro_batch_size=6"]).validate()


# ------------------------------------------------------------------------------ through the trainer
def test_trainer_refuses_a_prompt_over_the_model_context_before_training(tmp_path, tiny_vlm):
    from lmmr1.trainer import Trainer

    model = short_context_copy(tiny_vlm, tmp_path / "short_ctx", 16)
    f = write_jsonl(tmp_path / "d.jsonl", [{"message": Q, "answer": "2"}])
    run = load_config(None, [f"output_dir={tmp_path / 'run'}", f"model.path={model}",
                             f"data=[{{path: {f}, system_prompt: none}}]", "reward=[{name: accuracy}]",
                             "train.steps=1", "train.tensorboard=false"])
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))}:1: field 'message': prompt is \d+ tokens \(0 image "
                                        r"tokens\), but the model's context is 16 tokens"):
        Trainer(run)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_zero_steps_is_refused_before_a_final_model_is_written(tmp_path, tiny_vlm):
    from lmmr1.trainer import Trainer

    run = load_config(None, [f"output_dir={tmp_path / 'run'}", f"model.path={tiny_vlm}", "data=[{path: d.jsonl}]",
                             "reward=[{name: accuracy}]", "train.steps=0"])
    with pytest.raises(ConfigError, match=r"^train\.steps=0 is out of range"):
        Trainer(run)
    assert not (tmp_path / "run" / "final").exists()


# ------------------------------------------------------------------------------------- recipe files
@pytest.mark.parametrize("content, expected", [
    (b"model: {path: m}\n# caf\xe9\n", "recipe {f}:2: not UTF-8 text (byte 0xe9); re-save the file as UTF-8"),
    (b"model: {path: m\ndata: [d.jsonl]\n", "recipe {f}:2:5: invalid YAML (expected ',' or '}', but got ':')"),
    (b"- model\n- data\n", "recipe {f} must be a mapping of sections (model, data, reward, ...)"),
    (b"model: {path: m}\nrollout: 4\n", "rollout must be a mapping, got int"),
    (b"model: {path: m}\nmodle: {}\n", "unknown config key 'modle'; did you mean 'model'?"),
])
def test_unreadable_recipe_file_is_one_line(tmp_path, content, expected):
    f = tmp_path / "r.yaml"
    f.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == expected.replace("{f}", str(f))


def test_missing_recipe_and_a_folder_as_recipe(tmp_path):
    with pytest.raises(ConfigError, match=rf"^recipe {re.escape(str(tmp_path / 'no.yaml'))} does not exist$"):
        load_config(tmp_path / "no.yaml")
    with pytest.raises(ConfigError, match=rf"^recipe {re.escape(str(tmp_path))} is not a file$"):
        load_config(tmp_path)


@pytest.mark.parametrize("override, expected", [
    ("data=[{prob: 0.5}]", "data[0].path is required"),
    ("optim.betas=0.9", "optim.betas=0.9 is out of range: must be two numbers in [0, 1), e.g. [0.9, 0.999]"),
    ("data.0.max_pixels=0", "data[0].max_pixels=0 is out of range: must be >= 1 (or null)"),
    ("model.freeze_vision=tower", "model.freeze_vision='tower' is out of range: choose from true (vision tower frozen), "
     "false (trained), encoder (ViT frozen, merger trained)"),
    ("model.max_prompt_tokens=0", "model.max_prompt_tokens=0 is out of range: must be >= 1 (or null for no limit)"),
    ("algo.kl_target=-1", "algo.kl_target=-1.0 is out of range: must be > 0 or null"),
])
def test_more_invalid_config_values(override, expected):
    assert config_error(override) == expected
