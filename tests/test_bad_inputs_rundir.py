"""Bad run directories and checkpoints: each is one line naming the file (or setting) and the fix,
raised before any model loads where possible; never a traceback, never unpickled code."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from lmmr1.errors import LmmR1Error
from lmmr1.models import load_model
from lmmr1.trainer.config import load_config
from lmmr1.trainer.trainer import Trainer

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class _Payload:
    """Unpickling this touches a marker file: what a malicious checkpoint would do (harmlessly)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Payload(marker)))
    # the payload is real: unpickling it does run code (here, on a throwaway copy)
    probe = marker.with_name(marker.name + ".probe")
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()
    probe.unlink()


def cfg_for(run: Path, tiny_vlm: Path, *extra: str):
    return load_config(RECIPES / "smoke.yaml", [
        f"output_dir={run}", f"model.path={tiny_vlm}",
        f"data=[{{path: {RECIPES / 'data/smoke_text.jsonl'}, system_prompt: none}}]",
        "reward=[{name: target_fraction, kwargs: {target: e}}]", "rollout.n=2", "rollout.max_new_tokens=4",
        "train.prompts_per_step=2", "train.micro_batch_size=4", "train.tensorboard=false", "train.num_threads=1",
        "train.steps=2", "train.save_every=1", *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_vlm):
    """A real 2-step run with checkpoints at steps 1 and 2."""
    run = tmp_path_factory.mktemp("rundir") / "run"
    Trainer(cfg_for(run, tiny_vlm)).train()
    return run


@pytest.fixture
def run(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def one_line_error(cfg) -> str:
    with pytest.raises(LmmR1Error) as e:
        Trainer(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def ckpt2(run: Path) -> Path:
    return run / "checkpoints" / "step_000002"


def test_corrupt_model_safetensors_in_checkpoint(run, tiny_vlm):
    f = ckpt2(run) / "model" / "model.safetensors"
    f.write_bytes(b"\xff" * 64 + f.read_bytes()[64:])
    msg = one_line_error(cfg_for(run, tiny_vlm))
    assert msg.startswith(f"{f} is corrupt or truncated (") and "copy the weights again" in msg


def test_truncated_model_safetensors(run, tiny_vlm):
    f = ckpt2(run) / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    msg = one_line_error(cfg_for(run, tiny_vlm))
    assert msg == (f"{f} is corrupt or truncated (Error while deserializing header: incomplete metadata, file not "
                   "fully covered); copy the weights again or point to another checkpoint")
    with pytest.raises(LmmR1Error, match="is corrupt or truncated"):  # the loader itself, outside the trainer
        load_model(ckpt2(run) / "model")


def test_corrupt_trainer_state_json_beside_complete_marker_is_an_error_not_a_silent_skip(run, tiny_vlm):
    f = ckpt2(run) / "trainer_state.json"
    f.write_text(f.read_text()[:100])
    msg = one_line_error(cfg_for(run, tiny_vlm))  # step_000001 is fine, but resume: auto does not skip to it
    assert msg.startswith(f"{f} is corrupt (") and f"delete {ckpt2(run)} to resume from an earlier checkpoint" in msg


def test_truncated_trainer_state_tensors(run, tiny_vlm):
    f = ckpt2(run) / "trainer_state.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    assert one_line_error(cfg_for(run, tiny_vlm)).startswith(f"{f} is corrupt or truncated (")


def test_missing_trainer_state_file(run, tiny_vlm):
    f = ckpt2(run) / "trainer_state.safetensors"
    f.unlink()
    assert one_line_error(cfg_for(run, tiny_vlm)) == (
        f"{f} is missing although step_000002 is marked COMPLETE; the checkpoint is damaged: delete it to resume "
        "from an earlier one, or use train.resume=none")


def test_trainer_state_missing_a_key(run, tiny_vlm):
    f = ckpt2(run) / "trainer_state.json"
    doc = json.loads(f.read_text())
    del doc["state"]["optimizer"]
    f.write_text(json.dumps(doc))
    assert one_line_error(cfg_for(run, tiny_vlm)).startswith(f"{f}: the trainer state has no 'optimizer'; ")


def test_trainer_state_refers_to_a_missing_tensor(run, tiny_vlm):
    f = ckpt2(run) / "trainer_state.json"
    f.write_text(f.read_text().replace('"__tensor__": "rng.torch"', '"__tensor__": "rng.gone"'))
    assert one_line_error(cfg_for(run, tiny_vlm)).startswith(
        f"{ckpt2(run) / 'trainer_state.safetensors'}: tensor 'rng.gone' is missing; ")


def test_trainer_state_without_lmmr1_header_or_from_a_newer_version(run, tiny_vlm):
    f = ckpt2(run) / "trainer_state.json"
    doc = json.loads(f.read_text())
    f.write_text(json.dumps({**doc, "version": 99}))
    assert "written by a newer lmmr1 (state version 99 > 1)" in one_line_error(cfg_for(run, tiny_vlm))
    f.write_text(json.dumps({"step": 2}))
    assert "is not an lmmr1 trainer state" in one_line_error(cfg_for(run, tiny_vlm))


def test_old_pickled_trainer_state_is_refused_and_never_executed(run, tiny_vlm):
    c = ckpt2(run)
    (c / "trainer_state.json").unlink(), (c / "trainer_state.safetensors").unlink()
    marker = run.parent / "pwned"
    plant_pickle(c / "trainer_state.pt", marker)
    msg = one_line_error(cfg_for(run, tiny_vlm))
    assert msg.startswith(f"{c / 'trainer_state.pt'} is a pickled trainer state from an older lmmr1; it is not "
                          "loaded because unpickling can run arbitrary code.")
    assert f"model.path={c / 'model'} train.resume=none" in msg
    assert not marker.exists()


def test_pickle_posing_as_the_json_state_is_not_executed(run, tiny_vlm):
    marker = run.parent / "pwned"
    plant_pickle(ckpt2(run) / "trainer_state.json", marker)
    assert one_line_error(cfg_for(run, tiny_vlm)).startswith(f"{ckpt2(run) / 'trainer_state.json'} is corrupt (")
    assert not marker.exists()


def test_output_dir_is_a_file(tmp_path, tiny_vlm):
    f = tmp_path / "out"
    f.write_text("x")
    assert one_line_error(cfg_for(f, tiny_vlm)) == (
        f"output_dir {f} is a file; pass a directory (it is created if missing)")


def test_output_dir_cannot_be_created_under_a_file(tmp_path, tiny_vlm):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "run"
    assert one_line_error(cfg_for(out, tiny_vlm)) == (
        f"output_dir {out} cannot be created or written into (Not a directory); pick a directory you can write to")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; the test above covers it")
def test_output_dir_not_writable(tmp_path, tiny_vlm):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert "cannot be created or written into (Permission denied)" in one_line_error(cfg_for(out, tiny_vlm))
    finally:
        out.chmod(0o700)


def test_another_recipes_run_is_refused_before_loading(run, tiny_vlm):
    msg = one_line_error(cfg_for(run, tiny_vlm, "rollout.temperature=0.7", "algo.advantage=rloo"))
    assert msg == (f"output_dir {run} holds a run of a different recipe (changed: algo.advantage, rollout.temperature); "
                   "use a new output_dir, or train.resume=overwrite to delete that run and start over")


def test_resume_none_into_a_run_directory_is_refused(run, tiny_vlm):
    assert one_line_error(cfg_for(run, tiny_vlm, "train.resume=none")) == (
        f"output_dir {run} already holds a run (logged up to step 2) and train.resume=none would mix or overwrite "
        "it; use a new output_dir, train.resume=auto to continue it, or train.resume=overwrite to delete it and "
        "start over")


def test_resume_path_without_complete_marker_or_missing(run, tiny_vlm, tmp_path):
    (ckpt2(run) / "COMPLETE").unlink()
    assert one_line_error(cfg_for(tmp_path / "new", tiny_vlm, f"train.resume={ckpt2(run)}")).startswith(
        f"train.resume={ckpt2(run)}: not a complete lmmr1 checkpoint (no COMPLETE marker;")
    assert one_line_error(cfg_for(tmp_path / "new", tiny_vlm, f"train.resume={run / 'nope'}")).startswith(
        f"train.resume={run / 'nope'}: no such checkpoint directory")


def test_unreadable_saved_config_yaml(run, tiny_vlm):
    (run / "config.yaml").write_text("model: [unclosed\n")
    assert one_line_error(cfg_for(run, tiny_vlm)).startswith(f"{run / 'config.yaml'} is not valid YAML (")


def test_checkpoint_of_another_kind_of_run_does_not_fit(run, tiny_vlm, tmp_path):
    # a PPO (gae) run resumed from a GRPO checkpoint: no critic state in it
    msg = one_line_error(cfg_for(tmp_path / "new", tiny_vlm, "algo.advantage=gae", f"train.resume={ckpt2(run)}"))
    assert msg.startswith(f"{ckpt2(run) / 'trainer_state.json'}: the trainer state has no 'critic'; ")


def test_resume_with_other_data_sizes(run, tiny_vlm, tmp_path):
    cfg = cfg_for(tmp_path / "new", tiny_vlm, f"train.resume={ckpt2(run)}",
                  f"data=[{{path: {RECIPES / 'data/smoke_image.jsonl'}, system_prompt: none}}]")
    assert "resume with the same data" in one_line_error(cfg)


def test_dry_run_checks_create_and_delete_nothing(run, tmp_path):
    from lmmr1.trainer.rundir import check_output_dir, claim

    (tmp_path / "f").write_text("x")
    with pytest.raises(LmmR1Error, match=r"cannot be created or written into \(Not a directory\)"):
        check_output_dir(tmp_path / "f" / "run")
    with pytest.raises(LmmR1Error, match="is a file"):
        check_output_dir(tmp_path / "f")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()
    claim(run, {}, "overwrite", dry_run=True)
    assert (run / "metrics.jsonl").exists() and (run / "checkpoints").is_dir()
