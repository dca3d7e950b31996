"""The RL trainer on the tiny VLM with mixed text + image batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmmr1.errors import LmmR1Error
from lmmr1.trainer.config import ConfigError, load_config
from lmmr1.trainer.trainer import Trainer

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def make_cfg(tmp_path, tiny_vlm, *overrides):
    base = [
        f"output_dir={tmp_path / 'run'}", f"model.path={tiny_vlm}",
        f"data=[{{path: {RECIPES / 'data/smoke_text.jsonl'}, system_prompt: none}}, "
        f"{{path: {RECIPES / 'data/smoke_image.jsonl'}, system_prompt: none}}]",
        "reward=[{name: target_fraction, kwargs: {target: e}}]", "rollout.n=4", "rollout.max_new_tokens=6",
        "train.prompts_per_step=4", "train.micro_batch_size=6", "train.steps=2", "train.tensorboard=false",
        "train.num_threads=2", "optim.lr=0.01",
    ]
    return load_config(None, base + list(overrides))


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


REQUIRED = ["step", "reward/mean", "reward/target_fraction/mean", "response_length/mean", "kl", "entropy",
            "clip_frac", "grad_norm", "lr", "logprob_gap/max", "time/rollout_s", "time/update_s", "time/step_s",
            "tokens_per_s"]


@pytest.mark.parametrize(
    "estimator, extra",
    [
        ("grpo", ["algo.kl_coef=0.01", "algo.kl_estimator=k3"]),  # KL in the loss
        ("rloo", ["train.mini_batch_size=8", "train.ppo_epochs=2"]),  # several optimizer steps per step
        ("reinforce_pp_baseline", ["algo.kl_coef=0.001", "algo.kl_in_reward=true", "algo.kl_estimator=k1"]),
        ("gae", ["algo.lam=0.95", "algo.clip_high=0.28", "algo.dual_clip=3.0"]),
    ],
)
def test_trainer_runs_each_estimator_on_mixed_batches(tmp_path, tiny_vlm, estimator, extra):
    cfg = make_cfg(tmp_path, tiny_vlm, f"algo.advantage={estimator}", *extra)
    trainer = Trainer(cfg)
    assert (trainer.ref is not None) == ("algo.kl_coef" in " ".join(extra))  # no reference model without KL
    assert (trainer.critic is not None) == (estimator == "gae")
    before = {k: v.clone() for k, v in trainer.policy.model.named_parameters()}
    trainer.train()
    rows = read_metrics(cfg_dir := Path(cfg.output_dir))
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in REQUIRED:
            assert key in r, key
        assert r["logprob_gap/max"] < 1e-5
    sources = {json.loads(x)["source"] for x in (cfg_dir / "samples.jsonl").read_text().splitlines()}
    assert sources <= {"smoke_text", "smoke_image"}
    moved = any(not torch.equal(before[k], v) for k, v in trainer.policy.model.named_parameters())
    assert moved, "the policy must change"
    if "algo.kl_coef=0.01" in extra:
        assert rows[1]["kl"] > 0  # the policy moved away from the reference
    if estimator == "gae":
        assert "loss/value" in rows[0]
    assert (cfg_dir / "final" / "model.safetensors").exists() and (cfg_dir / "config.yaml").exists()


def test_mixed_batch_really_has_both_modalities(tmp_path, tiny_vlm):
    trainer = Trainer(make_cfg(tmp_path, tiny_vlm))
    ro, examples, *_ = trainer.collect()
    assert {e.has_images for e in examples} == {True, False}
    assert ro.prompts.num_images == sum(e.has_images for e in examples)


def test_smoke_recipe_reward_rises(tmp_path):
    run = tmp_path / "smoke"
    cfg = load_config(RECIPES / "smoke.yaml", [f"output_dir={run}", "train.steps=28", "train.save_every=0"])
    Trainer(cfg).train()
    rewards = [r["reward/mean"] for r in read_metrics(run)]
    assert rewards[0] < 0.2 and max(rewards[-3:]) > 0.6, rewards


def _final_weights(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def test_kill_and_resume_ends_with_identical_weights(tmp_path, tiny_vlm):
    common = [f"model.path={tiny_vlm}", "train.steps=4", "train.save_every=2", "algo.advantage=rloo",
              "algo.kl_coef=0.01", "train.mini_batch_size=8"]

    def cmd(run):
        base = make_cfg(tmp_path, tiny_vlm)  # reuse the data/reward overrides as CLI arguments
        args = [f"output_dir={run}",
                f"data=[{{path: {base.data[0].path}, system_prompt: none}}, {{path: {base.data[1].path}, "
                "system_prompt: none}]", "reward=[{name: target_fraction, kwargs: {target: e}}]", "rollout.n=4",
                "rollout.max_new_tokens=6", "train.prompts_per_step=4", "train.micro_batch_size=6",
                "train.tensorboard=false", "train.num_threads=2", "optim.lr=0.01", *common]
        return [sys.executable, "-m", "lmmr1.cli", "train", str(RECIPES / "smoke.yaml"), *args]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    res = subprocess.run(cmd(straight), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    env = {**os.environ, "LMMR1_KILL_AT_STEP": "3"}
    res = subprocess.run(cmd(killed), capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == -9, (res.returncode, res.stderr[-2000:])  # SIGKILL at the start of step 3
    assert not (killed / "final").exists() and (killed / "checkpoints" / "step_000002" / "COMPLETE").exists()
    res = subprocess.run(cmd(killed), capture_output=True, text=True, timeout=600)  # resume: auto
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stderr
    a, b = _final_weights(straight), _final_weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in read_metrics(killed)]
    assert steps == [1, 2, 1, 2, 3, 4][: len(steps)] or steps[-2:] == [3, 4]


def test_config_errors_and_overrides(tmp_path, tiny_vlm):
    with pytest.raises(ConfigError, match="did you mean 'algo.kl_coef'"):
        make_cfg(tmp_path, tiny_vlm, "algo.kl_coeff=0.1")
    with pytest.raises(ConfigError, match="did you mean 'rollout'"):
        load_config(None, ["rolout.n=4"])
    with pytest.raises(ConfigError, match="did you mean 'grpo'"):
        make_cfg(tmp_path, tiny_vlm, "algo.advantage=gpro").validate()
    with pytest.raises(ConfigError, match="rollout.n >= 2"):
        make_cfg(tmp_path, tiny_vlm, "rollout.n=1").validate()
    with pytest.raises(ConfigError, match="must divide"):
        make_cfg(tmp_path, tiny_vlm, "train.mini_batch_size=5").validate()
    cfg = make_cfg(tmp_path, tiny_vlm, "algo.clip_high=0.28", "rollout.stop=['</answer>']", "optim.lr=1e-6")
    assert cfg.algo.clip_high == 0.28 and cfg.rollout.stop == ["</answer>"]
    assert cfg.optim.lr == 1e-6  # YAML 1.1 reads 1e-6 as a string; it must still be a float
    with pytest.raises(ConfigError, match="optim.lr must be float"):
        make_cfg(tmp_path, tiny_vlm, "optim.lr=fast")
    cfg = load_config(RECIPES / "smoke.yaml", ["data.0.prob=0.9"])
    assert cfg.data[0].prob == 0.9 and Path(cfg.data[0].path).is_absolute()  # relative to the recipe


def test_nonfinite_updates_are_skipped_then_stop_the_run(tmp_path, tiny_vlm):
    bad = tmp_path / "nan_reward.py"
    # NaN rewards are refused (RewardError); a huge finite one still overflows float32 inside the step
    bad.write_text("def nan(samples):\n    return [3e38 if i % 2 else 1.0 for i, _ in enumerate(samples)]\n")
    cfg = make_cfg(tmp_path, tiny_vlm, f"reward=[{{path: {bad}, name: nan}}]", "train.steps=5",
                   "train.max_nonfinite_steps=2")
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.policy.model.named_parameters()}
    with warnings.catch_warnings(record=True) as caught, \
            pytest.raises(LmmR1Error, match="2 updates in a row had a non-finite"):
        warnings.simplefilter("always")
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.model.named_parameters())
    # a skipped step still advances the schedule, on purpose: torch's ordering warning is not shown
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    rows = read_metrics(Path(cfg.output_dir))
    assert rows[0]["skipped_updates"] == 1


def test_dynamic_sampling_keeps_only_groups_with_signal(tmp_path, tiny_vlm):
    rw = tmp_path / "half.py"
    # text prompts: reward varies with the completion; image prompts: always 0 (no signal)
    rw.write_text("def half(samples):\n"
                  "    return [float(len(s.completion) % 2) if s.fields['datasource'] == 'smoke_text' else 0.0\n"
                  "            for s in samples]\n")
    cfg = make_cfg(tmp_path, tiny_vlm, f"reward=[{{path: {rw}, name: half}}]", "algo.dynamic_sampling=true",
                   "algo.max_sampling_rounds=4", "train.steps=1", "rollout.temperature=1.5")
    trainer = Trainer(cfg)
    ro, examples, samples, res, stats = trainer.collect()
    assert all(e.datasource == "smoke_text" for e in examples)
    assert ro.num_rows == len(examples) * 4 and ro.prompts.num_images == 0
    assert 0 < stats["dynamic/kept_frac"] < 1 and stats["dynamic/rounds"] >= 1
    scores = torch.tensor(res.total).view(-1, 4)
    assert ((scores.max(-1).values - scores.min(-1).values) > 0).all()


# ---------------------------------------------------------------- issue 9: critic, logged numbers, config pairs
def test_critic_backbone_trains_with_fresh_grads_decay_and_the_policy_schedule(tmp_path, tiny_vlm):
    """After 2 GAE steps every trainable backbone tensor has moved.  Image prompts only, so the vision
    tower is in every batch; the value head starts at 0, so the first update moves only the head (no
    gradient reaches the backbone through a zero head) and the second moves the whole backbone."""
    images = f"data=[{{path: {RECIPES / 'data/smoke_image.jsonl'}, system_prompt: none}}]"
    cfg = make_cfg(tmp_path, tiny_vlm, images, "algo.advantage=gae", "optim.weight_decay=0.0",
                   "optim.warmup_steps=4", "train.steps=2")
    trainer = Trainer(cfg)
    critic = trainer.critic
    backbone = dict(critic.backbone.named_parameters())
    trainable = {k for k, p in backbone.items() if p.requires_grad}
    # the tiny VLM's transformer has 56 tensors; its input embedding is tied to the unused LM head and frozen
    assert len(backbone) == 56 and len(trainable) == 55
    in_optimizer = {id(p) for g in trainer.critic_optimizer.param_groups for p in g["params"]}
    assert {id(backbone[k]) for k in trainable} <= in_optimizer
    assert set(critic.state_dict()) == {f"backbone.{k}" for k in backbone} | {"head.weight", "head.bias"}
    before = {k: p.detach().clone() for k, p in backbone.items()}
    for k in trainable:  # a stale gradient must be cleared by the update, not added to
        backbone[k].grad = torch.full_like(backbone[k], 1e3)
    lrs = []
    for _ in range(2):
        trainer.train_step()
        lrs.append(trainer.critic_optimizer.param_groups[0]["lr"])
    changed = {k for k, p in backbone.items() if not torch.equal(before[k], p)}
    assert changed == trainable  # 55 of 55 trainable backbone tensors moved (0 before the fix)
    assert sum(k.startswith("visual.") for k in changed) == 30 and len(changed - {"visual"}) == 55
    assert max(backbone[k].grad.abs().max().item() for k in trainable) < 1e2
    # critic lr = critic_lr (default optim.lr * 10 = 0.1) x warm-up (step + 1) / 4
    assert lrs == pytest.approx([0.1 * 1 / 4, 0.1 * 2 / 4])


def test_critic_optimizer_uses_the_configured_weight_decay_and_resumes(tmp_path, tiny_vlm):
    cfg = make_cfg(tmp_path, tiny_vlm, "algo.advantage=gae", "optim.weight_decay=0.05", "train.steps=1")
    trainer = Trainer(cfg)
    assert [g["weight_decay"] for g in trainer.critic_optimizer.param_groups] == [0.05]  # not torch's 0.01
    trainer.train()
    saved = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    assert any(not torch.equal(saved[k], v) for k, v in Trainer(make_cfg(tmp_path / "fresh", tiny_vlm,
               "algo.advantage=gae")).critic.state_dict().items())  # the trained critic differs from a fresh one
    resumed = Trainer(make_cfg(tmp_path, tiny_vlm, "algo.advantage=gae", "optim.weight_decay=0.05",
                               "train.steps=1"))
    assert resumed.step == 1
    for k, v in resumed.critic.state_dict().items():
        assert torch.equal(saved[k], v), k


def test_logged_lr_is_the_rate_used_by_that_step(tmp_path, tiny_vlm):
    cfg = make_cfg(tmp_path, tiny_vlm, "optim.warmup_steps=4", "train.steps=6", "optim.lr=0.01",
                   "optim.min_lr_ratio=0.0", "train.save_every=0")
    Trainer(cfg).train()
    lrs = [r["lr"] for r in read_metrics(Path(cfg.output_dir))]
    # warm-up (s+1)/4 for steps 1-4; then cosine over the 2 remaining steps: progress 0 -> 1.0, 0.5 -> 0.5
    assert lrs == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.005])


def _one_step_metrics(tmp_path, tiny_vlm, name, *overrides):
    const = tmp_path / "one.py"
    const.write_text("def one(samples):\n    return [1.0 for _ in samples]\n")
    cfg = make_cfg(tmp_path / name, tiny_vlm, f"reward=[{{path: {const}, name: one}}]", "train.steps=1",
                   *overrides)
    Trainer(cfg).train()
    return read_metrics(Path(cfg.output_dir))[0]


def test_logged_policy_loss_is_the_mini_batch_loss_not_divided_by_micro_batches(tmp_path, tiny_vlm):
    # constant reward -> GRPO advantage 0, so at step 1 the loss is exactly -entropy_coef * token-mean entropy
    whole = _one_step_metrics(tmp_path, tiny_vlm, "whole", "algo.entropy_coef=0.1", "train.micro_batch_size=16")
    micro = _one_step_metrics(tmp_path, tiny_vlm, "micro", "algo.entropy_coef=0.1", "train.micro_batch_size=3")
    assert whole["loss/policy"] == pytest.approx(-0.1 * whole["entropy"], rel=1e-5)  # one micro-batch: exact
    # six micro-batches (3+3+3+3+3+1) add up to the same mini-batch loss (before the fix: a sixth of it)
    assert micro["loss/policy"] == pytest.approx(whole["loss/policy"], rel=1e-5)


def test_logged_value_loss_is_the_mini_batch_loss(tmp_path, tiny_vlm):
    # constant reward 1, gamma = lam = 1: every return R_t = 1 and V = 0 at step 1 (zero-initialised head),
    # so the value loss is 0.5 * mean((V - R)^2) = 0.5 whatever the lengths and the micro-batching
    m = _one_step_metrics(tmp_path, tiny_vlm, "gae", "algo.advantage=gae", "algo.lam=1.0",
                          "train.micro_batch_size=3")
    assert m["loss/value"] == pytest.approx(0.5, rel=1e-6)


def test_gspo_pairing_and_adaptive_kl_config_errors(tmp_path, tiny_vlm):
    with pytest.raises(ConfigError, match=r"^algo.ratio_level=sequence \(GSPO\) needs "
                                          r"algo.loss_agg=seq_mean_token_mean \(got token_mean\)"):
        make_cfg(tmp_path, tiny_vlm, "algo.ratio_level=sequence").validate()
    make_cfg(tmp_path, tiny_vlm, "algo.ratio_level=sequence", "algo.loss_agg=seq_mean_token_mean").validate()
    with pytest.raises(ConfigError, match=r"^algo.kl_target=0.1 scales algo.kl_coef by a factor each step, so it "
                                          r"needs an initial algo.kl_coef > 0 \(got 0.0\), e.g. 0.001$"):
        Trainer(make_cfg(tmp_path, tiny_vlm, "algo.kl_target=0.1"))  # refused before any model is loaded
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
