"""LMM-R1-format datasets with real image files: PNG, EXIF-rotated JPEG, RGBA, base64, broken, missing."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest
from PIL import Image

from lmmr1.data import R1, DataConfig, DataError, MixtureSampler, PromptDataset
from lmmr1.models import load_model


def img_msg(ref, text="How many shapes?"):
    return [{"role": "user", "content": [{"type": "image", "image": ref}, {"type": "text", "text": text}]}]


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (64, 32), (10, 200, 10)).save(d / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 80x40, displayed 40x80
    Image.new("RGB", (80, 40), (200, 10, 10)).save(d / "rotated.jpg", exif=exif.tobytes())
    rgba = Image.new("RGBA", (30, 30), (0, 0, 255, 0))  # fully transparent blue
    rgba.save(d / "alpha.png")
    (d / "broken.png").write_bytes(b"this is not an image at all")
    buf = io.BytesIO()
    Image.new("L", (20, 20), 128).save(buf, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return tmp_path, d, data_uri


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_mixed_rows_load_with_every_image_form(files):
    root, d, data_uri = files
    rows = [
        {"message": json.dumps(img_msg("imgs/plain.png")), "answer": "3", "datasource": "count"},  # stringified
        {"message": [{"role": "user", "content": "What is 2+2?"}], "answer": "4"},  # text-only, real list
        {"message": img_msg(f"file://{d / 'rotated.jpg'}"), "answer": "B", "choices": '["1", "2"]'},
        {"message": img_msg(str(d / "alpha.png")), "answer": "circle"},  # absolute path
        {"message": img_msg(data_uri), "answer": "1"},  # base64
    ]
    ds = PromptDataset.load(DataConfig(path=str(write_jsonl(root / "train.jsonl", rows))))
    assert len(ds) == 5 and ds.skipped == []
    assert [e.has_images for e in ds] == [True, False, True, True, True]
    assert ds[0].source.endswith("train.jsonl:1") and ds[0].datasource == "count"
    assert ds[1].datasource == "train"  # defaults to the dataset name
    assert ds[0].messages[0] == {"role": "system", "content": R1}  # the R1 template by default
    assert ds[2].fields["choices"] == ["1", "2"]  # JSON-string choices parsed
    assert ds[2].image_sizes == [(40, 80)]  # EXIF rotation seen from the header
    (rot,) = ds[2].images()
    assert rot.size == (40, 80) and rot.mode == "RGB"  # EXIF orientation applied
    (alpha,) = ds[3].images()
    assert alpha.mode == "RGB" and alpha.getpixel((5, 5)) == (255, 255, 255)  # transparent -> white
    (gray,) = ds[4].images()
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (128, 128, 128)
    (plain,) = ds[0].images(max_pixels=16 * 8)
    assert plain.size == (16, 8)  # fitted to the pixel budget, aspect kept
    assert ds[1].prompt_text() == "What is 2+2?"


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"message": "IMG", "answer": "3"}, "image 1: image file"),  # missing file
        ({"message": "BROKEN", "answer": "3"}, "image 1: not a readable image"),
        ({"message": [{"role": "assistant", "content": "hi"}], "answer": "3"}, "has no user turn"),
        ({"message": [{"role": "user", "content": "q"}], "answer": ""}, "field 'answer' is missing or empty"),
        ({"message": [{"role": "user", "content": "q"}]}, "field 'answer' is missing or empty"),
        ({"message": "{not json", "answer": "1"}, "is a string but not valid JSON"),
        ({"answer": "1"}, "field 'message' is missing"),
        ("{broken json line", "invalid JSON"),
        ({"message": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}], "answer": "1"},
         "1 image placeholder(s) but column 'images' has 0"),
    ],
)
def test_bad_rows_name_file_line_and_field(files, row, fragment):
    root, d, _ = files
    if isinstance(row, dict) and row.get("message") == "IMG":
        row = {**row, "message": img_msg("imgs/missing.png")}
    if isinstance(row, dict) and row.get("message") == "BROKEN":
        row = {**row, "message": img_msg("imgs/broken.png")}
    good = {"message": [{"role": "user", "content": "ok"}], "answer": "1"}
    path = write_jsonl(root / "bad.jsonl", [good, good, row])
    with pytest.raises(DataError) as e:
        PromptDataset.load(str(path))
    assert str(e.value).startswith(f"{path}:3: ") and fragment in str(e.value)


def test_skip_invalid_counts_and_logs_every_skip(files, caplog):
    root, d, _ = files
    rows = [
        {"message": [{"role": "user", "content": "ok"}], "answer": "1"},
        {"message": img_msg("imgs/broken.png"), "answer": "3"},
        {"message": [{"role": "user", "content": "q"}], "answer": " "},
        {"message": img_msg("imgs/plain.png"), "answer": "2"},
    ]
    path = write_jsonl(root / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="lmmr1.data"):
        ds = PromptDataset.load(str(path), skip_invalid=True)
    assert len(ds) == 2 and [s for s, _ in ds.skipped] == [f"{path}:2", f"{path}:3"]
    assert len([r for r in caplog.records if "skipping" in r.message]) == 2
    assert ds.skip_summary() == "mixed: 2 rows, 2 skipped"


def test_truncated_image_is_caught_and_decode_errors_name_the_row(files):
    root, d, _ = files
    good = (d / "plain.png").read_bytes()
    (d / "trunc.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"t.jsonl:1: field 'message', image 1: not a readable image"):
        PromptDataset.load(str(write_jsonl(root / "t.jsonl", [{"message": img_msg("imgs/trunc.png"), "answer": "1"}])))
    (d / "later.png").write_bytes(good)
    ds = PromptDataset.load(str(write_jsonl(root / "u.jsonl", [{"message": img_msg("imgs/later.png"), "answer": "1"}])))
    (d / "later.png").write_bytes(b"corrupted after loading")
    with pytest.raises(DataError, match=r"u.jsonl:1: image 1: cannot decode image"):
        ds[0].images()


def test_parquet_json_and_datasets_directory(files):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("pyarrow")
    root, d, _ = files
    png = (d / "plain.png").read_bytes()
    msg = json.dumps([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "count"}]}])
    table = {"message": [msg, json.dumps([{"role": "user", "content": "2+2?"}])],
             "answer": ["3", "4"], "images": [[{"bytes": png, "path": None}], []]}
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(table), root / "train.parquet")
    ds = PromptDataset.load(str(root / "train.parquet"))
    assert [e.has_images for e in ds] == [True, False] and ds[0].images()[0].size == (64, 32)
    assert ds[1].source.endswith("train.parquet:row 2")

    hf = datasets.Dataset.from_dict({"message": table["message"], "answer": table["answer"],
                                     "images": [[Image.open(d / "plain.png")], []]},
                                    features=datasets.Features({"message": datasets.Value("string"),
                                                                "answer": datasets.Value("string"),
                                                                "images": datasets.Sequence(datasets.Image())}))
    hf.save_to_disk(str(root / "hfds"))
    ds2 = PromptDataset.load(str(root / "hfds"))
    assert [e.has_images for e in ds2] == [True, False] and ds2[0].images()[0].size == (64, 32)

    (root / "rows.json").write_text(json.dumps([{"message": [{"role": "user", "content": "q"}], "answer": "1"},
                                                {"message": [{"role": "user", "content": "q"}], "answer": ""}]))
    with pytest.raises(DataError, match=r"rows.json:row 2: field 'answer'"):
        PromptDataset.load(str(root / "rows.json"))


def test_custom_keys_and_system_prompt_templates(files):
    root, _, _ = files
    rows = [{"conv": [{"role": "user", "content": "q"}], "gt": "7"},
            {"conv": [{"role": "system", "content": "own"}, {"role": "user", "content": "q"}], "gt": "8"}]
    path = write_jsonl(root / "keys.jsonl", rows)
    ds = PromptDataset.load(DataConfig(path=str(path), input_key="conv", label_key="gt", system_prompt="r1_boxed"))
    assert ds[0].answer == "7" and "\\boxed{}" in ds[0].messages[0]["content"]
    assert ds[1].messages[0]["content"] == "own"  # a row's own system turn wins
    ds = PromptDataset.load(DataConfig(path=str(path), input_key="conv", label_key="gt", system_prompt="Be brief."))
    assert ds[0].messages[0]["content"] == "Be brief."
    ds = PromptDataset.load(DataConfig(path=str(path), input_key="conv", label_key="gt", system_prompt="none"))
    assert ds[0].messages[0]["role"] == "user"


def test_prompt_length_check_counts_image_tokens_without_decoding(files, tiny_vlm, tiny_lm):
    root, d, _ = files
    Image.new("RGB", (400, 400)).save(d / "big.png")
    rows = [{"message": img_msg("imgs/big.png"), "answer": "1"}, {"message": [{"role": "user", "content": "q"}],
                                                                  "answer": "2"}]
    path = write_jsonl(root / "len.jsonl", rows)
    lm = load_model(tiny_vlm)
    ds = PromptDataset.load(str(path), system_prompt="none")
    longest = ds.check_prompt_lengths(lm.processor)
    ex = ds[0]
    batch = lm.processor([ex.messages], images=[ex.images()])
    assert longest == batch.input_ids.shape[1]  # the header-based count equals the real one
    with pytest.raises(DataError, match=r"len.jsonl:1: field 'message': prompt is \d+ tokens \(16 image tokens\)"):
        PromptDataset.load(str(path), system_prompt="none").check_prompt_lengths(lm.processor, 50)
    with pytest.raises(DataError, match="text-only"):
        PromptDataset.load(str(path)).check_prompt_lengths(load_model(tiny_lm).processor)
    skipping = PromptDataset.load(str(path), skip_invalid=True, system_prompt="none")
    skipping.check_prompt_lengths(lm.processor, 50)
    assert len(skipping) == 1 and len(skipping.skipped) == 1


def test_mixture_is_deterministic_proportional_and_resumable():
    a = MixtureSampler([10, 40], probs=[0.3, 0.7], seed=5)
    draws = a.take(2000)
    share = sum(1 for dsi, _ in draws if dsi == 0) / len(draws)
    assert 0.26 < share < 0.34
    # within an epoch every row of a dataset is drawn once before any repeats
    first = [r for dsi, r in draws if dsi == 0][:10]
    assert sorted(first) == list(range(10))
    b = MixtureSampler([10, 40], probs=[0.3, 0.7], seed=5)
    assert b.take(2000) == draws  # same seed -> same stream
    c = MixtureSampler([10, 40], probs=[0.3, 0.7], seed=5)
    c.take(123)
    state = json.loads(json.dumps(c.state_dict()))  # survives a JSON round trip
    d = MixtureSampler([10, 40], probs=[0.3, 0.7], seed=5)
    d.load_state_dict(state)
    assert d.take(500) == draws[123:623]
    assert MixtureSampler([10, 40], probs=[0.3, 0.7], seed=6).take(50) != draws[:50]
    with pytest.raises(Exception, match="same data"):
        MixtureSampler([11, 40], seed=5).load_state_dict(state)
