"""FSDP2 (``fully_shard``) for a :class:`LoadedModel`, and full tensors out of / into the shards.

``LoadedModel`` never calls the Hugging Face model's own ``forward``: it calls the language model,
the vision tower and the LM head separately (see models/loader.py).  FSDP2 gathers a unit's
parameters in that unit's forward hooks, so the model is wrapped in :class:`ShardedCall`, a
module whose ``forward(fn, *args)`` just runs ``fn``: its hooks gather the root unit (embeddings,
tied LM head, final norm, the vision tower) around any computation, and each text decoder layer
is its own unit, gathered only while it runs.  Gradients are *summed* over ranks (divide factor
1): every rank's loss is already normalised by the whole mini-batch (algos.policy_objective), so
the sum is the single-process gradient.  Ranks whose rows have no image leave the vision tower
without gradients; ``set_reduce_scatter_unused_params`` makes FSDP reduce zeros for those, so a
mixed text/image batch keeps every rank's collectives in step (DESIGN.md §5).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lmmr1.models.loader import LoadedModel


class ShardedCall(nn.Module):
    """The FSDP root: ``forward(fn, *args, **kw)`` returns ``fn(*args, **kw)`` with the root unit
    gathered (and, under autograd, its gradients reduce-scattered after backward)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args, **kwargs):
        return fn(*args, **kwargs)


def device_mesh(world_size: int, device: torch.device):
    """A 1-D mesh over the process group; on CPU an explicit "cpu" mesh (gloo + fully_shard without
    one can crash on machines that also have CUDA, pytorch#132471)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cuda" if device.type == "cuda" else "cpu", (world_size,))


def shard(lm: LoadedModel, mesh, *, cpu_offload: bool = False, module: nn.Module | None = None) -> ShardedCall:
    """Wrap ``lm.model`` (or ``module``, a module holding ``lm``'s layers, e.g. the critic with its
    value head) in place: one FSDP unit per text decoder layer, the rest in the root unit.

    ``cpu_offload`` (FSDP2 CPUOffloadPolicy: shards, gradients and optimizer step in pinned CPU
    memory) only means something when the model runs on a GPU; on CPU it is a no-op.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    offload = CPUOffloadPolicy() if cpu_offload and lm.device.type == "cuda" else OffloadPolicy()
    for layer in lm.language_model.layers:
        fully_shard(layer, mesh=mesh, offload_policy=offload)
    root = ShardedCall(lm.model if module is None else module)
    fully_shard(root, mesh=mesh, offload_policy=offload)
    from torch.distributed.fsdp import FSDPModule

    for mod in root.modules():
        if isinstance(mod, FSDPModule):
            mod.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
            mod.set_gradient_divide_factor(1.0)
    root.set_reduce_scatter_unused_params(True)
    return root


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_tensors(root: ShardedCall) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full CPU tensor) for every entry of the model's state dict, one at a time.

    A collective: every rank must iterate it in step.  Names are the HF model's own (no wrapper
    prefix), so they load into an unsharded copy with ``load_state_dict``.
    """
    for name, t in root.model.state_dict().items():
        yield name, _full(t).detach().cpu()


def trainable(root: ShardedCall) -> list[nn.Parameter]:
    return [p for p in root.model.parameters() if p.requires_grad]


def gather_optimizer_state(root: ShardedCall, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state as the single-process trainer's ``optimizer.state_dict()`` has it:
    integer ids in ``model.parameters()`` order (trainable only), full CPU tensors.  Collective."""
    sd = optimizer.state_dict()
    state = {}
    for i, p in enumerate(trainable(root)):
        st = optimizer.state.get(p, {})
        state[i] = {k: _full(v).detach().cpu() if torch.is_tensor(v) else v for k, v in st.items()}
    return {"state": {i: s for i, s in state.items() if s}, "param_groups": sd["param_groups"]}


def load_optimizer_state(root: ShardedCall, optimizer: torch.optim.Optimizer, full: dict) -> None:
    """Load a single-process optimizer state dict (full tensors) into the sharded optimizer:
    each rank keeps its own shard of every tensor state."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = trainable(root)
    state = {}
    for key, st in full["state"].items():
        p = params[int(key)]
        out = {}
        for k, v in st.items():
            if torch.is_tensor(v) and isinstance(p, DTensor) and v.shape == p.shape:
                v = distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements)
            out[k] = v
        state[int(key)] = out
    optimizer.load_state_dict({"state": state, "param_groups": full["param_groups"]})
