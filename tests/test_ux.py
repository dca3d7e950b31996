"""What TRL/EasyR1 users expect: --version, LoRA options end to end, W&B run name/entity."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from lmmr1.errors import LmmR1Error
from lmmr1.trainer.config import load_config
from lmmr1.trainer.logging import MetricsLogger
from lmmr1.trainer.trainer import Trainer

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_version_flag_prints_the_package_version():
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"lmmr1 {version('lmmr1')}\n"


def _lora_cfg(tmp_path, tiny_vlm, *overrides):
    return load_config(None, [
        f"output_dir={tmp_path / 'run'}", f"model.path={tiny_vlm}",
        f"data=[{{path: {RECIPES / 'data/smoke_text.jsonl'}, system_prompt: none}}]",
        "reward=[{name: target_fraction, kwargs: {target: e}}]", "rollout.n=2", "rollout.max_new_tokens=4",
        "train.prompts_per_step=2", "train.micro_batch_size=4", "train.steps=1", "train.tensorboard=false",
        "train.num_threads=2", "optim.lr=0.01", "model.lora_r=2", *overrides])


def test_lora_options_reach_training_and_the_final_adapter(tmp_path, tiny_vlm):
    peft = pytest.importorskip("peft")
    cfg = _lora_cfg(tmp_path, tiny_vlm, "model.lora_target_modules=[q_proj, v_proj]", "model.lora_dropout=0.05",
                    "model.lora_save=adapter")
    trainer = Trainer(cfg)
    lora_layers = {n.rsplit(".", 1)[1] for n, m in trainer.policy.model.named_modules() if hasattr(m, "lora_A")}
    assert lora_layers == {"q_proj", "v_proj"}
    trainer.train()
    final = Path(cfg.output_dir) / "final"
    acfg = json.loads((final / "adapter_config.json").read_text())
    assert acfg["lora_dropout"] == 0.05 and acfg["r"] == 2 and "q_proj|v_proj" in acfg["target_modules"]
    assert (final / "adapter_model.safetensors").exists() and not (final / "config.json").exists()
    # the saved adapter on the base model reproduces the trained policy
    from lmmr1.models import load_model
    from lmmr1.models.sequence import completion_logprobs
    from tests.conftest import user

    base = load_model(tiny_vlm)
    with warnings.catch_warnings():  # peft itself reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        base.model = peft.PeftModel.from_pretrained(base.model, final).eval()
    trainer.policy.model.eval()
    batch = base.processor([user("seven")])
    args = (batch, torch.tensor([0]), torch.tensor([[5, 6, 7]]), torch.ones(1, 3))
    with torch.no_grad():
        trained = completion_logprobs(trainer.policy, *args)[0]
        torch.testing.assert_close(completion_logprobs(base, *args)[0], trained, rtol=1e-5, atol=1e-6)
        # and lmmr1's own loader (eval, a pipeline's next stage) takes the adapter folder as a model
        torch.testing.assert_close(completion_logprobs(load_model(final), *args)[0], trained, rtol=1e-4, atol=1e-5)


class _FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


def test_wandb_init_gets_project_run_name_and_entity(tmp_path, monkeypatch):
    """wandb is an optional extra and not installed here: a stand-in module records what lmmr1 passes."""
    runs = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = MetricsLogger(tmp_path, tensorboard=False, wandb=True, wandb_project="p", wandb_run_name="fre-7b",
                           wandb_entity="lab", config={"a": 1})
    logger.log({"step": 1, "reward/mean": 0.5, "kl": float("nan")})
    logger.close()
    (run,) = runs
    assert run.kwargs == {"project": "p", "name": "fre-7b", "entity": "lab", "config": {"a": 1}, "dir": str(tmp_path)}
    assert run.logged == [(1, {"step": 1, "reward/mean": 0.5, "kl": None})] and run.finished


def test_wandb_requested_but_missing_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, as when not installed
    with pytest.raises(LmmR1Error, match=r"^train.wandb=true but wandb is not installed: pip install 'lmmr1\[wandb\]'"):
        MetricsLogger(tmp_path, tensorboard=False, wandb=True)
