"""The step's parts on Ray: ``distributed.train_workers`` FSDP2 ranks, ``rollout_workers`` samplers.

Same methods as trainer/executor.py's ``LocalExecutor``; the driver (``Trainer.train_step``) stays
the single controller and only ever sees whole tensors:

- ``sample``: the prompts are split into contiguous groups, one per rollout worker; each samples
  its prompts under their global indices (rollout/sampler.py seeds every row by them), so the
  tokens are those one process would sample; the driver stitches the rows back in order.
- ``logprobs`` / ``update``: every train worker gets the whole batch (one object in Ray's store)
  and runs its part of every micro-batch (shard_trainer.split_rows); log-probs come back in parts
  and are reassembled, update statistics are merged.
- ``after_update``: the ranks gather full tensors one at a time; rank 0 streams them in buckets
  to every rollout worker (``distributed.weight_sync_mb``).
- ``pull_state``: before a checkpoint, the gathered weights and optimizer state are copied into
  the driver's CPU copy of the policy, so checkpoints, ``final/`` and resume are the
  single-process ones (a run can resume with any number of workers).

A worker that dies ends the run with one line naming it and the last checkpoint; its peers,
blocked in a collective, are killed with the Ray session.
"""

from __future__ import annotations

import os
import socket

import torch

from lmmr1.errors import LmmR1Error
from lmmr1.models.processor import select_prompts
from lmmr1.rollout import Rollout
from lmmr1.trainer import checkpoint as ckpt

RAY_MISSING = ("distributed runs need Ray: pip install 'lmmr1[ray]' (or set distributed.train_workers=1 "
               "distributed.rollout_workers=1 to train in this process)")


def _connect(ray, address: str, timeout_s: float = 10.0) -> None:
    """Join an existing Ray cluster or fail in one line: Ray itself retries an unreachable address
    for minutes (a typo in the port looked like a hang), and reports a missing ``auto`` cluster
    with a traceback."""
    target = address.split("://", 1)[-1]
    if address != "auto":
        host, _, port = target.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                pass
        except (OSError, ValueError) as e:
            raise LmmR1Error(f"distributed.address={address}: no Ray cluster answers at {target} "
                             f"({e.strerror if isinstance(e, OSError) and e.strerror else e}); start one with "
                             "`ray start --head` there, or leave distributed.address empty for a local one") from None
    try:
        ray.init(address=address, log_to_driver=True)
    except Exception as e:  # ConnectionError (no cluster), RuntimeError/ValueError (a version or protocol mismatch)
        why = str(e).strip().splitlines()
        raise LmmR1Error(f"distributed.address={address}: could not join the Ray cluster "
                         f"({why[0] if why else type(e).__name__})") from None


class RayExecutor:
    def __init__(self, trainer, policy_path: str):
        try:
            import ray
        except ImportError:
            raise LmmR1Error(RAY_MISSING) from None
        from lmmr1.distributed.workers import RolloutWorker, TrainWorker

        self.ray, self.t, self.closed = ray, trainer, False
        self.train, self.rollout = [], []
        cfg, d = trainer.cfg, trainer.cfg.distributed
        W, M = d.train_workers, d.rollout_workers
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            if d.address:
                _connect(ray, d.address)
            else:  # a local cluster: logical CPUs for every worker even on a 2-core machine
                ray.init(num_cpus=max(os.cpu_count() or 1, (W + M) * d.cpus_per_worker),
                         include_dashboard=False, log_to_driver=True)
        gpus = d.gpus_per_worker if d.gpus_per_worker is not None else (
            1.0 if torch.cuda.is_available() and cfg.model.device in ("auto", "cuda") else 0.0)
        opts = dict(num_cpus=d.cpus_per_worker, num_gpus=gpus, max_restarts=0)
        threads = cfg.train.num_threads
        kill = os.environ.get("LMMR1_KILL_WORKER", "")  # tests: "train1@2" kills that worker at step 2
        self.train = [ray.remote(TrainWorker).options(**opts).remote(cfg, policy_path, r, W, threads, kill)
                      for r in range(W)]
        self.rollout = [ray.remote(RolloutWorker).options(**opts).remote(cfg, policy_path, i, threads, kill)
                        for i in range(M)]
        self.train_names = [f"train worker {r}" for r in range(W)]
        self.rollout_names = [f"rollout worker {i}" for i in range(M)]
        addr = self._wait([self.train[0].address.remote()], self.train_names[:1])[0]
        # the critic starts from the driver's weights (fresh, or restored from the checkpoint)
        critic = ray.put(trainer.critic.state_dict()) if trainer.critic is not None else None
        self._wait([w.setup.remote(addr, critic) for w in self.train], self.train_names)
        self._wait([w.pid.remote() for w in self.rollout], self.rollout_names)
        self._batch = (None, None)  # (StepBatch, its object ref): put once per step, not per mini-batch
        if trainer.resume_from is not None:  # the driver restored the checkpoint's optimizer state
            state = trainer.optimizer.state_dict()
            self._wait([w.load_optimizer_state.remote(state) for w in self.train], self.train_names)
            if trainer.critic_optimizer is not None:
                state = trainer.critic_optimizer.state_dict()
                self._wait([w.load_optimizer_state.remote(state, "critic") for w in self.train], self.train_names)

    # ------------------------------------------------------------------ the parts of a step
    def sample(self, prompts, params) -> Rollout:
        B, n = prompts.batch_size, params.n
        groups = [g.tolist() for g in torch.tensor_split(torch.arange(B), len(self.rollout)) if len(g)]
        futures = [w.sample.remote(select_prompts(prompts, ids), params, ids, self.t.step)
                   for w, ids in zip(self.rollout, groups, strict=False)]
        parts = self._wait(futures, self.rollout_names[: len(groups)])
        return Rollout(prompts=prompts, prompt_index=torch.arange(B).repeat_interleave(n),
                       completion_ids=torch.cat([p[0] for p in parts]), completion_mask=torch.cat([p[1] for p in parts]),
                       logprobs=torch.cat([p[2] for p in parts]), finish_reasons=[r for p in parts for r in p[3]],
                       texts=[x for p in parts for x in p[4]],
                       temperature=1.0 if params.temperature == 0 else params.temperature)

    def logprobs(self, which: str, ro: Rollout) -> torch.Tensor:
        ref = self.ray.put(ro)
        return self._in_row_order(ro, self._wait([w.logprobs.remote(which, ref, self.t.step) for w in self.train],
                                                 self.train_names))

    def values(self, ro: Rollout) -> torch.Tensor:
        ref = self.ray.put(ro)
        return self._in_row_order(ro, self._wait([w.values.remote(ref, self.t.step) for w in self.train],
                                                 self.train_names))

    def _in_row_order(self, ro: Rollout, outs: list[torch.Tensor]) -> torch.Tensor:
        """The ranks' parts of every micro-batch (shard_trainer.split_rows), back in row order."""
        from lmmr1.distributed.shard_trainer import shard_chunks, split_rows

        W, mb = len(self.train), self.t.cfg.train.micro_batch_size
        rows, pieces, at = torch.arange(ro.num_rows), [], [0] * W
        for chunk in shard_chunks(torch.split(rows, mb), W):
            for r in range(W):
                k = len(split_rows(chunk, r, W))
                pieces.append(outs[r][at[r] : at[r] + k])
                at[r] += k
        return torch.cat(pieces)

    def update(self, batch, mini: torch.Tensor, stats, *, measure_gap: bool) -> bool:
        from lmmr1.distributed.shard_trainer import merge_stats

        t = self.t
        if self._batch[0] is not batch:
            self._batch = (batch, self.ray.put(batch))
        lr = t.optimizer.param_groups[0]["lr"]
        critic_lr = t.critic_optimizer.param_groups[0]["lr"] if t.critic_optimizer is not None else None
        res = self._wait([w.update.remote(self._batch[1], mini, measure_gap, lr, t.kl.value, t.step,
                                          t.nonfinite_in_a_row, critic_lr) for w in self.train], self.train_names)
        merge_stats(stats, [r[1] for r in res])
        t.nonfinite_in_a_row = res[0][2]
        return res[0][0]

    def after_update(self) -> None:
        self._batch = (None, None)
        mb = self.t.cfg.distributed.weight_sync_mb
        self._wait([w.stream_weights.remote(self.rollout if r == 0 else [], int(mb * 2**20))
                    for r, w in enumerate(self.train)], self.train_names)

    def pull_state(self) -> None:
        t = self.t
        full = self._wait([w.full_state.remote() for w in self.train], self.train_names)[0]
        opt = self._wait([w.optimizer_state.remote() for w in self.train], self.train_names)[0]
        with torch.no_grad():
            for name, p in t.policy.model.state_dict().items():
                p.copy_(full[name])
        t.optimizer.load_state_dict({"state": opt["state"], "param_groups": t.optimizer.state_dict()["param_groups"]})
        if t.critic is not None:  # PPO's critic goes into the checkpoint the same way
            full = self._wait([w.full_state.remote("critic") for w in self.train], self.train_names)[0]
            opt = self._wait([w.optimizer_state.remote("critic") for w in self.train], self.train_names)[0]
            t.critic.load_state_dict(full)
            t.critic_optimizer.load_state_dict({"state": opt["state"],
                                                "param_groups": t.critic_optimizer.state_dict()["param_groups"]})

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in self.train + self.rollout:
            self.ray.kill(w)
        if self.owns_ray:
            self.ray.shutdown()

    # ------------------------------------------------------------------ failures
    def _wait(self, futures: list, names: list[str]) -> list:
        """Results in order; the first failure ends the wait (a dead rank leaves its peers blocked
        in a collective, so waiting for all of them would hang)."""
        from ray.exceptions import RayActorError, RayTaskError

        pending = dict(zip(futures, names, strict=True))
        done = {}
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            f = ready[0]
            try:
                done[f] = self.ray.get(f)
            except RayActorError:
                raise self._failed(f"{pending[f]} died") from None
            except RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, LmmR1Error):
                    raise LmmR1Error(str(cause)) from None
                why = str(cause or e).strip().splitlines()
                raise self._failed(f"{pending[f]} failed ({why[-1] if why else type(e).__name__})") from None
            del pending[f]
        return [done[f] for f in futures]

    def _failed(self, what: str) -> LmmR1Error:
        latest = ckpt.latest_checkpoint(self.t.out)
        where = f"last checkpoint {latest}; rerun the same command to resume from it" if latest else \
            "no checkpoint yet (train.save_every saves some); rerun the same command to start again"
        self.close()
        return LmmR1Error(f"{what} during step {self.t.step + 1}; {where}")
