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
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lmmr1.algos import (
    KLController,
    aggregate,
    compute_advantages,
    groups_with_signal,
    kl_estimate,
    ppo_clip_loss,
    value_loss,
)
from lmmr1.data import DataConfig, MixtureSampler, PromptDataset, model_context_tokens
from lmmr1.errors import LmmR1Error
from lmmr1.models import LoraOptions, load_model
from lmmr1.models.sequence import completion_logprobs
from lmmr1.rewards import CompositeReward, RewardResult, RewardSpec, Sample
from lmmr1.rollout import Rollout, SamplingParams, sample
from lmmr1.rollout.types import concat_rollouts
from lmmr1.trainer import checkpoint as ckpt
from lmmr1.trainer.config import Config, dump_config
from lmmr1.trainer.critic import Critic
from lmmr1.trainer.logging import MetricsLogger


def _derived_seed(*parts: Any) -> int:
    """A stable 63-bit seed from (seed, step, purpose): independent of any global RNG state."""
    return random.Random(":".join(map(str, parts))).getrandbits(63)


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
        self.console = console or Console(stderr=True)
        t = cfg.train
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        _seed_everything(t.seed)
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)

        # --- models: policy, reference only when a KL term is used, critic only for GAE
        m = cfg.model
        self.device = torch.device("cuda" if m.device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if m.device == "auto" else m.device))
        # On GPU: fp32 master weights + bf16 autocast; on CPU: plain fp32.
        self.autocast = self.device.type == "cuda" and m.dtype == "auto"
        dtype = "float32" if m.dtype == "auto" else m.dtype
        lora = LoraOptions(r=m.lora_r, alpha=m.lora_alpha) if m.lora_r > 0 else None
        load_kw = dict(dtype=dtype, device=self.device, max_prompt_tokens=m.max_prompt_tokens)
        if not m.path:  # model.tiny: a deterministic offline test model, built once per run directory
            from lmmr1.models import make_tiny

            base = self.out / "base_model"
            if not (base / "config.json").exists():
                make_tiny(base, size=m.tiny, seed=m.tiny_seed)
            m.path = str(base)
        self.resume_from = self._find_resume()
        policy_path = m.path
        if self.resume_from is not None and lora is None:
            policy_path = str(self.resume_from / "model")  # exact weights of the checkpoint
        self.policy = load_model(policy_path, gradient_checkpointing=m.gradient_checkpointing,
                                 freeze_vision=m.freeze_vision, lora=lora, **load_kw)
        self.processor = self.policy.processor
        a = cfg.algo
        self.sft = cfg.type == "sft"
        self.use_ref = not self.sft and (a.kl_coef > 0 or a.kl_target is not None)
        self.ref = load_model(m.path, **load_kw) if self.use_ref else None
        if self.ref is not None:
            self.ref.model.requires_grad_(False).eval()
        self.critic = Critic(load_model(m.path, **load_kw)) if a.advantage == "gae" and not self.sft else None

        # --- data and rewards
        self.datasets = []
        for d in cfg.data:
            ds = PromptDataset.load(DataConfig(path=d.path, input_key=d.input_key, label_key=d.label_key,
                                               image_key=d.image_key, system_prompt=d.system_prompt,
                                               skip_invalid=d.skip_invalid, max_pixels=d.max_pixels,
                                               max_prompt_tokens=m.max_prompt_tokens, name=d.name))
            ds.check_prompt_lengths(self.processor, context_tokens=model_context_tokens(m.path))
            self.datasets.append(ds)
        probs = [d.prob for d in cfg.data]
        self.mixer = MixtureSampler([len(d) for d in self.datasets],
                                    None if all(p is None for p in probs) else [p or 0.0 for p in probs], seed=t.seed)
        self.reward = None if self.sft else CompositeReward([RewardSpec(**asdict(r)) for r in cfg.reward])

        # --- optimisation
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.critic_optimizer = None
        if self.critic is not None:
            self.critic_optimizer = torch.optim.AdamW(self.critic.trainable_parameters(),
                                                      lr=a.critic_lr or o.lr * 10, betas=tuple(o.betas))
        self.kl = KLController(a.kl_coef, a.kl_target, a.kl_horizon)
        self.step = 0
        self.nonfinite_in_a_row = 0
        if self.resume_from is not None:
            self._restore(self.resume_from)

    # ------------------------------------------------------------------ schedule
    def _lr_lambda(self, step: int) -> float:
        o, total = self.cfg.optim, max(1, self.cfg.train.steps)
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _amp(self):
        if self.autocast:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

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
                                seed=_derived_seed(self.cfg.train.seed, self.step, "rollout", round_))
        with self._amp():
            ro = sample(self.policy, prompts, params)
        lengths = ro.lengths.tolist()
        samples = []
        for row in range(ro.num_rows):
            ex = examples[int(ro.prompt_index[row])]
            samples.append(Sample(completion=ro.texts[row], answer=ex.answer, prompt=ex.prompt_text(),
                                  fields={**ex.fields, "datasource": ex.datasource}, completion_tokens=lengths[row]))
        return ro, examples, (samples, self.reward(samples))

    def collect(self) -> tuple[Rollout, list, list, Any, dict]:
        """Rollout + rewards; with dynamic sampling, only groups with reward variance are kept."""
        a, t, n = self.cfg.algo, self.cfg.train, self.cfg.rollout.n
        want = t.prompts_per_step
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

    # ------------------------------------------------------------------ log-probs
    def _logprobs(self, lm, ro: Rollout, rows: torch.Tensor, with_entropy: bool = False):
        with self._amp():
            return completion_logprobs(lm, ro.prompts, ro.prompt_index[rows], ro.completion_ids[rows],
                                       ro.completion_mask[rows], temperature=ro.temperature,
                                       with_entropy=with_entropy,
                                       chunk_tokens=self.cfg.train.logprob_chunk_tokens)

    @torch.no_grad()
    def _forward_all(self, lm, ro: Rollout) -> torch.Tensor:
        rows = torch.arange(ro.num_rows, device=ro.completion_ids.device)
        return torch.cat([self._logprobs(lm, ro, mb)[0] for mb in _chunks(rows, self.cfg.train.micro_batch_size)])

    @torch.no_grad()
    def _values_all(self, ro: Rollout) -> torch.Tensor:
        rows = torch.arange(ro.num_rows, device=ro.completion_ids.device)
        out = []
        for mb in _chunks(rows, self.cfg.train.micro_batch_size):
            with self._amp():
                out.append(self.critic.values(ro.prompts, ro.prompt_index[mb], ro.completion_ids[mb],
                                              ro.completion_mask[mb]).float())
        return torch.cat(out)

    # ------------------------------------------------------------------ the step
    def train_step(self) -> dict[str, Any]:
        cfg, a, t = self.cfg, self.cfg.algo, self.cfg.train
        t0 = time.perf_counter()
        self.policy.model.eval()

        # 1-2. rollout and rule rewards
        ro, examples, samples, res, extra = self.collect()
        t_rollout = time.perf_counter() - t0
        if ro is None:  # dynamic sampling found no group with signal: nothing to learn from
            self.scheduler.step()
            self.step += 1
            return {"step": self.step, "skipped_no_signal": 1, **extra}
        mask = ro.completion_mask
        scores = torch.tensor([0.0 if v is None else float(v) for v in res.total], device=mask.device)

        # 3. old / reference log-probs and values (no grad)
        t1 = time.perf_counter()
        recompute = t.old_logprobs == "recompute" or (t.old_logprobs == "auto" and self.policy.dtype != torch.float32)
        old_logp = self._forward_all(self.policy, ro) if recompute else ro.logprobs
        ref_logp = self._forward_all(self.ref, ro) if self.ref is not None else None
        kl_tok = kl_estimate(old_logp, ref_logp, a.kl_estimator) * mask if ref_logp is not None else torch.zeros_like(mask)
        kl_rewards = -self.kl.value * kl_tok if (self.use_ref and a.kl_in_reward) else torch.zeros_like(mask)
        values = self._values_all(ro) if self.critic is not None else None

        # 4. advantages
        adv, returns = compute_advantages(a.advantage, scores, kl_rewards, mask, cfg.rollout.n, values=values,
                                          gamma=a.gamma, lam=a.lam, eps=a.eps)

        # 5. policy (and critic) updates
        self.policy.model.train()
        N = ro.num_rows
        mb_size = t.mini_batch_size or N
        gen = torch.Generator().manual_seed(_derived_seed(t.seed, self.step, "shuffle"))
        stats = {"clip": [], "ent": [], "gap": 0.0, "loss": [], "vloss": [], "gnorm": [], "skipped": 0,
                 "updated": False}
        if recompute:  # the recomputed old log-probs already measure the rollout/train mismatch, all rows
            stats["gap"] = float(((old_logp - ro.logprobs).abs() * mask).max())
            stats["updated"] = True
        for epoch in range(t.ppo_epochs):
            order = torch.randperm(N, generator=gen) if (t.ppo_epochs > 1 or mb_size < N) else torch.arange(N)
            for mini in _chunks(order.to(mask.device), mb_size):
                self._update(ro, mini, mask, old_logp, ref_logp, adv, returns, values, epoch, stats)
        self.scheduler.step()
        self.kl.update(float(kl_tok.sum() / mask.sum().clamp(min=1)), N)
        t_update = time.perf_counter() - t1
        self.step += 1
        dt = time.perf_counter() - t0
        return self._metrics(ro, res, samples, scores, mask, kl_tok, stats, extra, t_rollout, t_update, dt)

    def _update(self, ro, mini, mask, old_logp, ref_logp, adv, returns, values, epoch, stats) -> None:
        a, t = self.cfg.algo, self.cfg.train
        m_mini = mask[mini]
        num_tokens, num_seqs = float(m_mini.sum()), float(len(mini))
        agg = dict(num_tokens=num_tokens, num_seqs=num_seqs, max_len=self.cfg.rollout.max_new_tokens)
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        finite = True
        for micro in _chunks(mini, t.micro_batch_size):
            m = mask[micro]
            logp, ent = self._logprobs(self.policy, ro, micro, with_entropy=True)
            if not stats["updated"]:  # before this step's first optimizer step: a pure rollout/train mismatch
                gap = ((logp.detach() - ro.logprobs[micro]).abs() * m).max().item()
                stats["gap"] = max(stats["gap"], gap)
            out = ppo_clip_loss(logp, old_logp[micro], adv[micro], m, clip_low=a.clip_low, clip_high=a.clip_high,
                                dual_clip=a.dual_clip, ratio_level=a.ratio_level)
            loss = aggregate(out.loss, m, a.loss_agg, **agg)
            if ref_logp is not None and not a.kl_in_reward and self.kl.value > 0:
                loss = loss + self.kl.value * aggregate(kl_estimate(logp, ref_logp[micro], a.kl_estimator), m,
                                                        a.loss_agg, **agg)
            if a.entropy_coef:
                loss = loss - a.entropy_coef * aggregate(ent, m, a.loss_agg, **agg)
            if not torch.isfinite(loss):
                finite = False
                break
            loss.backward()
            stats["loss"].append(float(loss.detach()))
            stats["clip"].append((out.clipped.float().sum() / m.sum().clamp(min=1)).item())
            stats["ent"].append(float((ent.detach() * m).sum() / m.sum().clamp(min=1)))
            if self.critic is not None:
                with self._amp():
                    v = self.critic.values(ro.prompts, ro.prompt_index[micro], ro.completion_ids[micro], m).float()
                vl = a.vf_coef * aggregate(value_loss(v, values[micro], returns[micro], m, clip=a.value_clip), m,
                                           "token_mean", num_tokens=num_tokens)
                vl.backward()
                stats["vloss"].append(float(vl.detach()))
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        gnorm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm) if finite else torch.tensor(float("nan"))
        if not finite or not torch.isfinite(gnorm):
            self.optimizer.zero_grad(set_to_none=True)
            stats["skipped"] += 1
            self.nonfinite_in_a_row += 1
            self.console.print(f"[yellow]step {self.step + 1}: non-finite loss or gradient; update skipped[/]")
            if self.nonfinite_in_a_row >= t.max_nonfinite_steps:
                raise LmmR1Error(f"{self.nonfinite_in_a_row} updates in a row had a non-finite loss or gradient; "
                                 "stopping. Lower optim.lr, raise optim.max_grad_norm discipline, or check the data")
            return
        self.nonfinite_in_a_row = 0
        stats["gnorm"].append(float(gnorm))
        self.optimizer.step()
        stats["updated"] = True
        if self.critic_optimizer is not None:
            torch.nn.utils.clip_grad_norm_(self.critic.trainable_parameters(), self.cfg.optim.max_grad_norm)
            self.critic_optimizer.step()

    def _metrics(self, ro, res, samples, scores, mask, kl_tok, stats, extra, t_rollout, t_update, dt) -> dict:
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
            "kl": float(kl_tok.sum() / max(n_tok, 1.0)),
            "kl_coef": self.kl.value,
            "entropy": float(np.mean(stats["ent"])) if stats["ent"] else 0.0,
            "clip_frac": float(np.mean(stats["clip"])) if stats["clip"] else 0.0,
            "loss/policy": float(np.mean(stats["loss"])) if stats["loss"] else float("nan"),
            "grad_norm": float(np.mean(stats["gnorm"])) if stats["gnorm"] else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "logprob_gap/max": stats["gap"],
            "skipped_updates": stats["skipped"],
            "time/rollout_s": t_rollout,
            "time/update_s": t_update,
            "time/step_s": dt,
            "tokens_per_s": n_tok / dt if dt > 0 else 0.0,
        })
        if stats["vloss"]:
            m["loss/value"] = float(np.mean(stats["vloss"]))
        for k, v in self.reward.stats().items():
            m[f"reward/{k}"] = v
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
        """One SFT step: token-mean NLL of the assistant response given the prompt (loss on the
        response tokens only), computed by the same teacher-forced forward RL uses."""
        t = self.cfg.train
        t0 = time.perf_counter()
        picks = self.mixer.take(t.prompts_per_step)
        examples = [self.datasets[d][i] for d, i in picks]
        targets = []
        end = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        for (d, _), ex in zip(picks, examples, strict=True):
            key = self.cfg.data[d].response_key
            resp = ex.fields.get(key)
            if not isinstance(resp, str) or not resp.strip():
                raise LmmR1Error(f"{ex.source}: SFT needs field '{key}' (the assistant's reply); it is missing or empty")
            targets.append(self.processor.encode_text(resp) + [end])
        images = [ex.images(self.cfg.data[d].max_pixels) for (d, _), ex in zip(picks, examples, strict=True)]
        prompts = self.processor([ex.messages for ex in examples], images=images,
                                 row_names=[ex.source for ex in examples]).to(self.device)
        T = max(len(x) for x in targets)
        ids = torch.full((len(targets), T), self.processor.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(targets), T), dtype=torch.float32, device=self.device)
        for i, x in enumerate(targets):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1.0
        self.policy.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n_tok = float(mask.sum())
        rows = torch.arange(len(targets), device=self.device)
        losses = []
        for micro in _chunks(rows, t.micro_batch_size):
            with self._amp():
                lp, _ = completion_logprobs(self.policy, prompts, micro, ids[micro], mask[micro],
                                           chunk_tokens=t.logprob_chunk_tokens)
            loss = -(lp * mask[micro]).sum() / n_tok
            loss.backward()
            losses.append(float(loss.detach()))
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
        self.scheduler.step()
        self.step += 1
        dt = time.perf_counter() - t0
        return {"step": self.step, "loss/sft": sum(losses), "grad_norm": float(gnorm),
                "lr": self.optimizer.param_groups[0]["lr"], "response_length/mean": n_tok / len(targets),
                "skipped_updates": skipped, "time/step_s": dt, "tokens_per_s": n_tok / dt}

    # ------------------------------------------------------------------ checkpoints
    def _find_resume(self) -> Path | None:
        r = self.cfg.train.resume
        if r in (None, "", "none", "false", False):
            return None
        if r == "auto":
            return ckpt.latest_checkpoint(Path(self.cfg.output_dir))
        p = Path(r)
        if not (p / "COMPLETE").exists():
            raise LmmR1Error(f"train.resume={r}: not a complete lmmr1 checkpoint (no COMPLETE marker)")
        return p

    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "data": self.mixer.state_dict(),
            "kl": self.kl.state_dict(),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }
        if hasattr(self.policy.model, "get_base_model"):  # LoRA: the adapter weights themselves
            state["lora"] = {k: v for k, v in self.policy.model.state_dict().items() if "lora_" in k}
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def _restore(self, path: Path) -> None:
        state = ckpt.load_state(path)
        self.step = int(state["step"])
        if "lora" in state:
            self.policy.model.load_state_dict(state["lora"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.mixer.load_state_dict(state["data"])
        self.kl.load_state_dict(state["kl"])
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        if self.critic is not None and "critic" in state:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        ckpt.set_rng_state(state["rng"])
        self.console.print(f"resumed from {path} (step {self.step})")

    def save(self) -> Path:
        path = ckpt.checkpoint_dir(self.out, self.step)
        ckpt.save_checkpoint(path, self.policy.save_pretrained, self.state_dict(), self.cfg.train.keep_checkpoints)
        return path

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        t = self.cfg.train
        dump_config(self.cfg, self.out / "config.yaml")
        logger = MetricsLogger(self.out, tensorboard=t.tensorboard, wandb=t.wandb, wandb_project=t.wandb_project,
                               config=asdict(self.cfg), console=self.console)
        last: dict[str, Any] = {}
        die_at = int(os.environ.get("LMMR1_KILL_AT_STEP", "0"))  # tests: SIGKILL before this step starts
        progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        try:
            with progress:
                task = progress.add_task("train", total=t.steps, completed=self.step)
                while self.step < t.steps:
                    if die_at and self.step + 1 == die_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    m = self.sft_step() if self.sft else self.train_step()
                    samples = m.pop("_samples", [])
                    logger.log(m)
                    logger.log_samples(samples)
                    if "reward/mean" in m or "loss/sft" in m:
                        progress.console.print(logger.summary_line(m), highlight=False)
                    progress.update(task, completed=self.step)
                    last = m
                    if t.save_every and self.step % t.save_every == 0 and self.step < t.steps:
                        self.save()
            self.save()
            self.policy.save_pretrained(self.out / "final")
        finally:
            logger.close()
            if self.reward is not None:
                self.reward.close()
        self.console.print(f"done: {self.step} steps; final model in {self.out / 'final'}")
        return last


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
