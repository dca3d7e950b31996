"""Resume without pickle, one metrics row per step after kill -9, Ctrl-C saves and says how to resume,
another recipe's run is never silently continued, and train.log is a plain one-line-per-step copy."""

from __future__ import annotations

import io
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from lmmr1.trainer import checkpoint as ckpt
from lmmr1.trainer.config import load_config
from lmmr1.trainer.rundir import recipe_changes, truncate_jsonl
from lmmr1.trainer.trainer import Trainer

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def cli_args(run: Path, tiny_vlm: Path, *extra: str) -> list[str]:
    return [f"output_dir={run}", f"model.path={tiny_vlm}",
            f"data=[{{path: {RECIPES / 'data/smoke_text.jsonl'}, system_prompt: none}}, "
            f"{{path: {RECIPES / 'data/smoke_image.jsonl'}, system_prompt: none}}]",
            "reward=[{name: target_fraction, kwargs: {target: e}}]", "rollout.n=4", "rollout.max_new_tokens=6",
            "train.prompts_per_step=4", "train.micro_batch_size=8", "train.tensorboard=false",
            "train.num_threads=1", "optim.lr=0.01", *extra]


def lmmr1_train(run, tiny_vlm, *extra):
    return [sys.executable, "-m", "lmmr1.cli", "train", str(RECIPES / "smoke.yaml"), *cli_args(run, tiny_vlm, *extra)]


def steps_in(path: Path) -> list[int]:
    return [json.loads(x)["step"] for x in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- the state format
def test_flatten_round_trip_is_exact_and_pickle_free(tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, betas=(0.9, 0.99))
    for _ in range(2):
        opt.zero_grad()
        lin(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    random.random(), np.random.rand(), torch.rand(1)
    state = {"step": 7, "optimizer": opt.state_dict(), "rng": ckpt.rng_state(), "kl": {"value": 0.1 + 0.2},
             "nan": float("nan"), "tied": [lin.weight, lin.weight], "odd": {"__tensor__": "not a tensor"}}
    path = tmp_path / "checkpoints" / "step_000007"
    ckpt.save_checkpoint(path, lambda p: p.mkdir(), state, keep=2)
    assert sorted(p.name for p in path.iterdir()) == ["COMPLETE", "model", "trainer_state.json",
                                                      "trainer_state.safetensors"]
    back = ckpt.load_state(path)
    assert back["step"] == 7 and back["kl"]["value"] == 0.30000000000000004 and back["nan"] != back["nan"]
    assert back["odd"] == {"__tensor__": "not a tensor"}  # a plain dict that looks like a marker stays a dict
    assert list(back["optimizer"]["state"]) == [0, 1]  # int keys stay int
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)  # tuples stay tuples
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(back["optimizer"]["state"][0][k], state["optimizer"]["state"][0][k]), k
    assert torch.equal(back["tied"][0], lin.weight.detach()) and torch.equal(back["tied"][1], lin.weight.detach())
    # RNG states: the next draws after restoring equal the next draws after saving
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.set_rng_state(back["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want
    # the restored optimizer takes the exact same next step
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(lin.state_dict())
    opt2 = torch.optim.AdamW(twin.parameters(), lr=0.1)
    opt2.load_state_dict(back["optimizer"])
    x = torch.randn(4, 3)
    for m, o in ((lin, opt), (twin, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(lin.weight, twin.weight) and torch.equal(lin.bias, twin.bias)
    # the JSON part is plain data: no pickle opcodes anywhere in the checkpoint
    assert json.loads((path / "trainer_state.json").read_text())["format"] == ckpt.FORMAT
    assert not list(path.rglob("*.pt")) and not list(path.rglob("*.bin"))


def test_only_step_dirs_with_a_marker_count_and_pruning_keeps_the_newest(tmp_path):
    for step in (1, 2, 10):
        ckpt.save_checkpoint(ckpt.checkpoint_dir(tmp_path, step), lambda p: p.mkdir(), {"step": step}, keep=2)
    (tmp_path / "checkpoints" / "step_000011.tmp").mkdir()  # an interrupted write, even with a marker
    (tmp_path / "checkpoints" / "step_000011.tmp" / "COMPLETE").write_text("ok\n")
    (tmp_path / "checkpoints" / "step_000012").mkdir()  # no marker
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step_000002", "step_000010"]  # 10 > 2 numerically
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000010"


def test_truncate_jsonl_keeps_rows_up_to_the_step_and_drops_a_torn_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "rew')
    assert truncate_jsonl(f, 2) == 2
    assert steps_in(f) == [1, 2]
    assert truncate_jsonl(f, 5) == 0 and steps_in(f) == [1, 2]


def test_metrics_logger_on_resume_keeps_one_row_per_step_in_jsonl_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmmr1.trainer.logging import MetricsLogger

    first = MetricsLogger(tmp_path, console=Console(quiet=True))
    for s in (1, 2, 3):  # killed after step 3; the newest checkpoint is step 2
        first.log({"step": s, "kl": float(s)})
        first.log_samples([{"step": s, "completion": "x"}])
    first.close()
    again = MetricsLogger(tmp_path, console=Console(quiet=True), start_step=2)
    assert again.removed_rows == 1
    for s in (3, 4):
        again.log({"step": s, "kl": 10.0 * s})
    again.close()
    assert steps_in(tmp_path / "metrics.jsonl") == [1, 2, 3, 4] and steps_in(tmp_path / "samples.jsonl") == [1, 2]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("kl")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_recipe_changes_name_the_settings_and_ignore_what_does_not_change_results():
    old = {"output_dir": "a", "optim": {"lr": 0.01}, "train": {"steps": 4, "num_threads": 1, "resume": "auto",
                                                                "wandb_entity": "you"},
           "data": [{"path": "x.jsonl", "prob": None}], "algo": {"kl_coef": 0.0}}
    new = {"output_dir": "b", "optim": {"lr": 0.02}, "train": {"steps": 4, "num_threads": 4, "resume": "none",
                                                                 "new_knob": 1, "wandb_entity": "me"},
           "data": [{"path": "x.jsonl", "prob": 0.5}], "algo": {"kl_coef": 0.0}}
    assert recipe_changes(old, new) == ["data.0.prob", "optim.lr"]
    assert recipe_changes(old, {**new, "data": [{"path": "x.jsonl"}, {"path": "y.jsonl"}]}) == ["data", "optim.lr"]
    assert recipe_changes(old, old) == []


def test_lora_adapter_and_critic_state_resume_exactly(tmp_path, tiny_vlm):
    """In-process: 2 straight steps == 1 step, save, new Trainer resumes, 1 more step (constant lr)."""
    from safetensors.torch import load_file

    extra = ("algo.advantage=gae", "model.lora_r=4", "model.lora_alpha=8", "optim.min_lr_ratio=1.0")

    def trainer(run, steps):
        return Trainer(load_config(RECIPES / "smoke.yaml", cli_args(run, tiny_vlm, f"train.steps={steps}", *extra)))

    straight = trainer(tmp_path / "straight", 2)
    straight.train()
    trainer(tmp_path / "split", 1).train()
    state = json.loads((tmp_path / "split/checkpoints/step_000001/trainer_state.json").read_text())["state"]
    assert {"lora", "critic", "critic_optimizer"} <= set(state)
    resumed = trainer(tmp_path / "split", 2)
    assert resumed.step == 1
    resumed.train()
    a, b = load_file(tmp_path / "straight/final/model.safetensors"), load_file(tmp_path / "split/final/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = straight.critic.state_dict(), resumed.critic.state_dict()
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    assert steps_in(tmp_path / "split" / "metrics.jsonl") == [1, 2]


# ----------------------------------------------------------------------------- kill -9, resume
def test_kill9_then_resume_writes_one_metrics_row_per_step(tmp_path, tiny_vlm):
    run = tmp_path / "run"
    cmd = lmmr1_train(run, tiny_vlm, "train.steps=5", "train.save_every=2", "train.log_samples=2")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "LMMR1_KILL_AT_STEP": "4"})
    assert res.returncode == -9, res.stderr[-2000:]
    assert steps_in(run / "metrics.jsonl") == [1, 2, 3]  # step 3 was logged, but the newest checkpoint is step 2
    assert [p.name for p in ckpt.complete_checkpoints(run)] == ["step_000002"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stderr and "removed 1 rows after step 2" in res.stderr
    assert steps_in(run / "metrics.jsonl") == [1, 2, 3, 4, 5]
    assert steps_in(run / "samples.jsonl") == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    log = (run / "train.log").read_text()
    assert log.count("=== lmmr1 train") == 2 and log.count("step    3 |") == 2  # both attempts, as printed
    assert f"resuming from {run / 'checkpoints' / 'step_000002'} (step 2)" in log


# ----------------------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_saves_the_last_finished_step_prints_the_resume_command_and_resuming_completes(tmp_path, tiny_vlm,
                                                                                               sig):
    run = tmp_path / "run"
    err = tmp_path / "stderr.txt"
    with err.open("w") as fh:
        proc = subprocess.Popen(lmmr1_train(run, tiny_vlm, "train.steps=40", "train.save_every=0"), stderr=fh,
                                stdout=subprocess.DEVNULL, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, err.read_text()[-2000:]
        proc.send_signal(sig)
        rc = proc.wait(timeout=300)
    stderr = err.read_text()
    assert rc == 130 and "Traceback" not in stderr, (rc, stderr[-2000:])
    last = steps_in(run / "metrics.jsonl")[-1]
    assert 1 <= last < 40 and steps_in(run / "metrics.jsonl") == list(range(1, last + 1))
    assert (run / "checkpoints" / f"step_{last:06d}" / "COMPLETE").exists()
    assert not (run / "final").exists()
    hint = [ln for ln in stderr.splitlines() if ln.startswith(f"interrupted after step {last} ")]
    assert len(hint) == 1 and "resume with: lmmr1 train " in hint[0], stderr[-2000:]
    resume = shlex.split(hint[0].split("resume with: ", 1)[1])
    assert resume[-1] == "train.resume=auto" and f"output_dir={run}" in resume
    res = subprocess.run([sys.executable, "-m", "lmmr1.cli", *resume[1:], f"train.steps={last + 1}"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed from {run / 'checkpoints' / f'step_{last:06d}'} (step {last})" in res.stderr
    assert steps_in(run / "metrics.jsonl") == list(range(1, last + 2)) and (run / "final").is_dir()


def test_second_sigint_stops_at_once_without_saving_and_says_so(tmp_path, tiny_vlm):
    run = tmp_path / "run"
    proc = subprocess.Popen(lmmr1_train(run, tiny_vlm, "train.steps=40", "train.save_every=0"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130 and "Traceback" not in stderr, (proc.returncode, stderr[-2000:])
    assert "Ctrl-C: finishing step" in stderr
    stopped = [ln for ln in stderr.splitlines() if ln.startswith("stopped without saving at step ")]
    assert len(stopped) == 1 and stopped[0].endswith("train.resume=auto"), stderr[-2000:]
    assert not (run / "final").exists()


@pytest.mark.parametrize("gap", [0.4, 1.5])
def test_second_sigint_at_any_moment_of_the_stop_exits_130_without_a_traceback(tmp_path, tiny_vlm, gap):
    """The second Ctrl-C may land while the step finishes, while the checkpoint is written, while
    logs close or while the interpreter exits: every case is exit 130, one stop line, no traceback."""
    run = tmp_path / "run"
    proc = subprocess.Popen(lmmr1_train(run, tiny_vlm, "train.steps=40", "train.save_every=0"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130 and "Traceback" not in stderr, (proc.returncode, stderr[-2000:])
    stops = [ln for ln in stderr.splitlines()
             if ln.startswith(("interrupted after step ", "stopped without saving at step "))]
    assert len(stops) == 1 and stops[0].endswith("train.resume=auto"), stderr[-2000:]
    assert not (run / "final").exists()


# ----------------------------------------------------------------------------- another recipe's run
def test_train_into_another_recipes_run_is_refused_and_leaves_it_untouched(tmp_path, tiny_vlm):
    run = tmp_path / "run"
    res = subprocess.run(lmmr1_train(run, tiny_vlm, "train.steps=1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    before = {f: (run / f).read_bytes() for f in ("config.yaml", "metrics.jsonl", "train.log")}
    res = subprocess.run(lmmr1_train(run, tiny_vlm, "train.steps=1", "optim.lr=0.02", "algo.kl_coef=0.1"),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: output_dir {run} holds a run of a different recipe (changed: algo.kl_coef, optim.lr); use a new "
        "output_dir, or train.resume=overwrite to delete that run and start over"]
    assert {f: (run / f).read_bytes() for f in before} == before
    # asked for explicitly: overwrite deletes the old run and starts over
    res = subprocess.run(lmmr1_train(run, tiny_vlm, "train.steps=2", "optim.lr=0.02", "train.resume=overwrite"),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert steps_in(run / "metrics.jsonl") == [1, 2] and "lr: 0.02" in (run / "config.yaml").read_text()
    assert (run / "train.log").read_text().count("=== lmmr1 train") == 1


def test_same_recipe_with_other_threads_and_more_steps_resumes(tmp_path, tiny_vlm):
    run = tmp_path / "run"
    Trainer(load_config(RECIPES / "smoke.yaml", cli_args(run, tiny_vlm, "train.steps=1"))).train()
    t = Trainer(load_config(RECIPES / "smoke.yaml", cli_args(run, tiny_vlm, "train.steps=2", "train.num_threads=2",
                                                             "train.save_every=5")))
    assert t.step == 1 and t.resume_from.name == "step_000001"
    t.train()
    assert steps_in(run / "metrics.jsonl") == [1, 2]


# ----------------------------------------------------------------------------- train.log
def test_train_log_is_plain_one_line_per_step_with_a_legend(tmp_path, tiny_vlm):
    run = tmp_path / "run"
    out = io.StringIO()
    console = Console(file=out, width=50, force_terminal=True, color_system="truecolor")  # narrow, coloured
    Trainer(load_config(RECIPES / "smoke.yaml", cli_args(run, tiny_vlm, "train.steps=2")), console).train()
    log = (run / "train.log").read_text()
    assert "\x1b" not in log and "\r" not in log
    lines = log.splitlines()
    assert lines[1] == f"model: {tiny_vlm} (qwen2_5_vl, 0.78M parameters, 0.78M trainable) on cpu, fp32 weights, fp32 compute"
    assert lines[2] == "data: smoke_text 64 rows, smoke_image 32 rows"
    assert lines[3] == "rewards: target_fraction x1"
    assert lines[5] == f"output_dir: {run}; a new run from step 0; 2 steps"
    assert lines[6].startswith("step lines: reward = mean total reward, ") and "gap = max |rollout" in lines[6]
    step_lines = [x for x in lines if x.startswith("step    ")]
    assert len(step_lines) == 2 and all(x.count(" | ") == 7 and x.endswith("s") for x in step_lines), step_lines
    assert lines[-1] == f"done: 2 steps; final model in {run / 'final'}"
    assert "\x1b[" in out.getvalue()  # the terminal still gets its colours
    # off a terminal, the console itself keeps a step line on one line too (no wrapping at 80 columns)
    plain = io.StringIO()
    Trainer(load_config(RECIPES / "smoke.yaml", cli_args(run, tiny_vlm, "train.steps=3")), Console(file=plain)).train()
    assert len([x for x in plain.getvalue().splitlines() if x.startswith("step    3 |") and x.endswith("s")]) == 1


@pytest.mark.parametrize("legacy", [True, False])
def test_a_malicious_pickle_planted_as_trainer_state_is_never_executed(tmp_path, legacy):
    from tests.test_bad_inputs_rundir import plant_pickle

    path = tmp_path / "checkpoints" / "step_000001"
    ckpt.save_checkpoint(path, lambda p: p.mkdir(), {"step": 1}, keep=2)
    marker = tmp_path / "pwned"
    if legacy:  # an old-format checkpoint: only trainer_state.pt
        (path / "trainer_state.json").unlink(), (path / "trainer_state.safetensors").unlink()
        plant_pickle(path / "trainer_state.pt", marker)
        match = "pickled trainer state from an older lmmr1; it is not loaded"
    else:  # the pickle posing as the tensors file
        plant_pickle(path / "trainer_state.safetensors", marker)
        match = "trainer_state.safetensors is corrupt or truncated"
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load_state(path)
    assert not marker.exists()
