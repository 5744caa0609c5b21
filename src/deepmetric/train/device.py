"""Where training runs (``resolve_device``), and what a batch that does not fit there turns into: a
``TrainingOutOfMemory`` whose message says which settings make the batch smaller."""

from __future__ import annotations

from typing import Any

import torch

_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


class TrainingOutOfMemory(RuntimeError):
    """A batch did not fit in memory; the message says which settings make it smaller."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CUDA and CPU allocators word it differently)."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _OOM_MARKERS)


def out_of_memory_message(batch_size: int | None, device: torch.device) -> str:
    """What to change when a batch of ``batch_size`` items did not fit on ``device``."""
    size = f"a batch of {batch_size} items" if batch_size else "a batch"
    return (f"out of memory on {device} with {size}. Use a smaller batch: lower sampler.args.classes_per_batch "
            f"or sampler.args.samples_per_class (e.g. --set sampler.args.classes_per_batch=8), or a smaller "
            f"data image_size / model; train.accumulation_steps keeps the effective batch for the optimizer.")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``"auto"``/None: CUDA when present, else CPU; otherwise the named device (an error if absent)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available; use device: auto or cpu")
    return device


def batch_size_of(batch: Any) -> int:
    """Items in a batch of ``(inputs, ...)`` parts: the first part's length."""
    first = batch[0]
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else len(first)
