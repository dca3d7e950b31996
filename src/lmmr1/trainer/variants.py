"""The trainer's side of the neighbouring papers' methods (docs/algorithms.md, "Variants").

The formulas are pure functions in ``lmmr1.algos`` (advantages.ema_grpo / observe_grpo, apo.py,
papo.py); this module only gathers what they need from a step (each row's task and correctness,
completion lengths, a masked copy of the images) and keeps the one piece of state (EMA-GRPO's
per-task moments), so that ``trainer.py`` calls four hooks and holds no variant logic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from lmmr1.algos.advantages import OBSERVE_SCALE
from lmmr1.algos.apo import dads_kl_weights, stcr_factors
from lmmr1.algos.ema import TaskMoments
from lmmr1.algos.objective import PapoTerm
from lmmr1.algos.papo import black_values, mask_patches
from lmmr1.trainer.config import CORRECTNESS_REWARDS, AlgoConfig


def correctness(components: dict[str, list[float | None]], name: str | None = None) -> torch.Tensor | None:
    """(N,) 1.0 where the correctness reward (``name``; by default accuracy_strict, else accuracy) gave
    >= 0.5, else 0.0 (a row it had no opinion on counts as wrong)."""
    for key in [name] if name else reversed(CORRECTNESS_REWARDS):
        if key in components:
            return torch.tensor([1.0 if v is not None and v >= 0.5 else 0.0 for v in components[key]])
    return None


class VariantHooks:
    def __init__(self, algo: AlgoConfig, group_size: int, processor: Any, correct_reward: str | None = None):
        self.a, self.n = algo, group_size
        self.correct_reward = correct_reward or algo.correct_reward  # config.correctness_reward(cfg)
        self.moments = TaskMoments()
        if algo.papo_coef > 0 and getattr(processor, "image_processor", None) is not None:
            ip = processor.image_processor
            self.black_of = lambda dim: black_values(ip.image_mean, ip.image_std, 3, dim)

    # ---------------------------------------------------------------- while scoring
    @staticmethod
    def bind_reask(reward, sample, processor, examples, images, ro, params) -> None:
        """ACRE's ``answer_consistency`` asks the policy again (greedy, same budget) after its own
        reasoning with the options reshuffled; bind it to this round's prompts before scoring.
        ``sample(prompts, params)`` is the executor's: the policy being trained, wherever it runs."""
        parts = [r for _, _, r in getattr(reward, "parts", []) if hasattr(r, "bind")]
        if not parts:
            return

        def reask(rows: list[int], follow_ups: list[list[dict]]) -> list[str]:
            p_idx = [int(ro.prompt_index[r]) for r in rows]
            msgs = [list(examples[p].messages) + f for p, f in zip(p_idx, follow_ups, strict=True)]
            prompts = processor(msgs, images=[images[p] for p in p_idx], row_names=[examples[p].source for p in p_idx])
            greedy = dataclasses.replace(params, n=1, temperature=0.0, seed=(params.seed or 0) + 1)
            return sample(prompts, greedy).texts

        for r in parts:
            r.bind(reask)

    # ---------------------------------------------------------------- before the advantages
    def prepare(self, batch, forward_no_grad: Callable, seed: int) -> dict[str, float]:
        """PAPO: black out patches of every image (seeded by the step) and compute log pi(.|q, I_mask)
        once, without gradient.  Sets ``batch.masked_rollout``, ``batch.papo_logp``, ``batch.image_rows``."""
        if not self.a.papo_coef > 0:
            return {}
        ro = batch.rollout
        per_prompt = torch.tensor([float(k > 0) for k in ro.prompts.images_per_row])
        batch.image_rows = per_prompt[ro.prompt_index.cpu()].to(batch.mask.device)
        pv = ro.prompts.pixel_values
        if pv is None:  # a text-only step: the term is 0 on every row
            return {"papo/image_rows_frac": 0.0, "papo/kl": 0.0, "papo/masked_patch_frac": 0.0}
        gen = torch.Generator().manual_seed(seed)
        masked, hit = mask_patches(pv, self.black_of(pv.shape[1]), gen)
        batch.masked_rollout = dataclasses.replace(ro, prompts=dataclasses.replace(ro.prompts, pixel_values=masked))
        batch.papo_logp = forward_no_grad(batch.masked_rollout)
        return {"papo/image_rows_frac": float(batch.image_rows.mean()), "papo/masked_patch_frac": float(hit.float().mean())}

    def estimator_kwargs(self, batch) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.a.advantage == "ema_grpo":
            kw["tasks"] = [str(s.fields.get("datasource", "")) for s in batch.samples]
            kw["moments"] = self.moments
        correct = correctness(batch.rewards.components, self.correct_reward)
        if correct is not None:
            kw["correct"] = correct.to(batch.mask.device)
        return kw

    # ---------------------------------------------------------------- after the advantages
    def after_advantages(self, batch) -> dict[str, float]:
        """STCR rescales the advantages; DADS sets ``batch.kl_weight``.  Returns metrics."""
        m: dict[str, float] = {}
        if self.a.advantage == "ema_grpo":
            for task, _ in self.moments.moments.items():
                m[f"ema/sigma/{task or 'default'}"] = self.moments.sigma(task)
        if not (self.a.stcr or self.a.dads or self.a.advantage == "observe_grpo"):
            return m
        correct = correctness(batch.rewards.components, self.correct_reward).to(batch.mask.device)
        if self.a.advantage == "observe_grpo":
            p = correct.view(-1, self.n).mean(-1)
            m["observe/group_acc_mean"] = float(p.mean())
            m["observe/weight_mean"] = float((OBSERVE_SCALE * p * (1 - p)).mean())
        if self.a.stcr:
            f = stcr_factors(correct, batch.rollout.lengths.to(batch.mask.device), self.n)
            batch.advantages = batch.advantages * f.unsqueeze(-1)
            m["stcr/scaled_frac"] = float((f > 1).float().mean())
            m["stcr/factor_max"] = float(f.max())
        if self.a.dads:
            batch.kl_weight = dads_kl_weights(batch.advantages, batch.mask, correct, self.n)
            m["dads/kl_weight_mean"] = float(batch.kl_weight.mean())
        return m

    # ---------------------------------------------------------------- in each micro-batch
    def objective_kwargs(self, batch, micro: torch.Tensor, masked_entropy: Callable) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if getattr(batch, "kl_weight", None) is not None:
            kw["kl_weight"] = batch.kl_weight[micro]
        if self.a.papo_coef > 0 and getattr(batch, "image_rows", None) is not None:
            logp = batch.papo_logp[micro] if batch.papo_logp is not None else None
            rows = batch.image_rows[micro]
            if logp is None:  # text-only step: KL(pi || pi) = 0 with these rows at 0
                return kw
            ment = masked_entropy(batch.masked_rollout, micro) if self.a.papo_masked_entropy_coef else None
            kw["papo"] = PapoTerm(masked_logp=logp, image_rows=rows, coef=self.a.papo_coef,
                                  entropy_coef=self.a.papo_entropy_coef, masked_entropy=ment,
                                  masked_entropy_coef=self.a.papo_masked_entropy_coef)
        return kw

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"ema": self.moments.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "ema" in state:
            self.moments.load_state_dict(state["ema"])
