"""Synthetic verifiable suites: exact answers, disjoint deterministic splits, text + image versions."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from lmmr1.data import PromptDataset
from lmmr1.data.synth import problems, write_suite
from lmmr1.errors import LmmR1Error


def test_answers_are_exact():
    for p in problems("arithmetic", "train", 50, max_operand=20, ops="+-*"):
        a, op, b = p.question.removeprefix("What is ").removesuffix("?").split()
        assert int(p.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert p.response.endswith(f"<answer>{p.answer}</answer>")
    for p in problems("geometry", "train", 30):
        a, b = (int(x) for x in p.question.split("legs ")[1].split("?")[0].split(". What")[0].split(" and "))
        expect = math.hypot(a, b) if "hypotenuse" in p.question else a * b / 2
        assert float(p.answer) == expect
    for p in problems("counting", "train", 50, max_count=4, distractors=3):
        target = f"a {p.fields['color']} {p.fields['shape']}"
        listed = p.question.split("shows ")[1].split(". How")[0].split(", ")
        assert listed.count(target) == int(p.answer)


def test_counting_grid_places_one_shape_per_cell():
    """With grid=3 on an 84-pixel canvas every shape sits in its own 28-pixel cell (one merged
    vision token per cell); the picture holds exactly the counted shapes when there are no distractors."""
    from lmmr1.data.synth import COLORS

    for p in problems("counting", "train", 20, max_count=6, distractors=0, grid=3):
        img = p.draw(84).convert("RGB")
        rgb = COLORS[p.fields["color"]]
        filled = [cy * 3 + cx for cy in range(3) for cx in range(3) if img.getpixel((cx * 28 + 14, cy * 28 + 14)) == rgb]
        assert len(filled) == int(p.answer)
        assert all(img.getpixel((cx * 28 + 1, cy * 28 + 1)) == (255, 255, 255) for cy in range(3) for cx in range(3))
        assert p.key.startswith("count:g3:")  # a different grid is a different problem
    with pytest.raises(LmmR1Error, match="must fit the 2x2 grid"):
        next(problems("counting", "train", 1, max_count=4, distractors=1, grid=2))


def test_splits_are_disjoint_and_deterministic():
    for suite in ("arithmetic", "counting", "geometry"):
        train = {p.key for p in problems(suite, "train", 300)}
        test = {p.key for p in problems(suite, "test", 300)}
        assert train and test and not (train & test), suite
        again = [p.key for p in problems(suite, "test", 300)]
        assert again == [p.key for p in problems(suite, "test", 300)]
    with pytest.raises(LmmR1Error, match="unknown suite"):
        list(problems("chess", "train", 1))


def test_demo_validation_split_is_disjoint_from_train_and_test():
    """recipes/demo_cpu.yaml is tuned on the val split: with the demo's knobs it must share no problem
    with the 4000 training problems or the 200 held-out test problems."""
    knobs = {"max_count": 6, "distractors": 0, "grid": 3}
    train = {p.key for p in problems("counting", "train", 4000, **knobs)}
    val = {p.key for p in problems("counting", "val", 200, **knobs)}
    test = {p.key for p in problems("counting", "test", 200, **knobs)}
    assert len(train) == 4000 and len(val) == 200 and len(test) == 200
    assert not (val & train) and not (val & test) and not (train & test)


def test_write_suite_text_and_image_versions_load(tmp_path):
    out = write_suite(tmp_path, "counting", "test", 12, "both", max_count=3)
    text = PromptDataset.load(str(out["text"]), system_prompt="none")
    image = PromptDataset.load(str(out["image"]), system_prompt="none")
    assert len(text) == len(image) == 12
    assert not text[0].has_images and image[0].has_images
    assert [e.answer for e in text] == [e.answer for e in image]  # the same problems
    assert image[0].images()[0].size == (112, 112)
    assert text[0].fields["response"].startswith("<think>")
    assert {e.datasource for e in text} == {"counting_text"}


def test_cli_data_synth(tmp_path):
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "data", "synth", "arithmetic", "--out", str(tmp_path),
                          "--split", "val", "--n", "5", "--modality", "image", "--knob", "max_operand=50"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in (tmp_path / "arithmetic_val_image.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all((tmp_path / json.loads(r["message"])[0]["content"][0]["image"]).exists()
                                  for r in rows)


def _cli(capsys, *argv):
    from lmmr1.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code or 0
    return rc, capsys.readouterr().err


def test_cli_data_synth_warns_when_the_suite_has_fewer_problems_than_asked(tmp_path, capsys):
    from lmmr1.data.synth import _TRIPLES, _split_of

    # the geometry space, enumerated independently: legs (a, b) in either order, k = 1..scale, two questions
    space = {f"geo:{x}:{y}:{ask}" for t in _TRIPLES for k in range(1, 5) for (x, y) in ((t[0] * k, t[1] * k),
             (t[1] * k, t[0] * k)) for ask in ("hypotenuse", "area")}
    n_train = sum(1 for key in space if _split_of(key) == "train")
    rc, err = _cli(capsys, "data", "synth", "geometry", "--out", tmp_path, "--n", 500, "--modality", "text")
    assert rc == 0
    rows = (tmp_path / "geometry_train_text.jsonl").read_text().splitlines()
    assert len(rows) == n_train < 500
    assert (f"warning: geometry/train: produced {n_train} of 500 requested problems: with default knobs the suite "
            "has no more distinct train problems; raise a knob (scale) for more") in " ".join(err.split())
    rc, err = _cli(capsys, "data", "synth", "geometry", "--out", tmp_path, "--n", 5, "--modality", "text")
    assert rc == 0 and "warning" not in err  # enough problems: no warning


def test_cli_data_synth_lists_valid_knobs_on_a_bad_one(tmp_path, capsys):
    rc, err = _cli(capsys, "data", "synth", "counting", "--out", tmp_path, "--n", 3, "--knob", "max_cnt=3")
    assert rc == 2
    assert err.strip() == ("error: suite counting: unknown knob(s) max_cnt; valid knobs: max_count (default 5), "
                           "distractors (default 2), grid (default 4)")
    assert not list(tmp_path.glob("*.jsonl"))
