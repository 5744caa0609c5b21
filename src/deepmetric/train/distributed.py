"""Distributed data parallel helpers for ``torchrun``: process-group set-up (gloo on CPU, nccl on GPU), an
all-gather that keeps the gradient of the local part, so pair/triplet losses see the global batch, and the
two settings DistributedDataParallel needs around a sharded class-centre head (PartialFC).

Nothing here touches CUDA or the process group at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from deepmetric.losses.partial_fc import ShardedClassCentreHead


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group described by ``torchrun``'s environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); a single process when ``WORLD_SIZE`` is unset or 1.

    The backend is nccl for CUDA devices and gloo otherwise. Calling it again reuses the existing group.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (rank order), keeping autograd for this rank's
    slice. Other ranks' slices are constants here; their gradients flow on their own ranks, and DDP's
    gradient averaging then adds the contributions up (the caller multiplies the loss by the world size so
    that the sum, not the mean, matches one process on the global batch). Every rank must pass the same
    shape."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[dist.get_rank()] = tensor
    return torch.cat(parts, dim=0)


def exclude_sharded_heads(module: nn.Module) -> list[str]:
    """Before ``DistributedDataParallel(module)``: leave out the parameters of every
    ``ShardedClassCentreHead`` inside ``module`` (each process holds different classes, so they must be
    neither broadcast nor averaged). Returns their names."""
    sharded = {id(param) for sub in module.modules() if isinstance(sub, ShardedClassCentreHead)
               for param in sub.parameters()}
    names = [name for name, param in module.named_parameters() if id(param) in sharded]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    return names


def _allreduce_sum(process_group, bucket):  # no annotations: DDP compares them to the real classes, and
    # ``from __future__ import annotations`` would turn them into strings. (group, GradBucket) -> Future
    work = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def sum_gradients(model: nn.parallel.DistributedDataParallel) -> None:
    """Make DDP sum the gradients over the processes instead of averaging them: behind a sharded head each
    process's embeddings already receive the gradient of the global-batch loss, so the backbone's
    gradient is the sum of the processes' parts."""
    model.register_comm_hook(model.process_group, _allreduce_sum)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group. Every rank first waits for the others: a rank that tears gloo down while a
    peer is still mid-collective (or still writing its results) can abort the peer's transport thread
    ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
