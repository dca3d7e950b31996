"""A shortened multi-stage recipe end to end: stage hand-off, kill between/inside stages, summary and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from lmmr1.trainer import Trainer, load_config

RECIPE = {
    "output_dir": "OUT",
    "model": {"tiny": "tiny"},
    "synth": [{"suite": "arithmetic", "split": "train", "n": 40, "modality": "both"},
              {"suite": "arithmetic", "split": "test", "n": 6, "modality": "both"}],
    "eval": {"suites": {"arith_text": "synth:arithmetic_test_text", "arith_image": "synth:arithmetic_test_image"},
             "system_prompt": "none", "max_new_tokens": 8},
    "rollout": {"n": 2, "max_new_tokens": 8},
    "optim": {"lr": 0.001},
    "train": {"prompts_per_step": 4, "micro_batch_size": 8, "tensorboard": False, "num_threads": 2},
    "reward": [{"name": "accuracy"}, {"name": "format"}],
    "stages": [
        {"name": "sft", "type": "sft", "data": [{"path": "synth:arithmetic_train_text", "system_prompt": "none"},
                                                {"path": "synth:arithmetic_train_image", "system_prompt": "none"}],
         "train": {"steps": 2}},
        {"name": "fre", "data": [{"path": "synth:arithmetic_train_text", "system_prompt": "none"}],
         "train": {"steps": 2}},
        {"name": "mgt", "data": [{"path": "synth:arithmetic_train_image", "system_prompt": "none"}],
         "train": {"steps": 3, "save_every": 2}},
    ],
}


def run(recipe, env=None):
    return subprocess.run([sys.executable, "-m", "lmmr1.cli", "train", str(recipe)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})


def test_multi_stage_recipe_hand_off_resume_summary_report(tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(out)}))

    # killed at the start of step 3, which only the last stage (mgt) reaches: sft and fre finish first
    res = run(recipe, {"LMMR1_KILL_AT_STEP": "3"})
    assert res.returncode == -9, res.stderr[-2000:]
    assert (out / "0_sft" / "STAGE_COMPLETE").exists() and (out / "1_fre" / "STAGE_COMPLETE").exists()
    assert not (out / "2_mgt" / "STAGE_COMPLETE").exists()
    assert (out / "2_mgt" / "checkpoints" / "step_000002" / "COMPLETE").exists()

    res = run(recipe)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stage 0 'sft' already complete" in res.stderr and "stage 1 'fre' already complete" in res.stderr
    assert "resumed from" in res.stderr  # mgt continued from its step-2 checkpoint

    # hand-off: each stage trained from the previous stage's final model
    cfg1 = yaml.safe_load((out / "1_fre" / "config.yaml").read_text())
    cfg2 = yaml.safe_load((out / "2_mgt" / "config.yaml").read_text())
    assert cfg1["model"]["path"] == str(out / "0_sft" / "final")
    assert cfg2["model"]["path"] == str(out / "1_fre" / "final")
    assert cfg1["type"] == "rl" and yaml.safe_load((out / "0_sft" / "config.yaml").read_text())["type"] == "sft"
    steps = [json.loads(x)["step"] for x in (out / "2_mgt" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3 and 3 in steps

    summary = json.loads((out / "summary.json").read_text())
    names = [s["name"] for s in summary["stages"]]
    assert names == ["sft", "fre", "mgt"] and "sft" in names[0]
    for st in summary["stages"]:
        assert set(st["eval"]) == {"arith_text", "arith_image"}
        for suite, r in st["eval"].items():
            assert suite.endswith(("_text", "_image"))
            assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["format_rate"] <= 1.0
    report = (out / "report.html").read_text()
    assert "Held-out evaluation" in report and "<svg" in report and "Stage: mgt" in report

    (out / "report.html").unlink()
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "report", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and (out / "report.html").exists()

    # --compare tabulates another run next to this one (here: the mgt stage's own directory as a run)
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "report", str(out), "--compare", str(out / "2_mgt")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = (out / "report.html").read_text()
    compared = report.split("<h2>Compared runs</h2>")[1].split("</table>")[0]
    assert compared.count("<tr>") == 1 + 3 + 1  # header, run / sft fre mgt, 2_mgt / 2_mgt
    mgt_acc = f"{summary['stages'][2]['eval']['arith_image']['accuracy']:.3f}"  # suites sorted: image first
    assert f"<td>run / mgt</td><td>{mgt_acc}</td>" in compared and "<td>2_mgt / 2_mgt</td>" in compared
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "report", str(out), "--compare", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "nope is not an lmmr1 run directory" in res.stderr

    # an edited recipe does not silently reuse a finished stage's results
    edited = {**RECIPE, "output_dir": str(out)}
    edited["stages"] = [dict(st) for st in RECIPE["stages"]]
    edited["stages"][1] = {**edited["stages"][1], "train": {"steps": 5}}
    recipe.write_text(yaml.safe_dump(edited))
    res = run(recipe)
    assert res.returncode == 2 and "stage 'fre'" in res.stderr and "changed: train" in res.stderr, res.stderr[-2000:]


def test_sft_stage_lowers_the_loss_on_response_tokens(tmp_path, tiny_vlm):
    from lmmr1.data.synth import write_suite

    data = write_suite(tmp_path / "data", "counting", "train", 64, "both")
    cfg = load_config(None, [f"output_dir={tmp_path / 'sft'}", f"model.path={tiny_vlm}", "type=sft",
                             f"data=[{{path: {data['text']}, system_prompt: none}}, "
                             f"{{path: {data['image']}, system_prompt: none}}]",
                             "train.steps=25", "train.prompts_per_step=16", "train.micro_batch_size=8",
                             "optim.lr=0.003", "train.tensorboard=false"])
    Trainer(cfg).train()
    losses = [json.loads(x)["loss/sft"] for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0], losses


def test_every_shipped_recipe_parses_and_validates():
    from pathlib import Path

    from lmmr1.pipeline import is_pipeline, load_pipeline, stage_configs

    recipes = sorted((Path(__file__).resolve().parent.parent / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 8
    for r in recipes:
        if is_pipeline(r):
            for _, cfg in stage_configs(load_pipeline(r)):
                cfg.validate()
        else:
            load_config(r).validate()
    paper = load_config(Path(__file__).resolve().parent.parent / "recipes/lmm_r1/fre_text.yaml")
    assert (paper.algo.advantage, paper.algo.kl_coef, paper.algo.kl_estimator, paper.algo.kl_in_reward) == (
        "reinforce_pp_baseline", 0.001, "k1", True)
    assert (paper.rollout.n, paper.train.prompts_per_step, paper.rollout.temperature, paper.rollout.max_new_tokens) == (
        16, 256, 1.0, 4096)
    geo = load_config(Path(__file__).resolve().parent.parent / "recipes/lmm_r1/mgt_geo.yaml")
    assert geo.algo.advantage == "gae" and geo.optim.lr == 1e-6


def test_main_job_demo_recipe_runs_shrunk(tmp_path):
    """The README's main job (python -m lmmr1.demo on recipes/demo_cpu.yaml), shrunk by dotted
    overrides: the shipped recipe synthesises its data, runs all three stages and prints the table."""
    out = tmp_path / "demo"
    shrink = ["synth.0.n=24", "synth.1.n=4", "synth.2.n=4", "eval.batch_size=8", "rollout.n=2",
              "train.prompts_per_step=4",
              "stages.0.train.steps=2", "stages.0.train.prompts_per_step=4", "stages.1.train.steps=1",
              "stages.2.train.steps=1", "optim.warmup_steps=0"]
    res = subprocess.run([sys.executable, "-m", "lmmr1.demo", "--out", str(out), *shrink], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "held-out accuracy after each stage" in res.stdout and "mgt_image_rl" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["sft_cold_start", "fre_text_rl", "mgt_image_rl"]
    # held-out test suites plus the validation split the recipe is tuned on (disjoint from both)
    assert all(set(s["eval"]) == {"counting_text", "counting_image", "val_text", "val_image"}
               for s in summary["stages"])
    assert all(r["problems"] == 4 for s in summary["stages"] for r in s["eval"].values())
    from PIL import Image

    pic = sorted((out / "data" / "images").rglob("*.png"))[0]
    assert Image.open(pic).size == (84, 84)  # the 3x3 grid at one vision token per cell
    assert (out / "report.html").exists()


def test_synth_files_are_remade_when_their_spec_changes(tmp_path):
    from rich.console import Console

    from lmmr1.pipeline import run_synth

    def spec(n):
        return {"synth": [{"suite": "counting", "split": "test", "n": n, "modality": "text"}]}

    path = tmp_path / "data" / "counting_test_text.jsonl"
    run_synth(spec(3), tmp_path, Console(quiet=True))
    first = path.stat().st_mtime_ns
    run_synth(spec(3), tmp_path, Console(quiet=True))  # same spec: reused
    assert path.stat().st_mtime_ns == first and len(path.read_text().splitlines()) == 3
    run_synth(spec(5), tmp_path, Console(quiet=True))  # changed spec: remade
    assert len(path.read_text().splitlines()) == 5
