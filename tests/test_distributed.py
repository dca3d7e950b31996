"""Scale-out on Ray (2 FSDP2 train workers + 2 rollout workers, gloo on CPU) equals one process.

One local Ray session is shared by the module (Ray start-up costs seconds); each run starts its own
actors in it.  The runs are the smoke recipe for 3 steps (~1M-parameter model): the same tokens
are sampled (rows are seeded one by one), the update is the single process's own code on each
rank's rows with gradients summed, so the final weights agree to float rounding (< 1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmmr1.errors import LmmR1Error
from lmmr1.trainer import checkpoint as ckpt
from lmmr1.trainer.config import ConfigError, load_config
from lmmr1.trainer.trainer import Trainer

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SMOKE = RECIPES / "smoke.yaml"
TWO_BY_TWO = ["distributed.train_workers=2", "distributed.rollout_workers=2", "distributed.cpus_per_worker=0.5"]

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(out: Path, *overrides: str, recipe: Path | None = SMOKE) -> Path:
    cfg = load_config(recipe, [f"output_dir={out}", "train.steps=3", "train.tensorboard=false", *overrides])
    Trainer(cfg).train()
    return out


def max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "final/model.safetensors"), load_file(b / "final/model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return run(tmp_path_factory.mktemp("single") / "run")


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory, ray_session):
    return run(tmp_path_factory.mktemp("dist") / "run", *TWO_BY_TWO, "train.save_every=1")


def test_two_train_and_two_rollout_workers_end_with_the_single_process_weights(single, two_by_two):
    assert max_diff(single, two_by_two) < 1e-5
    a, b = metrics(single), metrics(two_by_two)
    # the same tokens were sampled (rewards and lengths are functions of the tokens alone)
    assert [r["reward/mean"] for r in a] == [r["reward/mean"] for r in b]
    assert [r["response_length/mean"] for r in a] == [r["response_length/mean"] for r in b]
    assert [r["loss/policy"] for r in a] == pytest.approx([r["loss/policy"] for r in b], abs=1e-6)
    # rollout workers (synced weights, unsharded) vs train workers (FSDP): the logged log-prob gap
    assert all(r["logprob_gap/max"] < 1e-5 for r in b)
    assert max_diff(single, single) == 0.0  # the comparison itself can see a difference


def test_a_worker_that_dies_ends_the_run_in_one_line_and_the_run_resumes(tmp_path, two_by_two, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("LMMR1_KILL_WORKER", "train1@2")  # train worker 1 is SIGKILLed when step 2 starts
    with pytest.raises(LmmR1Error) as e:
        run(out, *TWO_BY_TWO, "train.save_every=1")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("train worker 1 died during step 2; last checkpoint ")
    assert str(out / "checkpoints" / "step_000001") in msg and "rerun the same command to resume" in msg
    monkeypatch.delenv("LMMR1_KILL_WORKER")
    run(out, *TWO_BY_TWO, "train.save_every=1")  # the same command resumes from step 1
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    assert max_diff(two_by_two, out) == 0.0  # killed + resumed = uninterrupted, bit for bit


def test_mixed_text_and_image_prompts_split_across_ranks(tmp_path, ray_session):
    """Two prompts a step, one with an image and one without: each rank gets one prompt's rows, so
    one rank never runs the vision tower; the FSDP collectives (vision weights are in the root unit,
    unused-parameter gradients reduced as zeros) still match and the weights equal one process."""
    rows = [json.loads(x) for x in (RECIPES / "data/smoke_text.jsonl").read_text().splitlines()[:1]]
    rows += [json.loads(x) for x in (RECIPES / "data/smoke_image.jsonl").read_text().splitlines()[:1]]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [f"data=[{{path: {data}, system_prompt: none}}]", "train.prompts_per_step=2", "rollout.n=4",
              "reward=[{name: target_fraction, kwargs: {target: e}}]",  # varies within a group: updates happen
              "train.micro_batch_size=8", "train.steps=2"]
    a = run(tmp_path / "single", *common)
    b = run(tmp_path / "dist", *common, "distributed.train_workers=2", "distributed.cpus_per_worker=0.5")
    wa, wb = load_file(a / "final/model.safetensors"), load_file(b / "final/model.safetensors")
    w0 = load_file(a / "base_model/model.safetensors")
    vision = [k for k in wa if "visual" in k]
    assert vision and any(not torch.equal(wa[k], w0[k]) for k in vision)  # the image row trained the vision tower
    assert max(float((wa[k] - wb[k]).abs().max()) for k in vision) < 1e-5
    # Elsewhere 1e-4: with lr 0.01 Adam divides each gradient by its own size, so a parameter whose true
    # gradient is ~0 (attention key biases: softmax ignores a shift) moves by lr x its rounding noise.
    assert max_diff(a, b) < 1e-4


def test_driver_killed_with_sigkill_resumes_with_the_same_command(tmp_path, two_by_two):
    """The driver dies (kill -9) before step 2; rerunning the command resumes from step 1 and ends with
    the uninterrupted run's weights (Ray's processes die with the driver that started them)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmmr1.cli", "train", str(SMOKE), f"output_dir={out}", "train.steps=3",
           "train.tensorboard=false", "train.save_every=1", *TWO_BY_TWO]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "LMMR1_KILL_AT_STEP": "2"})
    assert res.returncode == -9, res.stderr[-2000:]
    assert [p.name for p in ckpt.complete_checkpoints(out)] == ["step_000001"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    assert max_diff(two_by_two, out) == 0.0


def test_ppo_critic_sharded_on_two_workers_resumes_and_ends_with_the_single_process_policy_and_critic(
        tmp_path, ray_session, monkeypatch):
    """PPO (GAE): the critic and its AdamW are sharded like the policy.  The distributed run loses a
    worker at step 2 and is resumed from the step-1 checkpoint (critic weights and AdamW state go
    back to the new workers); after 3 steps the policy, the critic and the critic's optimizer state
    match the uninterrupted single process.

    At lr 1e-3 (critic 1e-2): Adam turns float-summation differences of near-zero gradients into
    steps of ~lr, so the smoke recipe's lr 1e-2 (critic 1e-1) ends ~3e-5 / ~1e-4 apart for the same
    reason, with equal losses and gradient norms (measured; docs/distributed.md)."""
    ppo = ("algo.advantage=gae", "train.save_every=1", "optim.lr=0.001")
    one = run(tmp_path / "one", *ppo)
    monkeypatch.setenv("LMMR1_KILL_WORKER", "train0@2")
    with pytest.raises(LmmR1Error, match="train worker 0 died during step 2"):
        run(tmp_path / "two", *ppo, *TWO_BY_TWO)
    monkeypatch.delenv("LMMR1_KILL_WORKER")
    two = run(tmp_path / "two", *ppo, *TWO_BY_TWO)
    assert [r["step"] for r in metrics(two)] == [1, 2, 3]
    sa, sb = (ckpt.load_state(ckpt.latest_checkpoint(r)) for r in (one, two))
    assert sa["critic"].keys() == sb["critic"].keys() and "head.weight" in sa["critic"]
    critic_diff = max(float((sa["critic"][k] - sb["critic"][k]).abs().max()) for k in sa["critic"])
    assert max_diff(one, two) < 1e-5 and critic_diff < 1e-5, (max_diff(one, two), critic_diff)
    assert float(sa["critic"]["head.weight"].abs().max()) > 0  # the value head did train
    ea, eb = sa["critic_optimizer"]["state"], sb["critic_optimizer"]["state"]
    assert ea.keys() == eb.keys() and len(ea) > 0
    assert max(float((ea[i]["exp_avg_sq"] - eb[i]["exp_avg_sq"]).abs().max()) for i in ea) < 1e-6
    ma, mb = metrics(one), metrics(two)
    assert [r["reward/mean"] for r in ma] == [r["reward/mean"] for r in mb]
    assert all(abs(x["loss/value"] - y["loss/value"]) < 1e-5 for x, y in zip(ma, mb, strict=True))


def test_papo_masked_image_log_probs_come_from_the_workers_current_policy(tmp_path, ray_session):
    """PAPO's no-grad forward on masked images must use the policy being trained (on the workers),
    not the driver's copy, which is only refreshed for checkpoints: at gamma 1 a stale copy moves
    the weights by ~lr; with the workers' policy they equal one process's."""
    papo = ("algo.papo_coef=1.0", "optim.lr=0.001")
    one, two = run(tmp_path / "one", *papo), run(tmp_path / "two", *papo, *TWO_BY_TWO)
    a, b = metrics(one), metrics(two)
    assert any(r["papo/kl"] > 0 for r in a)  # the term was there
    assert [r["papo/kl"] for r in a] == pytest.approx([r["papo/kl"] for r in b], abs=1e-6)
    assert max_diff(one, two) < 1e-5


def test_multi_turn_episodes_play_on_the_rollout_workers_and_equal_one_process(tmp_path, ray_session):
    """Sokoban episodes (image view: every observation is a new frame) with GiGPO: each turn's actions
    are sampled by the rollout workers, the envs and token traces stay on the driver.  The episode
    token budget ends some episodes early, so the number of turn rows varies and a micro-batch can be
    left with fewer rows than ranks (it joins the one before); turn-0 rows share their group's prompt,
    later turn rows do not, so the ranks must agree on the forward path.  Rewards, turn
    counts and weights equal one process's."""
    levels = [["#######", "#@ $ .#", "#######"], ["#####", "#@$.#", "#####"], ["#####", "#.$@#", "#####"]]
    data = tmp_path / "levels.jsonl"
    data.write_text("".join(json.dumps({
        "message": json.dumps([{"role": "user", "content": "One move per turn.\n" + "\n".join(lv)}]),
        "answer": "Right", "env": {"name": "sokoban", "level": lv, "view": "image", "tile": 12, "seed": k}}) + "\n"
        for k, lv in enumerate(levels)))
    common = [f"data=[{{path: {data}, system_prompt: none}}]", "reward=[]", "episode.turns=3",
              "episode.max_episode_tokens=5", "episode.invalid_reward=-1.0", "algo.advantage=gigpo",
              "rollout.n=3", "rollout.max_new_tokens=4", "train.prompts_per_step=3", "train.micro_batch_size=17",
              "optim.lr=0.001", "train.steps=2"]
    one, two = run(tmp_path / "one", *common), run(tmp_path / "two", *common, *TWO_BY_TWO)
    a, b = metrics(one), metrics(two)
    for key in ("reward/mean", "episode/turns", "episode/return", "episode/truncated/episode_tokens"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert any(r["episode/truncated/episode_tokens"] > 0 for r in a)  # the budget cut some episodes
    rows = [round(r["episode/turns"] * 9) for r in a]  # 9 episodes of 1-3 turns each
    assert 18 in rows  # micro-batches of 17 + 1: the 1-row tail joined the first (shard_chunks)
    assert [r["loss/policy"] for r in a] == pytest.approx([r["loss/policy"] for r in b], abs=1e-6)
    # 1e-4 as in the mixed test above: Adam moves a parameter whose gradient is ~0 by lr x rounding noise
    # (here the ranks also run turn rows without the prompt-once path the single process picks)
    assert max_diff(one, two) < 1e-4


def test_a_micro_batch_cut_between_groups_takes_one_forward_path_on_every_rank(tmp_path, ray_session):
    """3 prompts x 2 samples in micro-batches of 3 rows: rank 0 gets rows 0-1 (one prompt twice: the
    prompt-once forward, two passes through the layers), rank 1 row 2 alone (one pass).  Before the
    ranks agreed on the path, rank 0 waited in an all-gather rank 1 never made: the run hung."""
    common = ["train.prompts_per_step=3", "rollout.n=2", "train.micro_batch_size=3", "train.steps=2"]
    one, two = run(tmp_path / "one", *common), run(tmp_path / "two", *common, "distributed.train_workers=2",
                                                    "distributed.cpus_per_worker=0.5")
    assert [r["reward/mean"] for r in metrics(one)] == [r["reward/mean"] for r in metrics(two)]
    assert max_diff(one, two) < 1e-5


def test_a_short_last_micro_batch_joins_the_one_before():
    from lmmr1.distributed.shard_trainer import shard_chunks

    sizes = lambda n, mb, w: [len(c) for c in shard_chunks(torch.split(torch.arange(n), mb), w)]  # noqa: E731
    assert sizes(11, 5, 2) == [5, 6]  # the 1-row tail would leave rank 1 without rows
    assert sizes(12, 5, 2) == [5, 5, 2]
    assert sizes(11, 5, 1) == [5, 5, 1]  # one rank: nothing to merge
    assert sizes(1, 5, 2) == [1]  # a single micro-batch stays (config validation forbids it)


# ----------------------------------------------------------------------------- config (no Ray needed)
@pytest.mark.parametrize(("overrides", "message"), [
    (["distributed.train_workers=0"], "distributed.train_workers=0 is out of range: must be >= 1"),
    (["distributed.cpus_per_worker=0"], "distributed.cpus_per_worker=0.0 is out of range"),
    (["distributed.train_workers=3", "train.micro_batch_size=2"], "every micro-batch needs at least one row per train"),
    (["distributed.train_workers=2", "model.lora_r=4"], "model.lora_r > 0 (LoRA) is not supported with distributed"),
    (["distributed.rollout_workers=2", "type=sft"], "type=sft is not supported with distributed"),
    (["distributed.train_workers=4", "episode.turns=2", "algo.advantage=gigpo", "reward=[]", "rollout.n=2",
      "train.prompts_per_step=1"], "train.prompts_per_step x rollout.n = 2 episodes"),
    (["rollout.max_tokens_in_flight=4"], "rollout.max_tokens_in_flight=4 is out of range"),
    (["rollout.max_rows_in_flight=-1"], "rollout.max_rows_in_flight=-1 is out of range"),
])
def test_distributed_and_rollout_budget_settings_are_checked_in_one_line(tmp_path, overrides, message):
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", *overrides])
    with pytest.raises(ConfigError, match=None) as e:
        cfg.validate()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_one_and_one_worker_is_the_single_process_path(tmp_path):
    from lmmr1.trainer.executor import LocalExecutor

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "distributed.train_workers=1",
                              "distributed.rollout_workers=1", "train.steps=1"])
    assert not cfg.distributed.enabled
    assert isinstance(Trainer(cfg).executor, LocalExecutor)
