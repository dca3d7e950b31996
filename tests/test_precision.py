"""Precision as one setting (parameter dtype, compute dtype) in loader, trainer and evaluation.

CPU bf16 autocast (``model.compute_dtype: bf16`` with fp32 weights) stands in for the GPU default.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmmr1.models import load_model
from lmmr1.models.precision import PrecisionError, needs_recompute, resolve_precision
from lmmr1.trainer.config import ConfigError
from lmmr1.trainer.trainer import Trainer
from lmmr1.trainer.update_probe import UpdateProbe
from tests.test_trainer import make_cfg, read_metrics

F32, BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize("dtype, compute, param_want, compute_want, autocast", [
    ("auto", "auto", F32, F32, False),  # CPU: plain fp32 (on a bf16 GPU auto compute is bf16)
    ("auto", "bf16", F32, BF16, True),  # the GPU default's CPU stand-in
    ("bf16", "auto", BF16, BF16, False),  # pure bf16
    ("fp32", "fp32", F32, F32, False),
])
def test_one_meaning_of_auto(dtype, compute, param_want, compute_want, autocast):
    p = resolve_precision(dtype, compute, "cpu")
    assert (p.param, p.compute, p.autocast_enabled) == (param_want, compute_want, autocast)
    assert p.exact == (compute_want == F32)


def test_old_logprobs_auto_recomputes_whenever_compute_is_not_fp32():
    fp32, mixed, pure = (resolve_precision(d, c, "cpu") for d, c in (("auto", "auto"), ("auto", "bf16"), ("bf16", "auto")))
    # the former check looked at the (fp32 master) weights and kept the bf16 rollout's log-probs
    assert [needs_recompute("auto", p) for p in (fp32, mixed, pure)] == [False, True, True]
    assert [needs_recompute("rollout", p) for p in (fp32, mixed)] == [False, False]
    assert needs_recompute("recompute", fp32)


@pytest.mark.parametrize("overrides, message", [
    (["model.dtype=bf16", "model.compute_dtype=fp32"], "autocast only lowers precision from fp32 weights"),
    (["model.compute_dtype=fp16"], "needs loss scaling"),
    (["model.compute_dtype=bf17"], "model.compute_dtype='bf17' is not valid"),
])
def test_bad_precision_settings_are_one_line(tmp_path, tiny_vlm, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(tmp_path, tiny_vlm, *overrides).validate()
    with pytest.raises(PrecisionError):
        resolve_precision("bf16", "fp32")


def test_the_loader_gives_auto_the_same_meaning(tiny_vlm):
    assert load_model(tiny_vlm, dtype="auto").dtype == resolve_precision("auto", "auto", "cpu").param == F32


def _count_policy_recomputes(trainer: Trainer) -> list[int]:
    calls = [0]
    inner = trainer._forward_all

    def counting(lm, ro):
        calls[0] += lm is trainer.policy
        return inner(lm, ro)

    trainer._forward_all = counting
    return calls


@pytest.mark.parametrize("compute, recomputes", [("auto", 0), ("bf16", 1)])
def test_trainer_recomputes_old_logprobs_under_bf16_autocast(tmp_path, tiny_vlm, compute, recomputes):
    trainer = Trainer(make_cfg(tmp_path, tiny_vlm, f"model.compute_dtype={compute}", "train.steps=1"))
    assert trainer.policy.dtype == F32  # master weights stay fp32 either way
    calls = _count_policy_recomputes(trainer)
    m = trainer.train_step()
    assert calls[0] == recomputes
    assert all(torch.isfinite(torch.tensor(float(m[k]))) for k in ("loss/policy", "grad_norm", "logprob_gap/max"))


def test_update_probe_counts_rounded_away_updates_by_hand():
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=BF16))
    w.grad = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=BF16)  # the last weight has no gradient: not counted
    probe = UpdateProbe([w], max_elements=4)
    probe.index = [torch.arange(4)]
    probe.before_step()
    with torch.no_grad():  # bf16 spacing at 1.0 is 2^-7: +1e-3 rounds away, at 0.0 it does not
        w += torch.tensor([1e-3, 1e-2, 1e-3, 0.0], dtype=BF16)
    assert probe.unchanged_fraction() == pytest.approx(1 / 3)  # 1 of the 3 with a gradient stayed


def test_pure_bf16_at_a_small_lr_warns_that_updates_round_away(tmp_path, tiny_vlm):
    # bf16 keeps 8 significant bits: a weight of |w| ~ 0.02 moves only by steps of > 2^-8 |w| ~ 8e-5, and
    # Adam's first update is ~lr, so at lr 1e-6 nearly every update is lost; at lr 1e-2 nearly none
    small = Trainer(make_cfg(tmp_path / "small", tiny_vlm, "model.dtype=bf16", "optim.lr=1e-6", "train.steps=1"))
    small.train()
    row = read_metrics(tmp_path / "small" / "run")[0]
    assert row["update/unchanged_frac"] > 0.9
    log = (tmp_path / "small" / "run" / "train.log").read_text()
    assert "did not change in this update" in log and "round away" in " ".join(log.split())
    big = Trainer(make_cfg(tmp_path / "big", tiny_vlm, "model.dtype=bf16", "optim.lr=1e-2", "train.steps=1"))
    big.train()
    assert read_metrics(tmp_path / "big" / "run")[0]["update/unchanged_frac"] < 0.1
    assert "did not change" not in (tmp_path / "big" / "run" / "train.log").read_text()
    fp32 = Trainer(make_cfg(tmp_path / "fp32", tiny_vlm, "optim.lr=1e-6", "train.steps=1"))
    assert fp32.update_probe is None  # fp32 weights: nothing rounds away, nothing measured
    assert json.dumps(fp32.precision.describe()) == '"fp32 weights, fp32 compute"'


# ------------------------------------------------------------------ evaluation: the training device and precision
def _vision_bench(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 40), "blue").save(tmp_path / "1.png")
    rows = [{"id": str(i), "question": q, "options": [], "image": "1.png", "answer": a, "solution": "", "level": 1,
             "subject": "counting"} for i, (q, a) in enumerate([("How many?", "3"), ("Area?", "12"), ("Sum?", "5")])]
    (tmp_path / "mathvision.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path / "mathvision.jsonl"


def test_cli_eval_runs_in_the_training_precision(tmp_path, tiny_vlm, capsys):
    from tests.test_config_cli import cli, error_line

    bench, out = _vision_bench(tmp_path), tmp_path / "res.json"
    rc, _, err = cli(capsys, "eval", "--model", tiny_vlm, "--bench", f"vision={bench}", "--max-new-tokens", "3",
                     "--batch-size", "2", "--compute-dtype", "bf16", "--out", out)
    assert rc == 0, err
    r = json.loads(out.read_text())["results"]["vision"]
    assert (r["device"], r["precision"], r["problems"]) == ("cpu", "fp32 weights, bf16 compute (autocast)", 3)
    rc, _, err = cli(capsys, "eval", "--model", tiny_vlm, "--bench", f"vision={bench}", "--dtype", "bf16",
                     "--compute-dtype", "fp32")
    assert rc == 2 and "autocast only lowers precision from fp32 weights" in error_line(err)
    rc, _, err = cli(capsys, "eval", "--model", tiny_vlm, "--bench", f"vision={bench}", "--device", "cuda")
    assert rc == 2 and error_line(err) == "device 'cuda': torch sees no CUDA GPU here (use auto or cpu)"


def test_pipeline_eval_uses_the_stages_precision(tmp_path, tiny_vlm):
    from rich.console import Console

    from lmmr1.pipeline import run_eval
    from lmmr1.trainer.config import ModelConfig

    data = {"eval": {"suites": {"vision": str(_vision_bench(tmp_path))}, "max_new_tokens": 3, "batch_size": 2}}
    res = run_eval(tiny_vlm, data, tmp_path, tmp_path / "eval.json", Console(file=open(tmp_path / "log", "w")),
                   ModelConfig(compute_dtype="bf16"))
    assert res["vision"]["precision"] == "fp32 weights, bf16 compute (autocast)"
    assert json.loads((tmp_path / "eval.json").read_text())["vision"]["device"] == "cpu"
    pure = run_eval(tiny_vlm, data, tmp_path, tmp_path / "eval2.json", Console(file=open(tmp_path / "log2", "w")),
                    ModelConfig(dtype="bf16"))
    assert pure["vision"]["precision"] == "bf16 weights, bf16 compute"  # loaded as the stage trained it


def test_rollout_engine_vllm_is_a_clear_error_not_a_silent_fallback(tmp_path, tiny_vlm):
    with pytest.raises(ConfigError, match=r"^rollout.engine=vllm is not available in this build of lmmr1"):
        make_cfg(tmp_path, tiny_vlm, "rollout.engine=vllm").validate()
    with pytest.raises(ConfigError, match=r"rollout.engine='vlm' is not valid \(choose from hf\)"):
        make_cfg(tmp_path, tiny_vlm, "rollout.engine=vlm").validate()
    make_cfg(tmp_path, tiny_vlm, "rollout.engine=hf").validate()
