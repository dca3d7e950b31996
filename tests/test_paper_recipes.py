"""recipes/lmm_r1/* carry the LMM-R1 reference scripts' hyper-parameters (issue 11, item 5).

The expected numbers are the reference scripts' flags (examples/scripts/lmm_r1/train_*.sh of the
public LMM-R1 repository) and OpenRLHF's defaults they rely on (Adam betas (0.9, 0.95), warm-up
ratio 0.03, cosine to 0.1 x lr), read off by hand, not computed from the recipes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from lmmr1.cli import main
from lmmr1.data.prompts import LMM_R1, resolve_system_prompt
from lmmr1.trainer.config import ConfigError, load_config
from lmmr1.trainer.trainer import Trainer, steps_for_passes
from tests.test_trainer import make_cfg

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "recipes" / "lmm_r1"


def shown(capsys, recipe: str) -> dict:
    """What `lmmr1 config RECIPE` prints, read back as YAML."""
    with pytest.raises(SystemExit) as e:
        main(["config", str(PAPER / recipe)])
    out = capsys.readouterr().out
    assert e.value.code in (0, None)
    return yaml.safe_load(out)


def test_lmmr1_config_shows_the_reference_values(capsys):
    fre = shown(capsys, "fre_text.yaml")
    assert fre["optim"]["lr"] == 4e-7 and fre["optim"]["betas"] == [0.9, 0.95]
    geo = shown(capsys, "mgt_geo.yaml")
    assert geo["optim"]["lr"] == 1e-6 and geo["algo"]["lam"] == 1.0 and geo["algo"]["advantage"] == "gae"
    mpr = shown(capsys, "mgt_perce_reason.yaml")
    assert mpr["rollout"]["max_new_tokens"] == 8192 and mpr["optim"]["lr"] == 4e-7
    direct = shown(capsys, "direct_rl.yaml")  # the reference baseline: GAE on geometry from the instruct model
    assert direct["algo"]["advantage"] == "gae" and direct["optim"]["lr"] == 1e-6
    assert "Instruct" in direct["model"]["path"] and direct["data"][0]["path"].endswith("vermulti_geo.jsonl")
    for cfg in (fre, geo, mpr, direct):
        rows = cfg["train"]["prompts_per_step"] * cfg["rollout"]["n"]
        assert (rows, cfg["train"]["mini_batch_size"]) == (4096, 256)  # 256 samples per update: 16 per rollout
        assert cfg["train"]["data_passes"] == 2 and cfg["optim"]["warmup_ratio"] == 0.03
        assert cfg["optim"]["min_lr_ratio"] == 0.1 and cfg["algo"]["gamma"] == 1.0
        assert cfg["algo"]["kl_coef"] == 0.001 and cfg["data"][0]["system_prompt"] == "lmm_r1"
        assert cfg["model"]["max_prompt_tokens"] == 4096


def test_the_pipeline_recipe_uses_each_stages_reference_values(capsys):
    pipe = shown(capsys, "lmm_r1.yaml")
    fre, mpr = pipe["stages"]
    assert (fre["optim"]["lr"], fre["rollout"]["max_new_tokens"]) == (4e-7, 4096)
    assert (mpr["optim"]["lr"], mpr["rollout"]["max_new_tokens"]) == (4e-7, 8192)
    assert fre["optim"]["betas"] == mpr["optim"]["betas"] == [0.9, 0.95]
    assert pipe["eval"]["system_prompt"] == "lmm_r1"  # evaluated with the prompt the models trained with
    for stage in pipe["stages"]:  # the paper's 8 GPUs: 8 FSDP2 ranks and 8 samplers sharing them
        d = stage["distributed"]
        assert (d["train_workers"], d["rollout_workers"], d["gpus_per_worker"]) == (8, 8, 0.5)
        assert stage["train"]["micro_batch_size"] % d["train_workers"] == 0  # every rank gets rows


def test_every_deliberate_difference_is_documented():
    """Each recipe marks its differences with DIFF; docs/recipes.md tabulates them per recipe."""
    table = (ROOT / "docs" / "recipes.md").read_text()
    for recipe in sorted(PAPER.glob("*.yaml")):
        if "DIFF" in recipe.read_text():
            assert f"| `{recipe.name}` |" in table, recipe.name


def test_the_reference_system_prompt_is_available_by_name():
    assert resolve_system_prompt("lmm_r1") == LMM_R1
    # the reference's wording, checked on phrases its verifier depends on
    assert "wrapped in $...$" in LMM_R1 and "\\boxed{}" in LMM_R1 and LMM_R1.endswith("</answer>.\n")


def test_data_passes_sets_the_run_length_from_the_data(tmp_path, tiny_vlm):
    # the smoke data: 64 text + 32 image rows = 96; 2 passes at 4 prompts a step = 48 steps
    assert steps_for_passes(2, 96, 4) == 48 and steps_for_passes(1, 10, 4) == 3 and steps_for_passes(0.01, 5, 4) == 1
    trainer = Trainer(make_cfg(tmp_path, tiny_vlm, "train.data_passes=2", "optim.warmup_ratio=0.03"))
    assert trainer.cfg.train.steps == 48
    # warm-up: ceil(0.03 x 48) = ceil(1.44) = 2 steps, so step 0 runs at half the rate, step 1 at the full rate
    assert trainer._lr_lambda(0) == 0.5 and trainer._lr_lambda(1) == 1.0
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5)
    # then cosine over the remaining 46 steps down to min_lr_ratio (0 here): halfway at step 2 + 23
    assert trainer._lr_lambda(25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 23 / 46)))


@pytest.mark.parametrize("override, message", [
    ("train.data_passes=-1", "train.data_passes=-1.0 is out of range"),
    ("optim.warmup_ratio=1.5", "optim.warmup_ratio=1.5 is out of range"),
])
def test_bad_run_length_settings_are_one_line(tmp_path, override, message):
    cfg = load_config(None, ["model.path=m", "data=[d.jsonl]", "reward=[format]", override])
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        cfg.validate()


def test_warmup_steps_and_ratio_together_are_refused():
    cfg = load_config(None, ["model.path=m", "data=[d.jsonl]", "reward=[format]", "optim.warmup_steps=5",
                             "optim.warmup_ratio=0.03"])
    with pytest.raises(ConfigError, match="both set the warm-up length"):
        cfg.validate()
