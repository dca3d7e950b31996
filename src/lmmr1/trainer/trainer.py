"""The RL trainer.  ``Trainer.train_step`` is the whole algorithm, in order:

    sample prompts -> rollout -> rewards (-> DAPO refill) -> old / reference log-probs, values
    -> advantages -> ppo_epochs x mini-batches of (micro-batched) updates -> metrics

Everything stateful (weights, optimizer, scheduler, data position, KL coefficient, RNG) is
saved in checkpoints; sampling and shuffling draw from generators seeded by (seed, step), so a
run killed and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lmmr1.algos import (
    KLController,
    ObjectiveSettings,
    aggregate,
    compute_advantages,
    groups_with_signal,
    kl_estimate,
    policy_objective,
    value_loss,
)
from lmmr1.data import DataConfig, MixtureSampler, PromptDataset, model_context_tokens
from lmmr1.errors import LmmR1Error
from lmmr1.models import LoraOptions, load_model
from lmmr1.models.precision import needs_recompute, resolve_precision
from lmmr1.models.sequence import completion_logprobs
from lmmr1.rewards import RewardResult, RewardSpec, Sample, check_rewards
from lmmr1.rollout import Rollout, SamplingParams
from lmmr1.rollout.episodes import play_episodes
from lmmr1.rollout.types import concat_rollouts
from lmmr1.trainer import checkpoint as ckpt
from lmmr1.trainer import rundir, sft
from lmmr1.trainer.batch import StepBatch, UpdateStats
from lmmr1.trainer.config import Config, correctness_reward, dump_config, to_dict
from lmmr1.trainer.critic import Critic
from lmmr1.trainer.executor import make_executor
from lmmr1.trainer.logging import RL_LEGEND, SFT_LEGEND, MetricsLogger, TeeConsole
from lmmr1.trainer.update_probe import ROUNDING_WARN_FRACTION, UpdateProbe, rounding_warning
from lmmr1.trainer.variants import VariantHooks


def _derived_seed(*parts: Any) -> int:
    """A stable 63-bit seed from (seed, step, purpose): independent of any global RNG state."""
    return random.Random(":".join(map(str, parts))).getrandbits(63)


def steps_for_passes(passes: float, rows: int, prompts_per_step: int) -> int:
    """Training steps that draw ``passes`` times over ``rows`` prompts (the last step may wrap into
    the next pass): how the reference scripts size a run (``--num_episodes 2``) instead of fixed steps."""
    return max(1, math.ceil(passes * rows / prompts_per_step))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _chunks(idx: torch.Tensor, size: int):
    for s in range(0, len(idx), size):
        yield idx[s : s + size]


class Trainer:
    def __init__(self, cfg: Config, console: Console | None = None):
        cfg.validate()
        self.cfg = cfg
        t = cfg.train
        # --- the run directory, checked before any model loads: writable, and not another recipe's run
        self.out = rundir.prepare_output_dir(Path(cfg.output_dir))
        rundir.claim(self.out, self._recipe_dict(), t.resume)
        self.console = TeeConsole(console or Console(stderr=True), self.out / "train.log")
        self.console.log_only(f"=== lmmr1 train, {time.strftime('%Y-%m-%d %H:%M:%S')} ===")
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        _seed_everything(t.seed)
        # rewards before models: a broken reward file must fail in a second, not after the model loads
        self.reward = None if cfg.type == "sft" or cfg.episode.turns else check_rewards([RewardSpec(**asdict(r)) for r in cfg.reward])

        # --- models: policy, reference only when a KL term is used, critic only for GAE
        m = cfg.model
        self.device = torch.device("cuda" if m.device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if m.device == "auto" else m.device))
        # one precision for every forward: fp32 master weights + bf16 autocast on a GPU by default
        self.precision = resolve_precision(m.dtype, m.compute_dtype, self.device)
        dtype = self.precision.param
        lora = LoraOptions(r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout,
                           target_modules=tuple(m.lora_target_modules)) if m.lora_r > 0 else None
        load_kw = dict(dtype=dtype, device=self.device, max_prompt_tokens=m.max_prompt_tokens)
        if not m.path:  # model.tiny: a deterministic offline test model, built once per run directory
            from lmmr1.models import make_tiny

            base = self.out / "base_model"
            if not (base / "config.json").exists():
                make_tiny(base, size=m.tiny, seed=m.tiny_seed)
            m.path = str(base)
        self.resume_from = self._find_resume()
        # read (and check) the training state before loading models: a bad checkpoint fails fast
        self._resume_state = ckpt.load_state(self.resume_from) if self.resume_from is not None else None
        policy_path = m.path
        if self.resume_from is not None and lora is None:
            policy_path = str(self.resume_from / "model")  # exact weights of the checkpoint
        distributed = cfg.distributed.enabled  # workers hold the models; the driver a CPU copy for checkpoints
        self.policy = load_model(policy_path, gradient_checkpointing=m.gradient_checkpointing,
                                 freeze_vision=m.freeze_vision, lora=lora,
                                 **{**load_kw, "device": torch.device("cpu")} if distributed else load_kw)
        self.processor = self.policy.processor
        a = cfg.algo
        self.sft = cfg.type == "sft"
        self.use_ref = not self.sft and (a.kl_coef > 0 or a.kl_target is not None)
        self.ref = load_model(m.path, **load_kw) if self.use_ref and not distributed else None
        if self.ref is not None:
            self.ref.model.requires_grad_(False).eval()
        self.critic = Critic(load_model(m.path, **{**load_kw, "device": torch.device("cpu")} if distributed else load_kw)
                             ) if a.advantage == "gae" and not self.sft else None

        # --- data and rewards
        self.datasets = []
        for d in cfg.data:
            ds = PromptDataset.load(DataConfig(path=d.path, input_key=d.input_key, label_key=d.label_key,
                                               image_key=d.image_key, system_prompt=d.system_prompt,
                                               skip_invalid=d.skip_invalid, max_pixels=d.max_pixels,
                                               max_prompt_tokens=m.max_prompt_tokens, name=d.name,
                                               image_root=d.image_root))
            ds.check_prompt_lengths(self.processor, context_tokens=model_context_tokens(m.path))
            self.datasets.append(ds)
        if t.data_passes > 0:  # the run's length in passes over the data (before the lr schedule is built)
            t.steps = steps_for_passes(t.data_passes, sum(len(d) for d in self.datasets), t.prompts_per_step)
        probs = [d.prob for d in cfg.data]
        self.mixer = MixtureSampler([len(d) for d in self.datasets],
                                    None if all(p is None for p in probs) else [p or 0.0 for p in probs], seed=t.seed)

        # --- optimisation
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.critic_optimizer = None
        self.critic_lr = a.critic_lr or o.lr * 10  # scaled by the policy's schedule every step (train_step)
        if self.critic is not None:  # backbone + value head (see critic.py), same decay as the policy
            self.critic_optimizer = torch.optim.AdamW(self.critic.trainable_parameters(), lr=self.critic_lr,
                                                      betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.objective = ObjectiveSettings(clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip,
                                           ratio_level=a.ratio_level, loss_agg=a.loss_agg,
                                           kl_estimator=a.kl_estimator, entropy_coef=a.entropy_coef)
        self.kl = KLController(a.kl_coef, a.kl_target, a.kl_horizon)
        # low-precision weights: measure whether updates round away (update_probe.py); fp32 needs no probe
        self.update_probe = UpdateProbe(params, seed=t.seed) if self.precision.param != torch.float32 else None
        self.unchanged_frac: float | None = None
        self._rounding_warned = False
        # EMA-GRPO, Observe-R1, APO, PAPO
        self.variants = VariantHooks(a, cfg.rollout.n, self.processor, correctness_reward(cfg))
        self.step = 0
        self.nonfinite_in_a_row = 0
        if self.resume_from is not None:
            self._restore(self.resume_from)
        self.executor = make_executor(self, policy_path)  # who runs the step's parts (trainer/executor.py)

    # ------------------------------------------------------------------ schedule
    def _lr_lambda(self, step: int) -> float:
        o, total = self.cfg.optim, max(1, self.cfg.train.steps)
        warm = o.warmup_steps or math.ceil(o.warmup_ratio * total)  # the reference rounds up too
        if warm and step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _advance_schedule(self) -> None:
        """One schedule step per training step, also when every update of the step was skipped
        (non-finite) or nothing had signal: the schedule follows steps, not successful updates, so
        torch's "scheduler before optimizer" warning is expected there and silenced."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before",
                                    category=UserWarning)
            self.scheduler.step()

    def _amp(self):
        return self.precision.autocast()

    # ------------------------------------------------------------------ rollout
    def _rollout_round(self, n_prompts: int, round_: int) -> tuple[Rollout, list, Any]:
        picks = self.mixer.take(n_prompts)
        examples = [self.datasets[d][i] for d, i in picks]
        images = [ex.images(self.cfg.data[d].max_pixels) for (d, _), ex in zip(picks, examples, strict=True)]
        prompts = self.processor([ex.messages for ex in examples], images=images,
                                 row_names=[ex.source for ex in examples])
        r = self.cfg.rollout
        params = SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                max_new_tokens=r.max_new_tokens, stop=list(r.stop),
                                seed=_derived_seed(self.cfg.train.seed, self.step, "rollout", round_),
                                max_rows_in_flight=r.max_rows_in_flight, max_tokens_in_flight=r.max_tokens_in_flight)
        ro = self.executor.sample(prompts, params)
        lengths = ro.lengths.tolist()
        samples = []
        for row in range(ro.num_rows):  # what reward functions of every framework expect (rewards/base.py)
            p = int(ro.prompt_index[row])
            ex, dcfg = examples[p], self.cfg.data[picks[p][0]]
            samples.append(Sample(completion=ro.texts[row], answer=ex.answer, prompt=ex.prompt_text(),
                                  fields={**ex.fields, "datasource": ex.datasource}, completion_tokens=lengths[row],
                                  chat_prompt=prompts.texts[p], messages=ex.messages, source=ex.source,
                                  columns={dcfg.label_key: ex.answer}))
        self.variants.bind_reask(self.reward, self.executor.sample, self.processor, examples, images, ro, params)
        return ro, examples, (samples, self.reward(samples))

    def collect(self) -> tuple[Rollout, list, list, Any, dict]:
        """Rollout + rewards; with dynamic sampling, only groups with reward variance are kept."""
        a, t, n = self.cfg.algo, self.cfg.train, self.cfg.rollout.n
        want = t.prompts_per_step
        if self.cfg.episode.turns:  # env rows played turn by turn: one row per turn (rollout/episodes.py)
            return self._episode_round(want)
        if not a.dynamic_sampling:
            ro, examples, (samples, res) = self._rollout_round(want, 0)
            return ro, examples, samples, res, {}
        kept: list[tuple[Rollout, list, list, Any]] = []
        have, drawn, rounds = 0, 0, 0
        while have < want and rounds < a.max_sampling_rounds:
            ro, examples, (samples, res) = self._rollout_round(want, rounds)
            rounds += 1
            drawn += want
            scores = torch.tensor([0.0 if v is None else v for v in res.total])
            good = groups_with_signal(scores, n).nonzero().squeeze(-1).tolist()[: want - have]
            if good:
                rows = [p * n + k for p in good for k in range(n)]
                sub = ro.select_prompts(good)
                kept.append((sub, [examples[p] for p in good], [samples[r] for r in rows],
                             _select_result(res, rows)))
                have += len(good)
        stats = {"dynamic/rounds": rounds, "dynamic/kept_frac": have / max(1, drawn),
                 "dynamic/filled_frac": have / want}
        if not kept:
            return None, [], [], None, stats
        ro = concat_rollouts([k[0] for k in kept], self.processor.pad_token_id)
        res = _concat_results([k[3] for k in kept])
        return ro, [e for k in kept for e in k[1]], [s for k in kept for s in k[2]], res, stats

    def _episode_round(self, n_prompts: int) -> tuple[Rollout, list, list, Any, dict]:
        picks = self.mixer.take(n_prompts)
        examples = [self.datasets[d][i] for d, i in picks]
        images = [ex.images(self.cfg.data[d].max_pixels) for (d, _), ex in zip(picks, examples, strict=True)]
        r = self.cfg.rollout
        params = SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                max_new_tokens=r.max_new_tokens, stop=list(r.stop),
                                seed=_derived_seed(self.cfg.train.seed, self.step, "rollout", 0))
        eb = play_episodes(self.policy, examples, images, self.cfg.episode, params, self.executor.sample)
        samples, res = eb.samples_and_rewards(examples)
        return eb.rollout, examples, samples, res, eb.stats()

    # ------------------------------------------------------------------ log-probs
    def _logprobs(self, lm, ro: Rollout, rows: torch.Tensor, with_entropy: bool = False):
        with self._amp():
            return completion_logprobs(lm, ro.prompts, ro.prompt_index[rows], ro.completion_ids[rows],
                                       ro.completion_mask[rows], temperature=ro.temperature,
                                       with_entropy=with_entropy,
                                       entropy_grad=self.cfg.algo.entropy_coef > 0,  # else only a metric
                                       chunk_tokens=self.cfg.train.logprob_chunk_tokens,
                                       shared_prefix=self._shared_prefix(lm, ro.prompt_index[rows]))

    @torch.no_grad()
    def _forward_all(self, lm, ro: Rollout) -> torch.Tensor:
        rows = torch.arange(ro.num_rows, device=ro.completion_ids.device)
        return torch.cat([self._logprobs(lm, ro, mb)[0]
                          for mb in self._shard_rows(_chunks(rows, self.cfg.train.micro_batch_size))])

    def _critic_values(self, ro: Rollout, rows: torch.Tensor) -> torch.Tensor:
        """V(s_t) of the rows' completion tokens, fp32 (a hook: FSDP ranks run it through the critic's root)."""
        with self._amp():
            return self.critic.values(ro.prompts, ro.prompt_index[rows], ro.completion_ids[rows],
                                      ro.completion_mask[rows],
                                      shared_prefix=self._shared_prefix(self.critic.lm, ro.prompt_index[rows])).float()

    @torch.no_grad()
    def _values_all(self, ro: Rollout) -> torch.Tensor:
        rows = torch.arange(ro.num_rows, device=ro.completion_ids.device)
        return torch.cat([self._critic_values(ro, mb)
                          for mb in self._shard_rows(_chunks(rows, self.cfg.train.micro_batch_size))])

    # ------------------------------------------------------------------ the step
    def train_step(self) -> dict[str, Any]:
        cfg, a, t = self.cfg, self.cfg.algo, self.cfg.train
        t0 = time.perf_counter()
        self.policy.model.eval()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step's updates use (logged as lr)

        # 1-2. rollout and rule rewards
        ro, examples, samples, res, extra = self.collect()
        t_rollout = time.perf_counter() - t0
        if ro is None:  # dynamic sampling found no group with signal: nothing to learn from
            self._advance_schedule()
            self.step += 1
            return {"step": self.step, "skipped_no_signal": 1, **extra}
        mask = ro.completion_mask
        scores = torch.tensor([0.0 if v is None else float(v) for v in res.total], device=mask.device)

        # 3. old / reference log-probs and values (no grad)
        t1 = time.perf_counter()
        recompute = needs_recompute(t.old_logprobs, self.precision)  # auto: whenever compute is not fp32
        old_logp = self.executor.logprobs("policy", ro) if recompute else ro.logprobs
        ref_logp = self.executor.logprobs("ref", ro) if self.use_ref else None
        kl_tok = kl_estimate(old_logp, ref_logp, a.kl_estimator) * mask if ref_logp is not None else torch.zeros_like(mask)
        batch = StepBatch(ro, examples, samples, res, scores, old_logp, ref_logp, kl_tok,
                          values=self.executor.values(ro) if self.critic is not None else None)

        # 4. advantages
        kl_rewards = -self.kl.value * kl_tok if (self.use_ref and a.kl_in_reward) else torch.zeros_like(mask)
        extra.update(self.variants.prepare(batch, lambda r: self.executor.logprobs("policy", r),
                                           _derived_seed(t.seed, self.step, "papo")))
        batch.advantages, batch.returns = compute_advantages(a.advantage, scores, kl_rewards, mask, cfg.rollout.n,
                                                             values=batch.values, gamma=a.gamma, lam=a.lam, eps=a.eps,
                                                             **self.variants.estimator_kwargs(batch),
                                                             turns=ro.turns, omega=cfg.episode.gigpo_omega)
        extra.update(self.variants.after_advantages(batch))

        # 5. policy (and critic) updates: ppo_epochs x mini-batches, each accumulated over micro-batches
        self.policy.model.train()
        if self.critic_optimizer is not None:  # the critic follows the policy's warm-up / cosine schedule
            for group in self.critic_optimizer.param_groups:
                group["lr"] = self.critic_lr * self._lr_lambda(self.step)
        N = ro.num_rows
        mb_size = t.mini_batch_size or N
        gen = torch.Generator().manual_seed(_derived_seed(t.seed, self.step, "shuffle"))
        stats = UpdateStats()
        measure_gap = not recompute
        if recompute:  # the recomputed old log-probs already measure the rollout/train mismatch, all rows
            stats.logprob_gap = float(((old_logp - ro.logprobs).abs() * mask).max())
        for _epoch in range(t.ppo_epochs):
            order = torch.randperm(N, generator=gen) if (t.ppo_epochs > 1 or mb_size < N) else torch.arange(N)
            for mini in _chunks(order.to(mask.device), mb_size):
                if self.executor.update(batch, mini, stats, measure_gap=measure_gap):
                    measure_gap = False  # from now on a gap would measure the update, not a mismatch
        self._advance_schedule()
        self.executor.after_update()  # distributed: new weights to the rollout workers
        self.kl.update(float(kl_tok.sum() / mask.sum().clamp(min=1)), N)
        t_update = time.perf_counter() - t1
        self.step += 1
        dt = time.perf_counter() - t0
        return self._metrics(batch, stats, extra, lr, t_rollout, t_update, dt)

    def _update(self, batch: StepBatch, mini: torch.Tensor, stats: UpdateStats, *, measure_gap: bool) -> bool:
        """One optimizer step on the rows ``mini``, gradients accumulated over micro-batches.

        Returns whether the step was applied; a non-finite loss or gradient skips it (and stops the
        run after ``train.max_nonfinite_steps`` in a row).  ``measure_gap``: record how far the
        training forward is from the sampling log-probs (only meaningful before any update).
        """
        a, t = self.cfg.algo, self.cfg.train
        ro, mask = batch.rollout, batch.mask
        m_mini = mask[mini]
        norm = dict(num_tokens=float(m_mini.sum()), num_seqs=float(len(mini)), max_len=self.cfg.rollout.max_new_tokens)
        kl_coef = 0.0 if a.kl_in_reward else self.kl.value  # with kl_in_reward the KL already shaped the rewards
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        policy_loss = value_loss_sum = 0.0  # sums over micro-batches = this mini-batch's losses
        finite = True
        for micro in self._shard_rows(_chunks(mini, t.micro_batch_size)):
            m = mask[micro]
            logp, ent = self._logprobs(self.policy, ro, micro, with_entropy=True)
            if measure_gap:  # before this step's first optimizer step: a pure rollout/train mismatch
                gap = ((logp.detach() - ro.logprobs[micro]).abs() * m).max().item()
                stats.logprob_gap = max(stats.logprob_gap, gap)
            ref = batch.ref_logp[micro] if batch.ref_logp is not None else None
            out = policy_objective(logp, batch.old_logp[micro], batch.advantages[micro], m, self.objective,
                                   ref_logp=ref, kl_coef=kl_coef, entropy=ent, **norm,
                                   **self.variants.objective_kwargs(
                                       batch, micro, lambda r, rows: self._logprobs(self.policy, r, rows, True)[1]))
            for k, v in out.terms.items():
                stats.terms.setdefault(k, []).append(v)
            if not self._all_ranks_ok(bool(torch.isfinite(out.loss))):
                finite = False
                break
            out.loss.backward()
            policy_loss += float(out.loss.detach())
            stats.clip_frac.append((out.clipped.float().sum() / m.sum().clamp(min=1)).item())
            stats.entropy.append(float((ent.detach() * m).sum() / m.sum().clamp(min=1)))
            if self.critic is not None:
                value_loss_sum += self._critic_backward(batch, micro, norm["num_tokens"])
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        gnorm = self._clip_grad_norm(params) if finite else torch.tensor(float("nan"))
        if not finite or not torch.isfinite(gnorm):
            self.optimizer.zero_grad(set_to_none=True)
            stats.skipped += 1
            self.nonfinite_in_a_row += 1
            self.console.print(f"[yellow]step {self.step + 1}: non-finite loss or gradient; update skipped[/]")
            if self.nonfinite_in_a_row >= t.max_nonfinite_steps:
                raise LmmR1Error(f"{self.nonfinite_in_a_row} updates in a row had a non-finite loss or gradient; "
                                 "stopping. Lower optim.lr, raise optim.max_grad_norm discipline, or check the data")
            return False
        self.nonfinite_in_a_row = 0
        stats.grad_norm.append(float(gnorm))
        stats.policy_loss.append(policy_loss)
        if self.update_probe is not None:
            self.update_probe.before_step()
        self.optimizer.step()
        if self.update_probe is not None:
            self._check_rounding(self.update_probe.unchanged_fraction())
        if self.critic_optimizer is not None:
            stats.value_loss.append(value_loss_sum)
            vnorm = self._clip_grad_norm(self.critic.trainable_parameters())
            if torch.isfinite(vnorm):  # a non-finite value gradient must not poison the critic
                self.critic_optimizer.step()
        return True

    def _check_rounding(self, fraction: float | None) -> None:
        """Log the unchanged fraction; warn once when most updates of low-precision weights round away."""
        self.unchanged_frac = fraction
        if fraction is not None and fraction > ROUNDING_WARN_FRACTION and not self._rounding_warned:
            self._rounding_warned = True
            name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.precision.param, str(self.precision.param))
            self.console.print(f"[yellow]warning:[/] {rounding_warning(fraction, self.optimizer.param_groups[0]['lr'], name)}",
                               highlight=False, soft_wrap=True)

    # Hooks for distributed/shard_trainer.py: one process runs every row and agrees with itself.
    def _shared_prefix(self, lm, prompt_index: torch.Tensor) -> bool | None:
        """Whether the forward runs each prompt once for all its rows (None: the rows decide, models.sequence)."""
        return None

    def _shard_rows(self, chunks):
        """The rows of each micro-batch this process runs (all of them here)."""
        return chunks

    def _all_ranks_ok(self, ok: bool) -> bool:
        return ok

    def _clip_grad_norm(self, params) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm)

    def _critic_backward(self, batch: StepBatch, micro: torch.Tensor, num_tokens: float) -> float:
        """Clipped value loss of one micro-batch (token mean over the mini-batch), back-propagated."""
        a, m = self.cfg.algo, batch.mask[micro]
        v = self._critic_values(batch.rollout, micro)
        vl = a.vf_coef * aggregate(value_loss(v, batch.values[micro], batch.returns[micro], m, clip=a.value_clip), m,
                                   "token_mean", num_tokens=num_tokens)
        vl.backward()
        return float(vl.detach())

    def _metrics(self, batch: StepBatch, stats: UpdateStats, extra: dict, lr: float, t_rollout: float,
                 t_update: float, dt: float) -> dict:
        ro, res, samples, scores, mask = batch.rollout, batch.rewards, batch.samples, batch.scores, batch.mask
        lengths = ro.lengths.float()
        n_tok = float(mask.sum())
        m: dict[str, Any] = {
            "step": self.step,
            "reward/mean": float(scores.mean()),
            "reward/std": float(scores.std()) if scores.numel() > 1 else 0.0,
        }
        for name, vals in res.components.items():
            got = [v for v in vals if v is not None]
            m[f"reward/{name}/mean"] = sum(got) / len(got) if got else 0.0
        if "accuracy" in res.components:
            m["accuracy/mean"] = m["reward/accuracy/mean"]
        by_source: dict[str, list[float]] = {}
        for s, sc in zip(samples, scores.tolist(), strict=True):
            by_source.setdefault(str(s.fields.get("datasource", "")), []).append(sc)
        if len(by_source) > 1:
            for src, vals in by_source.items():
                m[f"reward/by_source/{src}"] = sum(vals) / len(vals)
        m.update({
            "reward/error_rows": res.num_errors,
            "prompt_length/mean": float(ro.prompts.attention_mask.sum(-1).float().mean()),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response/truncated_frac": sum(f == "length" for f in ro.finish_reasons) / ro.num_rows,
            "kl": float(batch.kl_tok.sum() / max(n_tok, 1.0)),
            "kl_coef": self.kl.value,
            "entropy": stats.mean(stats.entropy),
            "clip_frac": stats.mean(stats.clip_frac),
            "loss/policy": stats.mean(stats.policy_loss, float("nan")),
            "grad_norm": stats.mean(stats.grad_norm, float("nan")),
            "lr": lr,
            "logprob_gap/max": stats.logprob_gap,
            "skipped_updates": stats.skipped,
            **({"update/unchanged_frac": self.unchanged_frac} if self.unchanged_frac is not None else {}),
            "time/rollout_s": t_rollout,
            "time/update_s": t_update,
            "time/step_s": dt,
            "tokens_per_s": n_tok / dt if dt > 0 else 0.0,
        })
        if stats.value_loss:
            m["loss/value"] = stats.mean(stats.value_loss)
        for k, v in (self.reward.stats() if self.reward is not None else {}).items():
            m[f"reward/{k}"] = v
        m.update({k: stats.mean(v) for k, v in stats.terms.items()})
        m.update(extra)
        m["_samples"] = [
            {"step": self.step, "source": str(samples[r].fields.get("datasource", "")), "prompt": samples[r].prompt,
             "completion": samples[r].completion, "answer": samples[r].answer, "reward": res.total[r],
             "rewards": {k: v[r] for k, v in res.components.items()}, "finish_reason": ro.finish_reasons[r]}
            for r in range(min(self.cfg.train.log_samples, ro.num_rows))
        ]
        return m

    # ------------------------------------------------------------------ supervised (cold start)
    def sft_step(self) -> dict[str, Any]:
        """One SFT step (the pieces are in trainer/sft.py): token-mean NLL of the assistant response
        given the prompt, computed by the same teacher-forced forward RL uses."""
        t = self.cfg.train
        t0 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step's update uses (logged as lr)
        picks = self.mixer.take(t.prompts_per_step)
        examples = [self.datasets[d][i] for d, i in picks]
        targets = sft.response_targets(self.processor, examples, [self.cfg.data[d].response_key for d, _ in picks])
        images = [ex.images(self.cfg.data[d].max_pixels) for (d, _), ex in zip(picks, examples, strict=True)]
        prompts = self.processor([ex.messages for ex in examples], images=images,
                                 row_names=[ex.source for ex in examples]).to(self.device)
        ids, mask = sft.pad_targets(targets, self.processor.pad_token_id, self.device)
        self.policy.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses = sft.nll_backward(self.policy, prompts, ids, mask, micro_batch_size=t.micro_batch_size,
                                  chunk_tokens=t.logprob_chunk_tokens, amp=self._amp)
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        gnorm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm)
        skipped = 0
        if torch.isfinite(gnorm) and all(math.isfinite(x) for x in losses):
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
        else:
            skipped = 1
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= t.max_nonfinite_steps:
                raise LmmR1Error(f"{self.nonfinite_in_a_row} SFT updates in a row were non-finite; stopping")
        self._advance_schedule()
        self.step += 1
        dt = time.perf_counter() - t0
        n_tok = float(mask.sum())
        return {"step": self.step, "loss/sft": sum(losses), "grad_norm": float(gnorm), "lr": lr,
                "response_length/mean": n_tok / len(targets), "skipped_updates": skipped, "time/step_s": dt,
                "tokens_per_s": n_tok / dt}

    # ------------------------------------------------------------------ checkpoints
    def _recipe_dict(self) -> dict:
        """The config as config.yaml will record it (model.tiny resolves to output_dir/base_model)."""
        d = to_dict(self.cfg)
        if not d["model"].get("path") and d["model"].get("tiny"):
            d["model"]["path"] = str(self.out / "base_model")
        return d

    def _find_resume(self) -> Path | None:
        r = self.cfg.train.resume
        if r in (None, "", "none", "false", False, "overwrite"):
            return None
        if r == "auto":
            return ckpt.latest_checkpoint(self.out)
        p = Path(r).expanduser()
        if not p.is_dir():
            raise LmmR1Error(f"train.resume={r}: no such checkpoint directory (use auto, none, overwrite, or "
                             "a path like OUTPUT_DIR/checkpoints/step_000100)")
        if not (p / "COMPLETE").exists():
            raise LmmR1Error(f"train.resume={r}: not a complete lmmr1 checkpoint (no COMPLETE marker; it was "
                             "interrupted while being written): pick an earlier checkpoint")
        return p

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; saved as safetensors + JSON (checkpoint.py), never pickled."""
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "data": self.mixer.state_dict(),
            "kl": self.kl.state_dict(),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "variants": self.variants.state_dict(),
        }
        if hasattr(self.policy.model, "get_base_model"):  # LoRA: the adapter weights themselves
            state["lora"] = {k: v for k, v in self.policy.model.state_dict().items() if "lora_" in k}
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def _restore(self, path: Path) -> None:
        state = self._resume_state if self._resume_state is not None else ckpt.load_state(path)
        self._resume_state = None
        where = path / ckpt.STATE_JSON
        try:
            self.step = int(state["step"])
            if "lora" in state:
                self.policy.model.load_state_dict(state["lora"], strict=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.mixer.load_state_dict(state["data"])
            self.kl.load_state_dict(state["kl"])
            self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
            self.variants.load_state_dict(state.get("variants", {}))
            if self.critic is not None:
                if "critic" not in state:
                    raise KeyError("critic")
                self.critic.load_state_dict(state["critic"])
                self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            ckpt.set_rng_state(state["rng"])
        except KeyError as e:
            raise ckpt.CheckpointError(f"{where}: the trainer state has no {e}; the checkpoint is incomplete or from "
                                       "another kind of run (delete it, or train.resume=none in a new output_dir)") from None
        except (ValueError, RuntimeError, TypeError, IndexError) as e:
            raise ckpt.CheckpointError(f"{where} does not fit this run ({str(e).splitlines()[0]}); resume with the "
                                       "recipe that wrote it, or start a new output_dir") from None
        self.console.print(f"resumed from {path} (step {self.step})")

    def save(self) -> Path:
        self.executor.pull_state()  # distributed: the workers' weights and optimizer state into this process
        path = ckpt.checkpoint_dir(self.out, self.step)
        ckpt.save_checkpoint(path, self.policy.save_pretrained, self.state_dict(), self.cfg.train.keep_checkpoints)
        return path

    def _startup_summary(self) -> None:
        """What this run is about to do, printed once (and kept in train.log)."""
        cfg, say = self.cfg, self.console.print
        params = list(self.policy.model.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        def count(n: int) -> str:
            return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"

        say(f"model: {cfg.model.path} ({self.policy.model_type}, {count(total)} parameters, "
            f"{count(trainable)} trainable{', LoRA' if cfg.model.lora_r > 0 else ''}) on {self.device}, "
            f"{self.precision.describe()}",
            markup=False, highlight=False)
        say("data: " + ", ".join(f"{ds.name} {len(ds)} rows" + (f" (p={d.prob})" if d.prob is not None else "")
                                 for ds, d in zip(self.datasets, cfg.data, strict=True)), markup=False, highlight=False)
        a = cfg.algo
        if self.sft:
            say(f"algo: sft, lr {cfg.optim.lr:g}", highlight=False)
        else:
            say("rewards: " + ", ".join(f"{r.name or r.path or r.url} x{1.0 if r.weight is None else r.weight:g}"
                                        for r in cfg.reward), markup=False, highlight=False)
            say(f"algo: {a.advantage}, loss_agg {a.loss_agg}, ratio {a.ratio_level}, clip "
                f"[{a.clip_low:g}, {a.clip_high:g}], kl_coef {a.kl_coef:g}{' (in reward)' if a.kl_in_reward else ''}, "
                f"rollout.n {cfg.rollout.n}, lr {cfg.optim.lr:g}", highlight=False)
        start = f"resuming from {self.resume_from} (step {self.step})" if self.resume_from else "a new run from step 0"
        say(f"output_dir: {self.out}; {start}; {cfg.train.steps} steps", markup=False, highlight=False)
        say(SFT_LEGEND if self.sft else RL_LEGEND, markup=False, highlight=False, style="dim")

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Run to ``train.steps``.  Ctrl-C finishes the step in progress, saves a complete checkpoint,
        prints the command that resumes, and re-raises KeyboardInterrupt (a second Ctrl-C stops at
        once without saving)."""
        t = self.cfg.train
        start = self.step
        dump_config(self.cfg, self.out / "config.yaml")
        logger = MetricsLogger(self.out, tensorboard=t.tensorboard, wandb=t.wandb, wandb_project=t.wandb_project,
                               wandb_run_name=t.wandb_run_name, wandb_entity=t.wandb_entity,
                               config=asdict(self.cfg), console=self.console, start_step=start)
        if logger.removed_rows:
            self.console.print(f"metrics.jsonl: removed {logger.removed_rows} rows after step {start} "
                               "(they are replayed now)", highlight=False)
        self._startup_summary()
        last: dict[str, Any] = {}
        die_at = int(os.environ.get("LMMR1_KILL_AT_STEP", "0"))  # tests: SIGKILL before this step starts
        progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        interrupted = {"asked": False, "told": False, "closing": False}

        def on_sigint(signum, frame):
            if interrupted["closing"]:  # already stopping: let the metrics, logs and workers close cleanly
                return
            if interrupted["asked"]:
                raise KeyboardInterrupt
            interrupted["asked"] = True
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self.console.print(f"[yellow]{what}: finishing step {self.step + 1}, then saving a checkpoint "
                               "(Ctrl-C again stops now without saving)[/]", highlight=False)

        previous = _install_sigint(on_sigint)
        try:
            with progress:
                task = progress.add_task("train", total=t.steps, completed=self.step)
                while self.step < t.steps and not interrupted["asked"]:
                    if die_at and self.step + 1 == die_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    m = self.sft_step() if self.sft else self.train_step()
                    samples = m.pop("_samples", [])
                    logger.log(m)
                    logger.log_samples(samples)
                    if "reward/mean" in m or "loss/sft" in m:
                        progress.console.print(logger.summary_line(m), highlight=False, soft_wrap=True)
                    progress.update(task, completed=self.step)
                    last = m
                    if t.save_every and self.step % t.save_every == 0 and self.step < t.steps:
                        self.save()
            if interrupted["asked"]:
                done = ckpt.checkpoint_dir(self.out, self.step)
                if self.step > 0 and not (done / "COMPLETE").exists():
                    done = self.save()
                where = f"checkpoint {done}" if (done / "COMPLETE").exists() else "nothing to save yet"
                self.console.print(f"interrupted after step {self.step} ({where}); resume with: "
                                   f"{rundir.resume_command()}", markup=False, highlight=False, soft_wrap=True)
                interrupted["told"] = True
                raise KeyboardInterrupt
            self.save()
            self.policy.save_pretrained(self.out / "final", lora_save=self.cfg.model.lora_save)
        except KeyboardInterrupt:
            if not interrupted["told"]:
                latest = ckpt.latest_checkpoint(self.out)
                self.console.print(f"stopped without saving at step {self.step}; last checkpoint: {latest or 'none'}; "
                                   f"resume with: {rundir.resume_command()}", markup=False, highlight=False,
                                   soft_wrap=True)
            raise
        except Exception as e:
            self.console.log_only(f"error: {e}")  # the command line prints it; train.log keeps it too
            raise
        finally:
            interrupted["closing"] = True
            try:
                self.executor.close()
                logger.close()
                if self.reward is not None:
                    self.reward.close()
                if sys.exc_info()[0] is not None:  # failed or interrupted: train.log is complete now
                    self.console.close()
            finally:
                _restore_sigint(previous)
        self.console.print(f"done: {self.step} steps; final model in {self.out / 'final'}", highlight=False)
        self.console.close()
        return last


def _install_sigint(handler) -> dict:
    """Ctrl-C, and SIGTERM (how cluster schedulers preempt a job), handled by ``handler`` while
    training; only possible in the main thread (elsewhere Python's defaults stay)."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_sigint(previous: dict) -> None:
    for sig, handler in previous.items():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(sig, handler)


def _select_result(res: RewardResult, rows: list[int]) -> RewardResult:
    return RewardResult(total=[res.total[r] for r in rows],
                        components={k: [v[r] for r in rows] for k, v in res.components.items()},
                        errors=[res.errors[r] for r in rows])


def _concat_results(parts: list[RewardResult]) -> RewardResult:
    return RewardResult(total=[v for p in parts for v in p.total],
                        components={k: [v for p in parts for v in p.components[k]] for k in parts[0].components},
                        errors=[e for p in parts for e in p.errors])


def train(cfg: Config, console: Console | None = None) -> dict[str, Any]:
    return Trainer(cfg, console).train()
