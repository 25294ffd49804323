"""Multi-process training on torch.distributed: set-up from the ``torchrun`` environment and the few collective
helpers the trainer needs.

``torchrun --nproc_per_node N -m mask2former train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init_distributed` then joins the process group (``nccl`` when the processes train on
CUDA, ``gloo`` on CPU) and picks one GPU per process. Without those variables everything runs in one process and
the helpers do nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, training on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group described by the ``torchrun`` environment (if any) and choose the device.

    Args:
        device: "cpu", "cuda", "cuda:1", ... or None (cuda if available). Under torchrun, "cuda" means
            ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    context = DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        # Rank 0 evaluates while the others wait at a barrier: allow long evaluations (the default is 10-30 minutes).
        dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(hours=2))
        context.initialized_here = True
    elif dist.is_initialized():
        context.rank, context.world_size = dist.get_rank(), dist.get_world_size()
    return context


def shutdown(context: DistributedContext) -> None:
    """Leave the process group if :func:`init_distributed` joined it."""
    if context.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], context: DistributedContext) -> dict[str, float]:
    """The mean over processes of each value (the same keys in every process)."""
    if not context.enabled or not values:
        return values
    names = sorted(values)
    tensor = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=_collective_device(context))
    dist.all_reduce(tensor)
    tensor /= context.world_size
    return dict(zip(names, tensor.tolist()))


def any_process(flag: bool, context: DistributedContext) -> bool:
    """True in every process if ``flag`` is True in one of them (e.g. a stop request)."""
    if not context.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=_collective_device(context))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Every process's ``value``, in rank order (a one-element list without distribution)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def _collective_device(context: DistributedContext) -> torch.device:
    return context.device if dist.get_backend() == "nccl" else torch.device("cpu")
