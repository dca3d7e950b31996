"""`lmmr1 data prepare` and data[].image_root on rows shaped like the released LMM-R1 data.

The rows are built here in the released layout (learned from the reference repository's example
file): ``message`` is a JSON *string* of chat turns with the reference's system prompt, images are
``{"type": "image", "image": "/abs/path/of/the/authors/machine.jpg"}`` and answers look like
``$\\boxed{60}$``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from lmmr1.data import PromptDataset
from lmmr1.data.dataset import DataConfig
from lmmr1.data.prompts import LMM_R1
from lmmr1.trainer.config import load_config
from tests.test_config_cli import cli, error_line

FOREIGN = "/root/projects/OpenRLHF/data/VerMulti/images"  # where the authors' rows say the images are


def released_row(question: str, answer: str, *images: str) -> dict:
    content = [{"type": "text", "text": question}] + [{"type": "image", "image": f"{FOREIGN}/{p}"} for p in images]
    turns = [{"role": "system", "content": LMM_R1}, {"role": "user", "content": content}]
    return {"question": question, "answer": answer, "message": json.dumps(turns)}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def download(tmp_path: Path) -> tuple[Path, Path]:
    """A download folder as the user has it, and the folder the images were unpacked into."""
    unpacked = tmp_path / "unpacked"
    for sub, colour in (("a", "red"), ("b", "blue")):  # the same file name in two folders
        (unpacked / "VerMulti" / "images" / sub).mkdir(parents=True)
        Image.new("RGB", (28, 28), colour).save(unpacked / "VerMulti" / "images" / sub / "1.jpg")
    dl = tmp_path / "dl"
    write_rows(dl / "VerMulti" / "mathv_geo_message.jsonl",
               [released_row("Angle?", "$\\boxed{60}$", "a/1.jpg"), released_row("Side?", "$\\boxed{5}$", "b/1.jpg")])
    write_rows(dl / "deepscaler" / "deepscaler_message.jsonl", [
        {"problem": "1+1?", "answer": "2", "message": json.dumps([{"role": "user", "content": "1+1?"}])}])
    return dl, unpacked


def pixel(ex) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(ex.images()[0])[0, 0])


def test_prepare_writes_the_recipes_file_names_with_images_found_here(tmp_path, capsys):
    dl, unpacked = download(tmp_path)
    rc, _, err = cli(capsys, "data", "prepare", "--lmm-r1", dl, "--out", tmp_path / "data", "--image-root", unpacked)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["deepscaler_40k.jsonl", "vermulti_geo.jsonl"]
    assert "vermulti_geo.jsonl: 2 rows, 2 images" in err and "deepscaler_40k.jsonl: 1 rows, 0 images" in err
    geo = PromptDataset.load(DataConfig(path=str(tmp_path / "data" / "vermulti_geo.jsonl"), system_prompt="r1"))
    # the longest existing tail wins: a/1.jpg and b/1.jpg stay apart (red, blue)
    (r0, _, b0), (r1, _, b1) = pixel(geo[0]), pixel(geo[1])
    assert r0 > 200 > b0 and b1 > 200 > r1
    assert geo[0].messages[0] == {"role": "system", "content": LMM_R1}  # the row's own prompt is kept
    assert geo[0].answer == "$\\boxed{60}$"
    row = json.loads((tmp_path / "data" / "vermulti_geo.jsonl").read_text().splitlines()[0])
    assert isinstance(row["message"], str) and row["question"] == "Angle?"  # the released layout, paths fixed
    assert str(unpacked / "VerMulti" / "images" / "a" / "1.jpg") in row["message"]


def test_image_root_lets_training_read_the_released_file_directly(tmp_path):
    dl, unpacked = download(tmp_path)
    src = dl / "VerMulti" / "mathv_geo_message.jsonl"
    ds = PromptDataset.load(DataConfig(path=str(src), image_root=str(unpacked)))
    assert [ex.image_refs[0] for ex in ds] == [unpacked / "VerMulti/images/a/1.jpg", unpacked / "VerMulti/images/b/1.jpg"]
    # in a recipe, image_root is relative to the recipe's folder like every other path
    (tmp_path / "r.yaml").write_text(f"model: {{path: m}}\ndata: [{{path: {src}, image_root: unpacked}}]\n")
    assert load_config(tmp_path / "r.yaml").data[0].image_root == str(unpacked)


def test_a_missing_image_is_one_line_naming_the_row(tmp_path, capsys):
    dl, unpacked = download(tmp_path)
    write_rows(dl / "VerMulti" / "mathv_geo_message.jsonl", [released_row("Angle?", "60", "a/1.jpg"),
                                                            released_row("Gone?", "1", "c/9.jpg")])
    rc, _, err = cli(capsys, "data", "prepare", "--lmm-r1", dl, "--out", tmp_path / "data", "--image-root", unpacked)
    line = error_line(err)
    assert rc == 2 and line.startswith(f"{dl / 'VerMulti' / 'mathv_geo_message.jsonl'}:2: image file {FOREIGN}/c/9.jpg "
                                       f"does not exist, neither under image_root {unpacked}")
    assert not (tmp_path / "data" / "vermulti_geo.jsonl").exists()  # no half-written file under the recipe's name
    rc, _, err = cli(capsys, "data", "prepare", dl / "VerMulti" / "mathv_geo_message.jsonl", "--out",
                     tmp_path / "geo.jsonl", "--image-root", unpacked, "--skip-invalid")
    assert rc == 0 and "1 rows skipped, first:" in err and len((tmp_path / "geo.jsonl").read_text().splitlines()) == 1


def test_prepare_usage_errors_are_one_line(tmp_path, capsys):
    rc, _, err = cli(capsys, "data", "prepare", "--out", tmp_path)
    assert rc == 2 and error_line(err) == "give either one INPUT file or --lmm-r1 DOWNLOAD_DIR"
    (tmp_path / "empty").mkdir()
    rc, _, err = cli(capsys, "data", "prepare", "--lmm-r1", tmp_path / "empty", "--out", tmp_path / "o")
    assert rc == 2 and error_line(err).startswith(f"no released LMM-R1 file under {tmp_path / 'empty'}")
