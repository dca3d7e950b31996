"""The trainer's step parts, run by one rank of the FSDP2 process group.

``ShardTrainer`` is a :class:`~lmmr1.trainer.trainer.Trainer` without a run directory, data or
driver loop: it holds this rank's shards of the policy (and reference) model and its optimizer,
and inherits the very methods the single process runs (``_update``, ``_forward_all``,
``_logprobs`` ...), so there is one copy of the update maths.  It overrides only the four hooks
that say which rows are this rank's and how ranks agree:

- ``_shard_rows``: a micro-batch's rows are split into ``world`` contiguous parts
  (``split_rows``; a short last micro-batch first joins the one before, ``shard_chunks``), this
  rank runs its part (the driver reassembles in the same order);
- ``_logprobs``: runs through the FSDP root (fsdp.ShardedCall) so the root unit is gathered;
- ``_all_ranks_ok``: a non-finite loss on any rank skips the update on every rank;
- ``_shared_prefix``: every rank takes the same forward path (prompt once + completions, or one pass);
- ``_clip_grad_norm``: the global norm of sharded gradients, as a plain tensor;
- ``_critic_values``: PPO's value model runs through its own FSDP root (critic weights and their
  AdamW state are sharded like the policy's).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.distributed as dist

from lmmr1.algos import KLController, ObjectiveSettings
from lmmr1.distributed import fsdp
from lmmr1.models import load_model
from lmmr1.models.precision import resolve_precision
from lmmr1.trainer.batch import StepBatch, UpdateStats
from lmmr1.trainer.config import Config
from lmmr1.trainer.critic import Critic
from lmmr1.trainer.trainer import Trainer
from lmmr1.trainer.variants import VariantHooks


def split_rows(rows: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s part of ``rows``: ``world`` contiguous, near-equal parts (earlier ranks one
    longer); the driver concatenates the ranks' outputs in rank order to undo it."""
    return torch.tensor_split(rows, world)[rank]


def shard_chunks(chunks, world: int) -> list[torch.Tensor]:
    """The micro-batches as ranks run them: a last micro-batch with fewer rows than ranks joins the
    one before it, so no rank runs a forward without rows (every rank must take part in every
    FSDP collective).  Multi-turn steps need it: their number of turn rows varies per step.  The
    loss of a micro-batch is normalised by the whole mini-batch, so merging changes no number."""
    out = list(chunks)
    if len(out) > 1 and len(out[-1]) < world:
        out[-2:] = [torch.cat(out[-2:])]
    return out


class _Console:
    """Warnings of a rank go to its log (Ray forwards worker stdout to the driver's terminal)."""

    def print(self, *args, **kwargs) -> None:
        print(*args, flush=True)


class ShardTrainer(Trainer):
    def __init__(self, cfg: Config, policy_path: str, rank: int, world: int,  # noqa: D107 (no super: see module doc)
                 critic_state: dict | None = None):
        self.cfg, self.rank, self.world = cfg, rank, world
        m, a, d = cfg.model, cfg.algo, cfg.distributed
        self.device = torch.device("cuda", torch.cuda.current_device()) if (
            m.device in ("auto", "cuda") and torch.cuda.is_available()) else torch.device("cpu")
        self.precision = resolve_precision(m.dtype, m.compute_dtype, self.device)  # what the driver's Trainer uses
        dtype = self.precision.param
        self.mesh = fsdp.device_mesh(world, self.device)
        load_kw = dict(dtype=dtype, device=self.device, max_prompt_tokens=m.max_prompt_tokens)
        self.policy = load_model(policy_path, gradient_checkpointing=m.gradient_checkpointing,
                                 freeze_vision=m.freeze_vision, **load_kw)
        self.root = fsdp.shard(self.policy, self.mesh, cpu_offload=d.cpu_offload)
        self.sft = cfg.type == "sft"
        self.use_ref = not self.sft and (a.kl_coef > 0 or a.kl_target is not None)
        self.ref, self.ref_root = None, None
        if self.use_ref:
            self.ref = load_model(m.path, **load_kw)
            self.ref.model.requires_grad_(False).eval()
            self.ref_root = fsdp.shard(self.ref, self.mesh, cpu_offload=d.ref_offload or d.cpu_offload)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(fsdp.trainable(self.root), lr=o.lr, betas=tuple(o.betas),
                                           weight_decay=o.weight_decay)
        # PPO's critic: the driver's (fresh or resumed) weights, loaded before sharding so every rank
        # starts from the same full tensors; sharded and optimised exactly like the policy
        self.critic = self.critic_root = self.critic_optimizer = None
        self.critic_lr = a.critic_lr or o.lr * 10
        if a.advantage == "gae" and not self.sft:
            self.critic = Critic(load_model(m.path, **load_kw))
            if critic_state is not None:
                self.critic.load_state_dict(critic_state)
            self.critic_root = fsdp.shard(self.critic.lm, self.mesh, cpu_offload=d.cpu_offload, module=self.critic)
            self.critic_optimizer = torch.optim.AdamW(fsdp.trainable(self.critic_root), lr=self.critic_lr,
                                                      betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.objective = ObjectiveSettings(clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip,
                                           ratio_level=a.ratio_level, loss_agg=a.loss_agg,
                                           kl_estimator=a.kl_estimator, entropy_coef=a.entropy_coef)
        self.kl = KLController(a.kl_coef, a.kl_target, a.kl_horizon)
        self.console = _Console()
        self.variants = VariantHooks(a, cfg.rollout.n, self.policy.processor)  # the update's variant terms
        self.update_probe, self.unchanged_frac, self._rounding_warned = None, None, False
        self.step = 0
        self.nonfinite_in_a_row = 0

    # ------------------------------------------------------------ hooks of Trainer._update / _forward_all
    def _shard_rows(self, chunks):
        for rows in shard_chunks(chunks, self.world):
            yield split_rows(rows, self.rank, self.world)

    def _logprobs(self, lm, ro, rows, with_entropy: bool = False):
        root = self.root if lm is self.policy else self.ref_root
        return root(super()._logprobs, lm, ro, rows, with_entropy)

    def _shared_prefix(self, lm, prompt_index: torch.Tensor) -> bool:
        """One answer for all ranks: running each prompt once and then the completions over its
        cache is two passes through the layers (two all-gathers each), a plain forward one.  A rank
        whose rows share no prompt (turn rows of multi-turn episodes, or a micro-batch cut between
        groups) would otherwise take the other path and leave its peers waiting in a collective."""
        own = len(torch.unique(prompt_index)) < len(prompt_index) and not lm.activation_checkpointing
        flag = torch.tensor([1 if own else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _critic_values(self, ro, rows):
        return self.critic_root(super()._critic_values, ro, rows)

    def _all_ranks_ok(self, ok: bool) -> bool:
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self.device)  # NCCL: on the GPU
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _clip_grad_norm(self, params) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm)
        return fsdp._full(norm).detach().cpu()

    # ------------------------------------------------------------ what the driver calls
    def logprobs(self, which: str, ro) -> torch.Tensor:
        return self._forward_all(self.policy if which == "policy" else self.ref, ro).cpu()

    def values(self, ro) -> torch.Tensor:
        return self._values_all(ro).cpu()

    def update(self, batch: StepBatch, mini: torch.Tensor, measure_gap: bool, lr: float, kl_value: float,
               step: int, nonfinite_in_a_row: int, critic_lr: float | None = None) -> tuple[bool, UpdateStats, int]:
        """One optimizer step on rows ``mini`` (this rank runs its part of every micro-batch)."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.critic_optimizer is not None and critic_lr is not None:
            for g in self.critic_optimizer.param_groups:
                g["lr"] = critic_lr
        self.kl = SimpleNamespace(value=kl_value)
        self.step, self.nonfinite_in_a_row = step, nonfinite_in_a_row
        stats = UpdateStats()
        applied = self._update(batch, mini, stats, measure_gap=measure_gap)
        return applied, stats, self.nonfinite_in_a_row

    def full_tensors(self, which: str = "policy"):
        return fsdp.full_tensors(self.root if which == "policy" else self.critic_root)

    def optimizer_state(self, which: str = "policy") -> dict:
        if which == "policy":
            return fsdp.gather_optimizer_state(self.root, self.optimizer)
        return fsdp.gather_optimizer_state(self.critic_root, self.critic_optimizer)

    def load_optimizer_state(self, state: dict, which: str = "policy") -> None:
        if which == "policy":
            fsdp.load_optimizer_state(self.root, self.optimizer, state)
        else:
            fsdp.load_optimizer_state(self.critic_root, self.critic_optimizer, state)


def merge_stats(into: UpdateStats, parts: list[UpdateStats]) -> None:
    """One micro-batch's numbers from every rank → the single-process numbers: the losses and
    objective terms sum (each rank's part is normalised by the whole mini-batch); the gradient norm is global already;
    clip fraction and entropy are per-micro-batch means over ranks (each rank's own token mean);
    the log-prob gap is a max."""
    first = parts[0]
    into.grad_norm.extend(first.grad_norm)
    into.policy_loss.extend(sum(p.policy_loss[i] for p in parts) for i in range(len(first.policy_loss)))
    into.value_loss.extend(sum(p.value_loss[i] for p in parts) for i in range(len(first.value_loss)))
    for key, vals in first.terms.items():  # objective terms (PAPO's KL) are normalised like the loss: they sum
        into.terms.setdefault(key, []).extend(sum(p.terms[key][i] for p in parts) for i in range(len(vals)))
    for key in ("clip_frac", "entropy"):
        vals = [getattr(p, key) for p in parts]
        getattr(into, key).extend(sum(v[i] for v in vals) / len(vals) for i in range(min(map(len, vals))))
    into.skipped += first.skipped
    gaps = [p.logprob_gap for p in parts if not math.isnan(p.logprob_gap)]
    if gaps:
        into.logprob_gap = max([into.logprob_gap, *gaps])
