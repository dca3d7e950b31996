"""The Ray actors: FSDP2 train workers (one rank each) and rollout workers (a sampler each).

Plain classes here; ``ray_executor`` turns them into actors with ``ray.remote``.  Tests can make
a worker kill itself (``kill`` = "train1@2": train worker 1 dies with SIGKILL when asked to work
on step 2), which is how a lost node looks to the driver.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import fields, is_dataclass

import torch

from lmmr1.trainer.config import Config


def _to(obj, dev: torch.device):
    """A Rollout / StepBatch with every tensor (and its PromptBatch) on ``dev``; as is on CPU."""
    if dev.type == "cpu" or obj is None:
        return obj
    if torch.is_tensor(obj) or hasattr(obj, "to"):  # tensors and PromptBatch
        return obj.to(dev)
    if is_dataclass(obj):
        for f in fields(obj):
            v = getattr(obj, f.name)
            if torch.is_tensor(v) or is_dataclass(v):
                setattr(obj, f.name, _to(v, dev))
    return obj


class _Killable:
    name = ""

    def _maybe_die(self, step: int) -> None:
        """``step``: the 1-based step being worked on (the driver's ``Trainer.step`` + 1)."""
        if self.kill == f"{self.name}@{step}":
            os.kill(os.getpid(), signal.SIGKILL)


class TrainWorker(_Killable):
    """One rank: joins the process group in ``setup``, then runs ShardTrainer's parts."""

    def __init__(self, cfg: Config, policy_path: str, rank: int, world: int, threads: int, kill: str = ""):
        self.cfg, self.policy_path, self.rank, self.world, self.kill = cfg, policy_path, rank, world, kill
        self.name = f"train{rank}"
        if threads > 0:
            torch.set_num_threads(threads)
        self.t = None

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for the process group (a free port on this node)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return socket.gethostbyname(socket.gethostname()), port

    def setup(self, addr: tuple[str, int], critic_state: dict | None = None) -> int:
        import torch.distributed as dist

        from lmmr1.distributed.shard_trainer import ShardTrainer

        use_cuda = torch.cuda.is_available() and self.cfg.model.device in ("auto", "cuda")
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method=f"tcp://{addr[0]}:{addr[1]}",
                                rank=self.rank, world_size=self.world)
        self.t = ShardTrainer(self.cfg, self.policy_path, self.rank, self.world, critic_state=critic_state)
        return os.getpid()

    def logprobs(self, which: str, ro, step: int) -> torch.Tensor:
        self._maybe_die(step + 1)
        return self.t.logprobs(which, _to(ro, self.t.device))

    def values(self, ro, step: int) -> torch.Tensor:
        self._maybe_die(step + 1)
        return self.t.values(_to(ro, self.t.device))

    def update(self, batch, mini, measure_gap: bool, lr: float, kl_value: float, step: int, nonfinite: int,
               critic_lr: float | None = None):
        self._maybe_die(step + 1)
        return self.t.update(_to(batch, self.t.device), mini.to(self.t.device), measure_gap, lr, kl_value, step,
                             nonfinite, critic_lr)

    def stream_weights(self, targets: list, bucket_bytes: int) -> int:
        """Gather full tensors one by one (every rank takes part) and send them from rank 0 to the
        rollout workers in buckets of about ``bucket_bytes``; returns the bytes sent per worker."""
        import ray

        bucket, size, sent = {}, 0, 0

        def flush():
            nonlocal bucket, size
            if bucket and targets:
                ref = ray.put(bucket)
                ray.get([w.load_weights.remote(ref) for w in targets])
            bucket, size = {}, 0

        for name, t in self.t.full_tensors():
            if self.rank != 0:
                continue
            bucket[name] = t
            size += t.numel() * t.element_size()
            sent += t.numel() * t.element_size()
            if size >= bucket_bytes:
                flush()
        flush()
        return sent

    def full_state(self, which: str = "policy") -> dict | None:
        """The full state dict of the policy (or "critic") on rank 0 (None elsewhere): for checkpoints."""
        out = {name: t for name, t in self.t.full_tensors(which)}
        return out if self.rank == 0 else None

    def optimizer_state(self, which: str = "policy") -> dict | None:
        state = self.t.optimizer_state(which)
        return state if self.rank == 0 else None

    def load_optimizer_state(self, state: dict, which: str = "policy") -> None:
        self.t.load_optimizer_state(state, which)

    def pid(self) -> int:
        return os.getpid()


class RolloutWorker(_Killable):
    """A full copy of the policy for sampling; its weights are replaced after each update."""

    def __init__(self, cfg: Config, policy_path: str, index: int, threads: int, kill: str = ""):
        from lmmr1.models import load_model

        self.cfg, self.kill, self.name = cfg, kill, f"rollout{index}"
        if threads > 0:
            torch.set_num_threads(threads)
        m = cfg.model
        dev = torch.device("cuda" if torch.cuda.is_available() and m.device in ("auto", "cuda") else "cpu")
        from lmmr1.models.precision import resolve_precision

        self.precision = resolve_precision(m.dtype, m.compute_dtype, dev)  # the driver's meaning of dtype/compute
        self.lm = load_model(policy_path, dtype=self.precision.param, device=dev,
                             max_prompt_tokens=m.max_prompt_tokens)
        self.lm.model.requires_grad_(False)
        self.params = dict(self.lm.model.state_dict())

    def sample(self, prompts, params, prompt_ids: list[int], step: int):
        from lmmr1.rollout import sample

        self._maybe_die(step + 1)
        with self.precision.autocast():
            ro = sample(self.lm, prompts, params, prompt_ids=prompt_ids)
        return ro.completion_ids.cpu(), ro.completion_mask.cpu(), ro.logprobs.cpu(), ro.finish_reasons, ro.texts

    @torch.no_grad()
    def load_weights(self, bucket: dict) -> None:
        for name, t in bucket.items():
            self.params[name].copy_(t)

    def pid(self) -> int:
        return os.getpid()
