"""Who executes the parts of a step: this process (``LocalExecutor``) or Ray workers.

``Trainer.train_step`` is the single controller: it reads rollout -> rewards -> log-probs ->
advantages -> update in that order and calls an executor for the parts that touch a model.  Both
executors have the same methods; the local one runs the trainer's own methods in this process,
``lmmr1.distributed.ray_executor.RayExecutor`` runs them on FSDP2 train workers and data-parallel
rollout workers (docs/distributed.md).  The step never asks which one it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lmmr1.rollout import Rollout, SamplingParams, sample

if TYPE_CHECKING:
    from lmmr1.models.processor import PromptBatch
    from lmmr1.trainer.batch import StepBatch, UpdateStats
    from lmmr1.trainer.trainer import Trainer


class LocalExecutor:
    """Every part in the trainer's process, on its models (the path of a run without ``distributed``)."""

    def __init__(self, trainer: Trainer):
        self.t = trainer

    def sample(self, prompts: PromptBatch, params: SamplingParams) -> Rollout:
        with self.t._amp():
            return sample(self.t.policy, prompts, params)

    def logprobs(self, which: str, ro: Rollout) -> torch.Tensor:
        """Log-probs of the rollout's completions under ``which`` model: "policy" or "ref"."""
        return self.t._forward_all(self.t.policy if which == "policy" else self.t.ref, ro)

    def values(self, ro: Rollout) -> torch.Tensor:
        return self.t._values_all(ro)

    def update(self, batch: StepBatch, mini: torch.Tensor, stats: UpdateStats, *, measure_gap: bool) -> bool:
        return self.t._update(batch, mini, stats, measure_gap=measure_gap)

    def after_update(self) -> None:
        """Nothing to do: the sampler uses the weights just updated."""

    def pull_state(self) -> None:
        """Nothing to do: the trainer's policy and optimizer are the trained ones."""

    def close(self) -> None:
        pass


def make_executor(trainer: Trainer, policy_path: str):
    d = trainer.cfg.distributed
    if not d.enabled:
        return LocalExecutor(trainer)
    from lmmr1.distributed.ray_executor import RayExecutor  # Ray is imported only by distributed runs

    return RayExecutor(trainer, policy_path)
