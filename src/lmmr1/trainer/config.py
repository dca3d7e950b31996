"""Typed training config; a YAML recipe maps 1:1 onto these dataclasses.

``lmmr1 train RECIPE.yaml key.sub=value ...`` applies dotted overrides; an unknown key anywhere
(recipe or override) is rejected with the closest valid key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmmr1.errors import LmmR1Error, utf8_text
from lmmr1.models.loader import LORA_SAVE_MODES, LORA_TARGETS
from lmmr1.trainer.logging import WANDB_MISSING


class ConfigError(LmmR1Error):
    pass


@dataclass
class ModelConfig:
    path: str = ""  # local HF checkpoint directory
    tiny: str | None = None  # tiny | small: build an offline test model into {output_dir}/base_model
    tiny_seed: int = 0
    dtype: str = "auto"  # parameter dtype: auto = fp32 (master weights); bf16 = pure bf16 (models/precision.py)
    compute_dtype: str = "auto"  # auto = bf16 autocast on a bf16-capable GPU with fp32 weights, else the param dtype
    device: str = "auto"  # auto = cuda if available, else cpu
    gradient_checkpointing: bool = False
    freeze_vision: bool | str = False  # true: whole vision tower; encoder: ViT frozen, merger trained
    lora_r: int = 0  # > 0 enables LoRA on the language model
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # language-model linears
    lora_save: str = "merged"  # final model: merged (full checkpoint) | adapter (PEFT files only) | both
    max_prompt_tokens: int | None = None


@dataclass
class DatasetConfig:
    path: str = ""
    prob: float | None = None  # mixing probability (default: proportional to size)
    input_key: str = "message"
    label_key: str = "answer"
    image_key: str = "images"
    system_prompt: str | None = "r1"
    skip_invalid: bool = False
    max_pixels: int | None = None
    name: str | None = None
    response_key: str = "response"  # SFT target (the assistant's reply)
    image_root: str | None = None  # absolute image paths in the rows are looked up under this folder


@dataclass
class RewardConfig:
    name: str | None = None
    weight: float | None = None
    path: str | None = None
    url: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None  # seconds per call of a custom/remote reward (see docs/rewards.md)


@dataclass
class RolloutConfig:
    n: int = 4  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    engine: str = "hf"  # hf: the built-in sampler (vllm: not in this build, see docs/benchmarks.md)
    # memory budget of the sampler (0 = none): rows, and KV-cache tokens (rows x (prompt + max_new_tokens)),
    # decoded at a time; the batch is worked through in chunks, with the same samples (docs/training.md)
    max_rows_in_flight: int = 0
    max_tokens_in_flight: int = 0


@dataclass
class EpisodeConfig:
    """Multi-turn episodes (docs/agents.md, "Multi-turn episodes"): with ``turns >= 1`` every data row
    must carry an ``env`` field and is played turn by turn; 0 keeps the single-turn rollout."""

    turns: int = 0  # most actions per episode (0: single-turn, the row's prompt is answered once)
    context: str = "full"  # full | last_k (the first prompt + the last ``last_k`` turns) | current (latest observation only)
    last_k: int = 2
    max_episode_tokens: int = 0  # action tokens per episode (0: no limit beyond turns x rollout.max_new_tokens)
    max_images: int = 0  # images in one context (0: no limit)
    max_context_tokens: int = 0  # tokens in one context (0: no limit)
    invalid_reward: float = -0.1  # added to the step reward of an action the env rejects
    feedback: bool = True  # tell the agent when its action was invalid (next observation)
    invalid_feedback: str = "Invalid action."
    observation_template: str = "{observation}"  # the user turn of each later observation ({observation}: its text)
    gigpo_omega: float = 1.0  # GiGPO: A = A_episode + omega * A_step


@dataclass
class AlgoConfig:
    advantage: str = "grpo"  # grpo | dr_grpo | rloo | reinforce_pp | reinforce_pp_baseline | gae | ema_grpo | observe_grpo
    ratio_level: str = "token"  # token (PPO/GRPO) | sequence (GSPO)
    clip_low: float = 0.2
    clip_high: float = 0.2  # DAPO clip-higher: 0.28
    dual_clip: float | None = None
    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    kl_coef: float = 0.0  # 0: no reference model is loaded
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in_reward: bool = False  # True: -kl_coef*kl shapes token rewards; False: kl_coef*KL added to the loss
    kl_target: float | None = None  # adaptive KL coefficient when set
    kl_horizon: int = 10000
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    value_clip: float | None = 0.2
    vf_coef: float = 1.0
    critic_lr: float | None = None  # default: optim.lr * 10
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards all tie and sample more
    max_sampling_rounds: int = 3
    eps: float = 1e-6
    # neighbouring papers' methods (docs/algorithms.md, "Variants")
    dads: bool = False  # APO: KL weight 1 - exp(-e * group accuracy) on samples with A > 0
    stcr: bool = False  # APO: wrong answers longer than the mean correct length get A * (2 - 1.00001^-(L - L_bar))
    papo_coef: float = 0.0  # PAPO gamma (paper 0.01): loss -= gamma * KL(pi(.|image) || pi(.|masked image))
    papo_entropy_coef: float = 0.0  # PAPO double-entropy: + eta1 * H(.|image) on image rows
    papo_masked_entropy_coef: float = 0.0  # PAPO double-entropy: + eta2 * H(.|masked image) (a second forward)
    correct_reward: str | None = None  # reward whose value >= 0.5 means "right" (observe_grpo, dads, stcr); None: accuracy_strict or accuracy


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # warm-up as a fraction of train.steps (LMM-R1's 0.03); exclusive with warmup_steps
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 10
    data_passes: float = 0.0  # > 0: steps = ceil(passes x dataset rows / prompts_per_step) (LMM-R1's num_episodes)
    prompts_per_step: int = 8  # rollout batch, in prompts (rows = prompts * n)
    mini_batch_size: int = 0  # rows per optimizer step (0: the whole rollout batch)
    micro_batch_size: int = 8  # rows per forward/backward
    ppo_epochs: int = 1
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    resume: str | None = "auto"  # auto | none | path to a checkpoint
    old_logprobs: str = "auto"  # auto | rollout | recompute
    logprob_chunk_tokens: int = 2048
    log_samples: int = 4  # completions per step written to samples.jsonl
    max_nonfinite_steps: int = 3
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "lmmr1"
    wandb_run_name: str | None = None  # default: W&B's generated name
    wandb_entity: str | None = None  # default: your W&B default entity
    num_threads: int = 0  # torch threads on CPU (0: leave torch's default)


@dataclass
class DistributedConfig:
    """Scale-out on Ray (docs/distributed.md); 1 and 1 (the default) trains in this process."""

    train_workers: int = 1  # FSDP2 ranks sharding policy (and reference) model, one Ray actor each
    rollout_workers: int = 1  # data-parallel sampler actors, weights streamed to them after each update
    address: str | None = None  # an existing Ray cluster ("auto" or host:port); null: start a local one
    cpus_per_worker: float = 1.0  # Ray logical CPUs per actor (fractions are fine)
    gpus_per_worker: float | None = None  # null: 1 on a CUDA machine, 0 on CPU
    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy for the policy: parameters, gradients, optimizer state on CPU
    ref_offload: bool = False  # the reference model's shards live on CPU, moved to the GPU per layer
    weight_sync_mb: float = 64.0  # bucket size of the per-tensor weight stream to rollout workers

    @property
    def enabled(self) -> bool:
        return self.train_workers > 1 or self.rollout_workers > 1


@dataclass
class Config:
    output_dir: str = "runs/lmmr1"  # metrics, samples, checkpoints, final model
    type: str = "rl"  # rl | sft (supervised fine-tuning on the data's response field)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: list[DatasetConfig] = field(default_factory=list)
    reward: list[RewardConfig] = field(default_factory=list)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> None:
        from lmmr1.algos import GROUP_ESTIMATORS, ratio_pairing_error

        if not self.model.path and not self.model.tiny:
            raise ConfigError("model.path is required (a local HF checkpoint directory), or model.tiny: tiny|small")
        if not self.data:
            raise ConfigError("data: give at least one dataset (a list of {path: ...})")
        if self.type not in ("rl", "sft"):
            raise ConfigError(_suggest("type", self.type, ("rl", "sft")))
        check_values(self)
        _validate_lora(self.model)
        _validate_precision(self.model)
        _validate_distributed(self)
        if self.train.wandb and importlib.util.find_spec("wandb") is None:
            raise ConfigError(WANDB_MISSING)
        if self.type == "sft":
            return
        multi_turn = _validate_episode(self)
        if not self.reward and not multi_turn:
            raise ConfigError("reward: give at least one reward, e.g. [{name: accuracy}, {name: format}]")
        if err := ratio_pairing_error(self.algo.ratio_level, self.algo.loss_agg):
            raise ConfigError(err)
        if self.algo.kl_target is not None and not self.algo.kl_coef > 0:
            raise ConfigError(f"algo.kl_target={self.algo.kl_target} scales algo.kl_coef by a factor each step, so "
                              f"it needs an initial algo.kl_coef > 0 (got {self.algo.kl_coef}), e.g. 0.001")
        if self.algo.advantage in GROUP_ESTIMATORS and self.rollout.n < 2:
            raise ConfigError(f"algo.advantage={self.algo.advantage} compares samples of a prompt: set rollout.n >= 2")
        rows = self.train.prompts_per_step * self.rollout.n
        mb = self.train.mini_batch_size or rows
        if rows % mb and not multi_turn:
            raise ConfigError(f"train.mini_batch_size={mb} must divide the rollout batch of {rows} rows "
                              f"(prompts_per_step {self.train.prompts_per_step} x n {self.rollout.n})")


def _validate_precision(m: ModelConfig) -> None:
    """dtype / compute_dtype names and pairing, checked without a device (``auto`` resolves later)."""
    from lmmr1.models.precision import PrecisionError, resolve_precision

    try:
        resolve_precision(m.dtype, m.compute_dtype, "cpu")
    except PrecisionError as e:
        raise ConfigError(str(e)) from None


def _validate_distributed(cfg: Config) -> None:
    """What the distributed path does not run (yet), and batches it cannot split, in one line each."""
    d, t = cfg.distributed, cfg.train
    if not d.enabled:
        return
    unsupported = [(cfg.type == "sft", "type=sft"), (cfg.model.lora_r > 0, "model.lora_r > 0 (LoRA)")]
    for bad, what in unsupported:
        if bad:
            raise ConfigError(f"{what} is not supported with distributed workers yet: set distributed.train_workers=1 "
                              "distributed.rollout_workers=1")
    rows = t.prompts_per_step * cfg.rollout.n
    if cfg.episode.turns:  # at least one turn row per episode; a short last micro-batch joins the one before
        if min(t.micro_batch_size, rows) < d.train_workers:
            raise ConfigError(f"distributed.train_workers={d.train_workers}: every micro-batch needs at least one row "
                              f"per train worker, but train.prompts_per_step x rollout.n = {rows} episodes in "
                              f"micro-batches of {t.micro_batch_size} can leave fewer; raise them")
        return
    mini = t.mini_batch_size or rows
    # every rank must take part in every forward (FSDP collectives): each micro-batch needs >= one row per rank
    for total, name in ((rows, "rollout batch"), (mini, "mini-batch")):
        last = total % t.micro_batch_size
        if min(t.micro_batch_size, total) < d.train_workers or 0 < last < d.train_workers:
            raise ConfigError(f"distributed.train_workers={d.train_workers}: every micro-batch needs at least one row "
                              f"per train worker, but the {name} of {total} rows in micro-batches of "
                              f"{t.micro_batch_size} leaves one with {last or min(t.micro_batch_size, total)}; "
                              "change train.micro_batch_size")


def _validate_episode(cfg: Config) -> bool:
    """Multi-turn checks; True when the run is multi-turn (then the env pays the rewards and the
    single-turn checks that follow do not apply)."""
    from lmmr1.algos import EPISODE_ESTIMATORS

    e, a = cfg.episode, cfg.algo
    if not e.turns:
        if a.advantage in EPISODE_ESTIMATORS:
            raise ConfigError(f"algo.advantage={a.advantage} scores multi-turn episodes: set episode.turns >= 1 "
                              "(and train on env rows)")
        return False
    if a.advantage not in EPISODE_ESTIMATORS:
        raise ConfigError(f"episode.turns={e.turns} needs an episode estimator: algo.advantage must be one of "
                          f"{', '.join(sorted(EPISODE_ESTIMATORS))} (got {a.advantage})")
    if cfg.rollout.n < 2:
        raise ConfigError(f"algo.advantage={a.advantage} compares the episodes of a row: set rollout.n >= 2")
    if a.dynamic_sampling:
        raise ConfigError("algo.dynamic_sampling is for single-turn rollouts; turn it off with episode.turns")
    if cfg.reward:
        raise ConfigError("episode.turns is set: the env pays the rewards, so leave reward: empty "
                          "(episode.invalid_reward shapes invalid actions)")
    if cfg.train.mini_batch_size:
        raise ConfigError("train.mini_batch_size must be 0 with episode.turns (the number of turn rows varies)")
    return True


def _validate_lora(m: ModelConfig) -> None:
    """LoRA fields that can be checked without the model (module names are checked at load time)."""
    if m.lora_r < 0:
        raise ConfigError(f"model.lora_r must be >= 0 (0 = no LoRA), got {m.lora_r}")
    if not 0.0 <= m.lora_dropout < 1.0:
        raise ConfigError(f"model.lora_dropout must be in [0, 1), got {m.lora_dropout}")
    if m.lora_save not in LORA_SAVE_MODES:
        raise ConfigError(_suggest("model.lora_save", m.lora_save, LORA_SAVE_MODES))
    if m.lora_save != "merged" and m.lora_r == 0:
        raise ConfigError(f"model.lora_save={m.lora_save} saves a LoRA adapter, but LoRA is off: set model.lora_r > 0")
    t = m.lora_target_modules
    if not isinstance(t, list) or not t or not all(isinstance(x, str) and x for x in t):
        raise ConfigError(f"model.lora_target_modules must be a non-empty list of module names, e.g. "
                          f"[q_proj, v_proj]; got {t!r}")


# ------------------------------------------------------------------------------------ value checks
KL_ESTIMATORS = ("k1", "k2", "k3")
RATIO_LEVELS = ("token", "sequence")
OLD_LOGPROBS = ("auto", "rollout", "recompute")
ROLLOUT_ENGINES = ("hf",)
TINY_SIZES = ("tiny", "small")
EPISODE_CONTEXTS = ("full", "last_k", "current")


def _bad(key: str, value: Any, need: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is out of range: {need}")


# an existing Ray cluster: "auto" (the one `ray start` recorded on this node), its GCS HOST:PORT, or a Ray Client URL
RAY_ADDRESS = r"auto|(ray://)?[A-Za-z0-9_.\-]+:\d{1,5}|(ray://)?\[[0-9A-Fa-f:.]+\]:\d{1,5}"


def check_values(cfg: Config) -> None:
    """Range and enum checks, one line naming the dotted key and the bad value.

    Each of these values would otherwise train silently on something else (a negative lr ascends
    the loss, ``train.steps: 0`` writes an untrained "final" model, warm-up longer than the run
    never reaches the set lr) or fail deep inside torch with a traceback.
    """
    from lmmr1.algos import AGG_MODES, ESTIMATORS

    m, r, a, o, t = cfg.model, cfg.rollout, cfg.algo, cfg.optim, cfg.train
    rules: list[tuple[str, Any, bool, str]] = [  # (key, value, ok, requirement)
        ("model.tiny", m.tiny, m.tiny is None or m.tiny in TINY_SIZES, f"choose from {', '.join(TINY_SIZES)}"),
        ("model.freeze_vision", m.freeze_vision, m.freeze_vision in (True, False, "encoder"),
         "choose from true (vision tower frozen), false (trained), encoder (ViT frozen, merger trained)"),
        ("model.max_prompt_tokens", m.max_prompt_tokens, m.max_prompt_tokens is None or m.max_prompt_tokens >= 1,
         "must be >= 1 (or null for no limit)"),
        ("rollout.n", r.n, r.n >= 1, "must be >= 1"),
        ("rollout.temperature", r.temperature, r.temperature >= 0, "must be >= 0 (0 is greedy)"),
        ("rollout.top_p", r.top_p, 0 < r.top_p <= 1, "must be in (0, 1]"),
        ("rollout.top_k", r.top_k, r.top_k >= 0, "must be >= 0 (0 disables top-k)"),
        ("rollout.engine", r.engine, r.engine in ROLLOUT_ENGINES, ""),
        ("rollout.max_new_tokens", r.max_new_tokens, r.max_new_tokens >= 1, "must be >= 1"),
        ("rollout.max_rows_in_flight", r.max_rows_in_flight, r.max_rows_in_flight >= 0, "must be >= 0 (0: no limit)"),
        ("rollout.max_tokens_in_flight", r.max_tokens_in_flight, r.max_tokens_in_flight == 0
         or r.max_tokens_in_flight > r.max_new_tokens, "must be 0 (no limit) or more than rollout.max_new_tokens "
         "(one row holds its prompt plus max_new_tokens cache positions)"),
        ("algo.advantage", a.advantage, a.advantage in ESTIMATORS, ""),
        ("algo.loss_agg", a.loss_agg, a.loss_agg in AGG_MODES, ""),
        ("algo.kl_estimator", a.kl_estimator, a.kl_estimator in KL_ESTIMATORS, ""),
        ("algo.ratio_level", a.ratio_level, a.ratio_level in RATIO_LEVELS, ""),
        ("algo.clip_low", a.clip_low, a.clip_low >= 0, "must be >= 0"),
        ("algo.clip_high", a.clip_high, a.clip_high >= 0, "must be >= 0"),
        ("algo.dual_clip", a.dual_clip, a.dual_clip is None or a.dual_clip > 1, "must be > 1 (typically 3) or null"),
        ("algo.kl_coef", a.kl_coef, a.kl_coef >= 0, "must be >= 0"),
        ("algo.kl_target", a.kl_target, a.kl_target is None or a.kl_target > 0, "must be > 0 or null"),
        ("algo.kl_horizon", a.kl_horizon, a.kl_horizon >= 1, "must be >= 1"),
        ("algo.entropy_coef", a.entropy_coef, a.entropy_coef >= 0, "must be >= 0"),
        ("algo.gamma", a.gamma, 0 <= a.gamma <= 1, "must be in [0, 1]"),
        ("algo.lam", a.lam, 0 <= a.lam <= 1, "must be in [0, 1]"),
        ("algo.value_clip", a.value_clip, a.value_clip is None or a.value_clip > 0, "must be > 0 or null"),
        ("algo.vf_coef", a.vf_coef, a.vf_coef >= 0, "must be >= 0"),
        ("algo.critic_lr", a.critic_lr, a.critic_lr is None or a.critic_lr > 0, "must be > 0 or null"),
        ("algo.max_sampling_rounds", a.max_sampling_rounds, a.max_sampling_rounds >= 1, "must be >= 1"),
        ("algo.eps", a.eps, a.eps > 0, "must be > 0"),
        ("algo.papo_coef", a.papo_coef, a.papo_coef >= 0, "must be >= 0 (0: off; the paper uses 0.01)"),
        ("algo.papo_entropy_coef", a.papo_entropy_coef, a.papo_entropy_coef >= 0, "must be >= 0"),
        ("algo.papo_masked_entropy_coef", a.papo_masked_entropy_coef, a.papo_masked_entropy_coef >= 0,
         "must be >= 0"),
        ("optim.lr", o.lr, o.lr > 0, "must be > 0"),
        ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, "must be >= 0"),
        ("optim.betas", o.betas, isinstance(o.betas, (list, tuple)) and len(o.betas) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                           and 0 <= b < 1 for b in o.betas),
         "must be two numbers in [0, 1), e.g. [0.9, 0.999]"),
        ("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, "must be >= 0"),
        ("optim.warmup_ratio", o.warmup_ratio, 0 <= o.warmup_ratio < 1, "must be in [0, 1)"),
        ("optim.min_lr_ratio", o.min_lr_ratio, 0 <= o.min_lr_ratio <= 1, "must be in [0, 1]"),
        ("optim.max_grad_norm", o.max_grad_norm, o.max_grad_norm > 0, "must be > 0"),
        ("train.steps", t.steps, t.steps >= 1, "must be >= 1 (0 steps would save an untrained model as 'final')"),
        ("train.data_passes", t.data_passes, t.data_passes >= 0,
         "must be >= 0 (0: train.steps sets the length; 2 = two passes over the data)"),
        ("train.prompts_per_step", t.prompts_per_step, t.prompts_per_step >= 1, "must be >= 1"),
        ("train.mini_batch_size", t.mini_batch_size, t.mini_batch_size >= 0,
         "must be >= 0 (0: the whole rollout batch)"),
        ("train.micro_batch_size", t.micro_batch_size, t.micro_batch_size >= 1, "must be >= 1"),
        ("train.ppo_epochs", t.ppo_epochs, t.ppo_epochs >= 1, "must be >= 1"),
        ("train.save_every", t.save_every, t.save_every >= 0, "must be >= 0 (0: only at the end)"),
        ("train.keep_checkpoints", t.keep_checkpoints, t.keep_checkpoints >= 0, "must be >= 0"),
        ("train.old_logprobs", t.old_logprobs, t.old_logprobs in OLD_LOGPROBS, ""),
        ("train.logprob_chunk_tokens", t.logprob_chunk_tokens, t.logprob_chunk_tokens >= 1, "must be >= 1"),
        ("train.log_samples", t.log_samples, t.log_samples >= 0, "must be >= 0"),
        ("train.max_nonfinite_steps", t.max_nonfinite_steps, t.max_nonfinite_steps >= 1, "must be >= 1"),
        ("train.num_threads", t.num_threads, t.num_threads >= 0, "must be >= 0 (0: torch's default)"),
        ("distributed.train_workers", cfg.distributed.train_workers, cfg.distributed.train_workers >= 1, "must be >= 1"),
        ("distributed.rollout_workers", cfg.distributed.rollout_workers, cfg.distributed.rollout_workers >= 1,
         "must be >= 1"),
        ("distributed.address", cfg.distributed.address, cfg.distributed.address is None
         or bool(re.fullmatch(RAY_ADDRESS, str(cfg.distributed.address))),
         "must be null (a local Ray session), auto, HOST:PORT or ray://HOST:PORT"),
        ("distributed.cpus_per_worker", cfg.distributed.cpus_per_worker, cfg.distributed.cpus_per_worker > 0,
         "must be > 0 (fractions such as 0.5 are fine)"),
        ("distributed.gpus_per_worker", cfg.distributed.gpus_per_worker, cfg.distributed.gpus_per_worker is None
         or cfg.distributed.gpus_per_worker >= 0, "must be >= 0 or null (auto)"),
        ("distributed.weight_sync_mb", cfg.distributed.weight_sync_mb, cfg.distributed.weight_sync_mb > 0, "must be > 0"),
        ("episode.turns", cfg.episode.turns, cfg.episode.turns >= 0, "must be >= 0 (0: single-turn)"),
        ("episode.context", cfg.episode.context, cfg.episode.context in EPISODE_CONTEXTS, ""),
        ("episode.last_k", cfg.episode.last_k, cfg.episode.last_k >= 1,
         "must be >= 1 (the last turn holds the current observation)"),
        ("episode.max_episode_tokens", cfg.episode.max_episode_tokens, cfg.episode.max_episode_tokens >= 0,
         "must be >= 0 (0: no limit)"),
        ("episode.max_images", cfg.episode.max_images, cfg.episode.max_images >= 0, "must be >= 0 (0: no limit)"),
        ("episode.max_context_tokens", cfg.episode.max_context_tokens, cfg.episode.max_context_tokens >= 0,
         "must be >= 0 (0: no limit)"),
        ("episode.gigpo_omega", cfg.episode.gigpo_omega, cfg.episode.gigpo_omega >= 0, "must be >= 0"),
    ]
    enums = {"algo.advantage": ESTIMATORS, "algo.loss_agg": AGG_MODES, "algo.kl_estimator": KL_ESTIMATORS,
             "algo.ratio_level": RATIO_LEVELS, "rollout.engine": ROLLOUT_ENGINES, "train.old_logprobs": OLD_LOGPROBS, "model.tiny": TINY_SIZES,
             "episode.context": EPISODE_CONTEXTS}
    if r.engine == "vllm":  # named in the design, not built: say so instead of sampling with something else
        raise ConfigError("rollout.engine=vllm is not available in this build of lmmr1: no vLLM engine is "
                          "implemented yet (it could not be tested here; docs/benchmarks.md says what was tried). "
                          "Use rollout.engine: hf")
    for key, value, ok, need in rules:
        if not ok:
            raise ConfigError(_suggest(key, value, enums[key])) if key in enums else _bad(key, value, need)
    if o.warmup_steps and o.warmup_ratio:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} and optim.warmup_ratio={o.warmup_ratio} both set "
                          "the warm-up length: set one of them (the other to 0)")
    # warmup_steps >= train.steps is allowed on purpose: a shortened trial of a real recipe
    # (train.steps=3 on a recipe with 5 warm-up steps) must run as the recipe would start.
    # A mini-batch need not be a multiple of micro_batch_size: losses are normalised by the whole
    # mini-batch's token/sequence counts, so a shorter last micro-batch gives the same gradient.
    check_variant_combinations(cfg)
    for i, d in enumerate(cfg.data):
        if not d.path:
            raise ConfigError(f"data[{i}].path is required")
        if d.prob is not None and d.prob < 0:
            raise _bad(f"data[{i}].prob", d.prob, "must be >= 0")
        if d.max_pixels is not None and d.max_pixels < 1:
            raise _bad(f"data[{i}].max_pixels", d.max_pixels, "must be >= 1 (or null)")
    probs = [d.prob for d in cfg.data]
    if any(p is not None for p in probs) and not sum(p or 0.0 for p in probs) > 0:
        raise ConfigError(f"data[].prob are {probs}: at least one dataset needs a positive prob")


CORRECTNESS_REWARDS = ("accuracy", "accuracy_strict")


def correctness_reward(cfg: Config) -> str | None:
    """The reward whose value >= 0.5 means "right" for observe_grpo / DADS / STCR: ``algo.correct_reward``,
    else ``accuracy_strict``, else ``accuracy``; a recipe with a single reward uses that one (its only
    notion of success); None when none of these applies."""
    names = [r.name for r in cfg.reward if r.name]
    if cfg.algo.correct_reward is not None:
        return cfg.algo.correct_reward
    for name in reversed(CORRECTNESS_REWARDS):
        if name in names:
            return name
    return names[0] if len(cfg.reward) == 1 and names else None


def check_variant_combinations(cfg: Config) -> None:
    """The neighbouring papers' options (algo.dads/stcr/papo_*, ema_grpo, observe_grpo) need
    things the rest of the recipe must provide; a missing one would silently train plain GRPO."""
    from lmmr1.algos import GROUP_ESTIMATORS

    a = cfg.algo
    if cfg.type != "rl":
        return
    needs_correct = [k for k, on in (("algo.advantage=observe_grpo", a.advantage == "observe_grpo"),
                                     ("algo.dads=true", a.dads), ("algo.stcr=true", a.stcr)) if on]
    names = {r.name for r in cfg.reward if r.name}
    if a.correct_reward is not None and a.correct_reward not in names:
        raise ConfigError(f"algo.correct_reward={a.correct_reward!r} is not one of this recipe's rewards "
                          f"({', '.join(sorted(names)) or 'none named'})")
    if needs_correct and correctness_reward(cfg) is None:
        raise ConfigError(f"{needs_correct[0]} uses each group's accuracy, and this recipe has {len(cfg.reward)} "
                          "rewards, none of them 'accuracy': add the reward 'accuracy' (or 'accuracy_strict') to "
                          "reward: (weight 0 to use it only as a signal), or name the reward that says 'right' "
                          "with algo.correct_reward")
    for key, on in (("algo.dads", a.dads), ("algo.stcr", a.stcr)):
        if on and a.advantage not in GROUP_ESTIMATORS:
            raise ConfigError(f"{key}=true works on groups of samples: use a group estimator "
                              f"({', '.join(sorted(GROUP_ESTIMATORS))}), not algo.advantage={a.advantage}")
    if a.dads and not a.kl_coef > 0:
        raise ConfigError("algo.dads=true weights the KL term, but there is none: set algo.kl_coef > 0")
    if a.dads and a.kl_in_reward:
        raise ConfigError("algo.dads=true weights the KL *loss* term per sample by its advantage's sign; with "
                          "algo.kl_in_reward=true the KL shapes the rewards before advantages exist: set "
                          "algo.kl_in_reward=false")
    if (a.papo_entropy_coef or a.papo_masked_entropy_coef) and not a.papo_coef > 0:
        raise ConfigError("algo.papo_entropy_coef / papo_masked_entropy_coef regularise PAPO's KL term: set "
                          "algo.papo_coef > 0 (0.01 in the paper)")


# ------------------------------------------------------------------------------------ (de)serialise
def _suggest(key: str, value: Any, valid) -> str:
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{key}={value!r} is not valid{hint} (choose from {', '.join(map(str, valid))})"


def from_dict(cls, data: Any, prefix: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(tp, value: Any, path: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list")
        items = []
        for i, v in enumerate(value):
            if isinstance(v, str) and args[0] is RewardConfig:
                v = {"name": v}
            if isinstance(v, str) and args[0] is DatasetConfig:
                v = {"path": v}
            items.append(from_dict(args[0], v, f"{path}[{i}]"))
        return items
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path) if len(inner) == 1 else value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, str):  # YAML 1.1 reads 1e-6 as a string
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{path} must be {tp.__name__}, got {value!r}") from None
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        if tp is str and isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f"{path} must be {tp.__name__}, got {value!r}")
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _all_keys(cls, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = typing.get_type_hints(cls)[f.name]
        out.append(key)
        if dataclasses.is_dataclass(tp):
            out.extend(_all_keys(tp, key + "."))
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``a.b=value`` (value parsed as YAML); list items by index: ``data.0.path=x``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            why = getattr(e, "problem", None) or " ".join(str(e).split())
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({why}); quote it, e.g. "
                              f"{key}='{raw}'") from None
        parts = key.strip().split(".")
        node: Any = data
        for j, part in enumerate(parts):
            last = j == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {key}: '{part}' is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
                continue
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"override {key}: '{part}' is not a section")
    return data


def resolve_paths(data: dict, base: Path) -> None:
    """Every relative path written in a recipe is relative to the recipe file's folder.

    One rule, output_dir included, so a recipe means the same run from any working directory and a
    recipe can name another recipe's output (``mgt_geo.yaml``'s model is ``fre_text.yaml``'s
    ``final``).  Paths given as command-line overrides are applied afterwards, so they are relative
    to the current directory, like every other path typed in a shell.
    """

    def fix(node: Any, key: str) -> None:
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            if node[key].startswith("synth:"):  # a pipeline's generated data, resolved by the pipeline
                return
            path = Path(node[key]).expanduser()
            if not path.is_absolute():
                node[key] = os.path.normpath(base / path)

    fix(data, "output_dir")
    fix(data.get("model"), "path")
    suites = (data.get("eval") or {}).get("suites") if isinstance(data.get("eval"), dict) else None
    if isinstance(suites, dict):  # a pipeline's held-out benchmark files
        for name in list(suites):
            fix(suites, name)
    items = data.get("data")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, str):  # the short form `data: [file.jsonl]`
            holder = {"path": item}
            fix(holder, "path")
            items[i] = holder["path"]
        else:
            fix(item, "path")
            fix(item, "image_root")
    for item in data.get("reward") or []:
        fix(item, "path")


def read_recipe(path: str | Path) -> dict:
    """A recipe file's mapping, or one line saying why it cannot be read (missing, a folder, not
    UTF-8, not YAML, not a mapping)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe {p} does not exist" if not p.exists() else f"recipe {p} is not a file")
    text = utf8_text(p.read_bytes(), f"recipe {p}", ConfigError)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        why = getattr(e, "problem", None) or " ".join(str(e).split())
        raise ConfigError(f"recipe {where}: invalid YAML ({why})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {p} must be a mapping of sections (model, data, reward, ...)")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    data: dict = {}
    if path is not None:
        p = Path(path)
        data = read_recipe(p)
        resolve_paths(data, p.parent.resolve())
    try:
        data = apply_overrides(data, overrides or [])
        cfg = from_dict(Config, data, "")
    except ConfigError as e:
        if "unknown config key" in str(e):
            bad = str(e).split("'")[1]
            close = difflib.get_close_matches(bad, _all_keys(Config), n=1)
            if close and "did you mean" not in str(e):
                raise ConfigError(f"unknown config key '{bad}'; did you mean '{close[0]}'?") from None
        raise
    return cfg


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def resolved_recipe(recipe: str | Path, overrides: list[str] | None = None) -> str:
    """``lmmr1 config``: the recipe as ``lmmr1 train`` will run it, as YAML that train accepts back.

    Every default is written out, overrides are applied and relative paths are made absolute (so the
    output means the same run wherever it is saved).  A pipeline keeps its ``output_dir``, base
    ``model``, ``synth`` (defaults filled in) and ``eval`` sections, and each stage is written as a
    complete config (minus its output_dir, which the pipeline derives from the stage's name).
    """
    from lmmr1.pipeline import deep_merge, is_pipeline, load_pipeline, stage_configs

    if not is_pipeline(recipe):
        cfg = load_config(recipe, overrides)
        cfg.validate()
        return yaml.safe_dump(to_dict(cfg), sort_keys=False)
    data = load_pipeline(recipe, overrides)
    base = {k: v for k, v in data.items() if k not in ("stages", "synth", "eval")}
    out: dict[str, Any] = {"output_dir": str(data.get("output_dir", Config.output_dir)),
                           "model": to_dict(from_dict(ModelConfig, data.get("model"), "model"))}
    if data.get("synth"):
        defaults = {"split": "train", "n": 100, "modality": "both", "seed": 0, "image_size": 112, "knobs": {}}
        out["synth"] = [{"suite": s.get("suite"), "name": s.get("name") or s.get("suite"), **defaults, **s}
                        for s in data["synth"]]
    if data.get("eval"):
        out["eval"] = data["eval"]
    stages = []
    for (name, cfg), raw in zip(stage_configs(data), data["stages"], strict=True):
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"stage '{name}': {e}") from None
        d = to_dict(cfg)
        d.pop("output_dir")
        merged = deep_merge(base, {k: v for k, v in raw.items() if k != "name"})
        for item, given in zip(d["data"], merged.get("data") or [], strict=False):
            path = given.get("path") if isinstance(given, dict) else given
            if isinstance(path, str) and path.startswith("synth:"):
                item["path"] = path  # keep the pipeline's own name for its generated data
        stages.append({"name": name, **d})
    out["stages"] = stages
    return yaml.safe_dump(out, sort_keys=False)
