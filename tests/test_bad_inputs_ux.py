"""Bad inputs to eval, LoRA options and W&B: each one is one line that names the fix, never a traceback."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from lmmr1.cli import main
from lmmr1.trainer.config import ConfigError, load_config

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SMOKE = RECIPES / "data" / "smoke_text.jsonl"


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0][len("error: "):]


@pytest.mark.parametrize("extra, expected", [
    ([], "model directory {missing} does not exist; pass a local Hugging Face checkpoint directory"),
    (["--n", "0"], "eval n=0: samples per problem must be >= 1"),  # checked before the model is looked for
    (["--temperature", "-1"], "eval temperature=-1.0: must be >= 0 (0 = greedy)"),
    (["--top-p", "0"], None),  # not an eval option: typer's usage error (exit 2), checked below
    (["--max-new-tokens", "0"], "eval max_new_tokens=0: must be >= 1"),
    (["--batch-size", "0"], "eval batch_size=0: must be >= 1"),
])
def test_eval_bad_values_and_missing_model(capsys, tmp_path, extra, expected):
    missing = tmp_path / "no_model"
    argv = ["eval", "--model", str(missing), "--bench", f"smoke={SMOKE}", *extra]
    if expected is None:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and "No such option: --top-p" in capsys.readouterr().err
        return
    assert one_error_line(capsys, argv).startswith(expected.format(missing=missing))


@pytest.mark.parametrize("benches, expected", [
    (["smoke"], "--bench 'smoke' must look like NAME=PATH, e.g. mathvista=testmini.parquet"),
    (["=" + str(SMOKE)], f"--bench '={SMOKE}' must look like NAME=PATH"),
    (["smoke="], "--bench 'smoke=' must look like NAME=PATH"),
    ([f"a={SMOKE}", f"a={SMOKE}"], "--bench name 'a' is given twice; give each benchmark its own name"),
    ([f"a={SMOKE}.missing"], f"benchmark file {SMOKE}.missing does not exist"),  # before the model is looked for
])
def test_eval_bad_bench_specs(capsys, tmp_path, benches, expected):
    argv = ["eval", "--model", str(tmp_path / "no_model")]
    for b in benches:
        argv += ["--bench", b]
    assert one_error_line(capsys, argv).startswith(expected)


def test_eval_of_an_adapter_whose_base_model_is_missing_names_it(capsys, tmp_path):
    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/qwen-vl"}))
    msg = one_error_line(capsys, ["eval", "--model", str(adapter), "--bench", f"s={SMOKE}"])
    assert msg == (f"{adapter} holds a LoRA adapter only; its base model '/models/qwen-vl' (base_model_name_or_path "
                   f"in {adapter / 'adapter_config.json'}) is not a local checkpoint directory here: set that field "
                   "to the base model's folder")
    (adapter / "adapter_config.json").write_text("{not json")
    assert one_error_line(capsys, ["eval", "--model", str(adapter), "--bench", f"s={SMOKE}"]).startswith(
        f"{adapter / 'adapter_config.json'} is not a valid PEFT adapter config: ")


def _recipe(tmp_path, tiny_vlm, **model) -> Path:
    recipe = {"output_dir": str(tmp_path / "run"), "model": {"path": str(tiny_vlm), **model},
              "data": [{"path": str(SMOKE), "system_prompt": "none"}], "reward": ["accuracy"],
              "rollout": {"n": 2, "max_new_tokens": 4}, "train": {"steps": 1, "prompts_per_step": 2,
                                                                "tensorboard": False}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_unknown_lora_target_module_names_the_valid_modules(capsys, tmp_path, tiny_vlm):
    pytest.importorskip("peft")
    recipe = _recipe(tmp_path, tiny_vlm, lora_r=2, lora_target_modules=["q_proj", "qkv_proj"])
    assert one_error_line(capsys, ["train", str(recipe)]) == (
        "LoRA target modules (model.lora_target_modules): 'qkv_proj' is not a linear layer of the language model; "
        "choose from down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj")


def test_wandb_requested_but_not_installed_stops_before_loading(capsys, tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    recipe = _recipe(tmp_path, tmp_path / "no_model_needed")  # refused before the model is looked for
    assert one_error_line(capsys, ["train", str(recipe), "train.wandb=true", "train.wandb_run_name=x"]) == (
        "train.wandb=true but wandb is not installed: pip install 'lmmr1[wandb]' (or set train.wandb=false)")


@pytest.mark.parametrize("override, expected", [
    ("model.lora_dropout=1.5", "model.lora_dropout must be in [0, 1), got 1.5"),
    ("model.lora_dropout=-0.1", "model.lora_dropout must be in [0, 1), got -0.1"),
    ("model.lora_save=adaptor", "model.lora_save='adaptor' is not valid; did you mean 'adapter'? "
                                "(choose from merged, adapter, both)"),
    ("model.lora_target_modules=q_proj", "model.lora_target_modules must be a non-empty list of module names, "
                                         "e.g. [q_proj, v_proj]; got 'q_proj'"),
    ("model.lora_target_modules=[]", "model.lora_target_modules must be a non-empty list of module names"),
    ("model.lora_r=-1", "model.lora_r must be >= 0 (0 = no LoRA), got -1"),
    ("model.wandb_entity=x", "unknown config key 'model.wandb_entity'; did you mean 'train.wandb_entity'?"),
])
def test_lora_config_values_are_checked(tmp_path, override, expected):
    lora = [] if "lora_r" in override else ["model.lora_r=4"]
    with pytest.raises(ConfigError) as e:
        cfg = load_config(None, [f"output_dir={tmp_path}", "model.path=m", "data=[d.jsonl]", "reward=[accuracy]",
                                 *lora, override])
        cfg.validate()
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_adapter_save_without_lora_is_refused(tmp_path):
    cfg = load_config(None, ["model.path=m", "data=[d.jsonl]", "reward=[accuracy]", "model.lora_save=adapter"])
    with pytest.raises(ConfigError, match=r"^model.lora_save=adapter saves a LoRA adapter, but LoRA is off: "
                                          r"set model.lora_r > 0$"):
        cfg.validate()
