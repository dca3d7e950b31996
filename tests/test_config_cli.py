"""`lmmr1 config` (resolved recipe round trip), `lmmr1 train --dry-run` (every check, no weights) and
the one rule for relative paths (every path in a recipe is relative to the recipe's folder)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from lmmr1.cli import main
from lmmr1.pipeline import load_pipeline, stage_configs
from lmmr1.trainer.config import load_config, to_dict
from tests.conftest import short_context_copy

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # typer exits 0 through SystemExit on success
        rc = e.code or 0
    out = capsys.readouterr()
    return rc, out.out, out.err


def error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err  # exactly one line, no traceback
    assert lines[0].startswith("error: "), err
    return lines[0][len("error: "):]


# ------------------------------------------------------------------------------------ lmmr1 config
def test_config_prints_every_default_and_round_trips(tmp_path, capsys):
    rc, out, _ = cli(capsys, "config", RECIPES / "smoke.yaml", "train.steps=7", "algo.kl_coef=0.01")
    assert rc == 0
    printed = yaml.safe_load(out)
    assert printed["train"]["steps"] == 7 and printed["algo"]["kl_coef"] == 0.01
    assert printed["train"]["keep_checkpoints"] == 2 and printed["rollout"]["top_k"] == 0  # defaults written out
    assert printed["data"][0]["path"] == str(RECIPES / "data" / "smoke_text.jsonl")  # absolute
    saved = tmp_path / "elsewhere" / "resolved.yaml"
    saved.parent.mkdir()
    saved.write_text(out)
    original = load_config(RECIPES / "smoke.yaml", ["train.steps=7", "algo.kl_coef=0.01"])
    assert to_dict(load_config(saved)) == to_dict(original)  # identical Config from any folder


def test_config_of_a_pipeline_round_trips_stage_by_stage(tmp_path, capsys):
    rc, out, _ = cli(capsys, "config", RECIPES / "demo_cpu.yaml", "stages.1.train.steps=12")
    assert rc == 0
    printed = yaml.safe_load(out)
    assert [s["name"] for s in printed["stages"]] == ["sft_cold_start", "fre_text_rl", "mgt_image_rl"]
    assert printed["stages"][1]["train"]["steps"] == 12 and printed["stages"][0]["type"] == "sft"
    assert printed["stages"][1]["data"][0]["path"] == "synth:counting_train_text"
    assert printed["synth"][0]["seed"] == 0 and printed["synth"][0]["knobs"]["grid"] == 3
    saved = tmp_path / "resolved.yaml"
    saved.write_text(out)
    want = [(n, to_dict(c)) for n, c in stage_configs(load_pipeline(RECIPES / "demo_cpu.yaml",
                                                                     ["stages.1.train.steps=12"]))]
    got = [(n, to_dict(c)) for n, c in stage_configs(load_pipeline(saved))]
    assert got == want


def test_config_refuses_an_invalid_value_with_one_line(capsys):
    rc, _, err = cli(capsys, "config", RECIPES / "smoke.yaml", "optim.lr=-1")
    assert rc == 2 and error_line(err) == "optim.lr=-1.0 is out of range: must be > 0"


# ----------------------------------------------------------------------------------------- paths
def test_every_relative_path_in_a_recipe_is_relative_to_its_folder(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the same recipe means the same run from any working directory
    try:
        smoke = load_config(RECIPES / "smoke.yaml")
        fre = load_config(RECIPES / "lmm_r1" / "fre_text.yaml")
        geo = load_config(RECIPES / "lmm_r1" / "mgt_geo.yaml")
        mpr = load_config(RECIPES / "lmm_r1" / "mgt_perce_reason.yaml")
        over = load_config(RECIPES / "smoke.yaml", ["output_dir=here/run"])
    finally:
        os.chdir(cwd)
    assert smoke.output_dir == str(ROOT / "runs" / "smoke")  # runs/ at the repo root, as before
    assert smoke.data[0].path == str(RECIPES / "data" / "smoke_text.jsonl")
    assert fre.output_dir == str(ROOT / "runs" / "lmm_r1" / "fre_text")
    assert geo.model.path == mpr.model.path == str(Path(fre.output_dir) / "final")  # MGT starts from FRE's final
    assert over.output_dir == "here/run"  # command-line overrides stay relative to the current directory
    pipe = load_pipeline(RECIPES / "demo_cpu.yaml")
    assert pipe["output_dir"] == str(ROOT / "runs" / "demo_cpu")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.yaml").write_text("model: {path: ../m}\ndata: [rows.jsonl]\noutput_dir: out\n")
    short = load_config(tmp_path / "sub" / "r.yaml")  # the short `data: [file]` form follows the same rule
    assert (short.data[0].path, short.model.path, short.output_dir) == (
        str(tmp_path / "sub" / "rows.jsonl"), str(tmp_path / "m"), str(tmp_path / "sub" / "out"))


def test_mgt_geo_as_shipped_dry_runs_after_fre_text(tmp_path, tiny_vlm, capsys):
    """The shipped pair, copied with the same layout: fre_text's final model is where mgt_geo looks."""
    (tmp_path / "recipes" / "lmm_r1").mkdir(parents=True)
    for name in ("fre_text.yaml", "mgt_geo.yaml"):
        shutil.copy(RECIPES / "lmm_r1" / name, tmp_path / "recipes" / "lmm_r1" / name)
    fre = load_config(tmp_path / "recipes" / "lmm_r1" / "fre_text.yaml")
    shutil.copytree(tiny_vlm, Path(fre.output_dir) / "final")  # what fre_text.yaml leaves behind
    data = tmp_path / "geo.jsonl"
    data.write_text(json.dumps({"message": json.dumps([{"role": "user", "content": "3, 4: hypotenuse?"}]),
                                "answer": "5"}) + "\n")
    rc, out, err = cli(capsys, "train", tmp_path / "recipes" / "lmm_r1" / "mgt_geo.yaml", "--dry-run",
                       f"data.0.path={data}")
    assert rc == 0, err
    assert f"model: {tmp_path / 'runs' / 'lmm_r1' / 'fre_text' / 'final'} (qwen2_5_vl" in out
    assert f"output_dir: {tmp_path / 'runs' / 'lmm_r1' / 'mgt_geo'} (will be created)" in out
    assert not (tmp_path / "runs" / "lmm_r1" / "mgt_geo").exists()  # a dry run writes nothing


# --------------------------------------------------------------------------------------- dry run
@pytest.fixture
def recipe(tmp_path, tiny_vlm):
    """A single-stage recipe on the tiny VLM with one text and one image dataset."""
    from PIL import Image

    Image.new("RGB", (56, 56), "red").save(tmp_path / "red.png")
    rows = [{"message": json.dumps([{"role": "user", "content": "1+1?"}]), "answer": "2"},
            {"message": json.dumps([{"role": "user", "content": [{"type": "image", "image": "red.png"},
                                                                  {"type": "text", "text": "colour?"}]}]),
             "answer": "red"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"output_dir": "out", "model": {"path": str(tiny_vlm)},
                                    "data": [{"path": "d.jsonl", "system_prompt": "none"}],
                                    "reward": [{"name": "accuracy"}, {"name": "format"}],
                                    "train": {"steps": 3}}))
    return path


def test_dry_run_checks_everything_and_loads_no_weights(tmp_path, tiny_vlm, recipe, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_vlm, model)
    for w in model.glob("*.safetensors"):
        w.write_bytes(b"not a safetensors file")  # a real run would fail to load these; a dry run never reads them
    rc, out, err = cli(capsys, "train", recipe, "--dry-run", f"model.path={model}")
    assert rc == 0, err
    assert "data d: 2 rows (0 skipped), 1 images decoded, longest prompt" in out
    assert "rewards: accuracy x1, format x0.5" in out
    assert f"output_dir: {tmp_path / 'out'} (will be created)" in out
    assert out.strip().endswith("no weights were loaded and nothing was written")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make, override, expected", [
    (lambda p: (p / "out").write_text("x"), [], "output_dir {p}/out is a file; choose a directory path"),
    (lambda p: None, ["reward=[{name: acuracy}]"], "unknown reward 'acuracy'"),
    (lambda p: None, ["model.path={p}/nowhere"], "model directory {p}/nowhere does not exist"),
    (lambda p: (p / "d.jsonl").write_text((p / "d.jsonl").read_text() + '{"message": "[]", "answer": {}}\n'), [],
     "{p}/d.jsonl:3: field 'message' has no user turn"),
    (lambda p: (p / "red.png").write_bytes((p / "red.png").read_bytes()[:60]), [],
     "{p}/d.jsonl:2: field 'message', image 1: not a readable image (OSError: image file is truncated)"),
    (lambda p: None, ["train.steps=0"], "train.steps=0 is out of range"),
    # a reward file that imports but fails when called: the dry run calls it once on a sample
    (lambda p: (p / "rw.py").write_text("def boom(samples):\n    raise ValueError('no gold field')\n"),
     ["reward=[{path: {p}/rw.py, name: boom}]"], "no gold field"),
])
def test_dry_run_refuses_with_one_line_and_exit_2(tmp_path, recipe, capsys, make, override, expected):
    make(tmp_path)
    rc, out, err = cli(capsys, "train", recipe, "--dry-run", *[o.replace("{p}", str(tmp_path)) for o in override])
    assert rc == 2
    line = error_line(err)
    assert expected.replace("{p}", str(tmp_path)) in line, line


def test_dry_run_refuses_a_prompt_longer_than_the_model_context(tmp_path, tiny_vlm, recipe, capsys):
    model = short_context_copy(tiny_vlm, tmp_path / "short_ctx", 20)
    rc, _, err = cli(capsys, "train", recipe, "--dry-run", f"model.path={model}")
    assert rc == 2
    assert error_line(err).startswith(f"{tmp_path / 'd.jsonl'}:1: field 'message': prompt is ")
    assert "but the model's context is 20 tokens (max_position_embeddings)" in err


def test_dry_run_of_a_pipeline_checks_every_stage(tmp_path, capsys):
    rc, out, err = cli(capsys, "train", RECIPES / "demo_cpu.yaml", "--dry-run", f"output_dir={tmp_path / 'demo'}")
    assert rc == 0, err
    for i, name in enumerate(["sft_cold_start", "fre_text_rl", "mgt_image_rl"]):
        assert f"stage {i} '{name}'" in out
    assert "synth: counting/train x4000, counting/test x200" in out
    assert not (tmp_path / "demo").exists()
    rc, _, err = cli(capsys, "train", RECIPES / "demo_cpu.yaml", "--dry-run", f"output_dir={tmp_path / 'demo'}",
                     "stages.2.algo.advantage=gaee")
    assert rc == 2 and error_line(err).startswith("stage 2 'mgt_image_rl': algo.advantage='gaee' is not valid")
    rc, _, err = cli(capsys, "train", RECIPES / "demo_cpu.yaml", "--dry-run", f"output_dir={tmp_path / 'demo'}",
                     "synth.0.knobs.max_cnt=3")
    assert rc == 2 and "unknown knob(s) max_cnt; valid knobs: max_count (default 5)" in error_line(err)


def test_dry_run_checks_a_pipelines_synth_and_eval_sections(tmp_path, capsys):
    base = [RECIPES / "demo_cpu.yaml", "--dry-run", f"output_dir={tmp_path / 'demo'}"]
    rc, _, err = cli(capsys, "train", *base, "eval.max_new_tokenz=3")
    assert rc == 2 and error_line(err).startswith("eval: EvalConfig.__init__() got an unexpected keyword argument "
                                                  "'max_new_tokenz' (keys: suites, system_prompt, n, temperature")
    rc, _, err = cli(capsys, "train", *base, f"eval.suites.extra={tmp_path / 'none.jsonl'}")
    assert rc == 2 and error_line(err) == f"eval.suites.extra: {tmp_path / 'none.jsonl'} does not exist"
    rc, _, err = cli(capsys, "train", *base, "synth.0.count=3")
    assert rc == 2 and error_line(err) == ("synth[0]: unknown keys ['count'] (use suite, split, n, modality, seed, "
                                           "image_size, name, knobs)")


def test_a_pipeline_validates_every_stage_before_the_first_starts(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", RECIPES / "demo_cpu.yaml", f"output_dir={tmp_path / 'demo'}",
                     "stages.2.rollout.top_p=0")
    assert rc == 2 and error_line(err) == "stage 'mgt_image_rl': rollout.top_p=0.0 is out of range: must be in (0, 1]"
    assert not (tmp_path / "demo" / "data").exists() and not (tmp_path / "demo" / "0_sft_cold_start").exists()
