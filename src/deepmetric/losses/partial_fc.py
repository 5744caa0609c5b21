r"""PartialFC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021):
the class centres split across the processes of ``torch.distributed``, for more classes than one holds.

Process ``r`` of ``W`` holds the contiguous classes ``[r C / W, (r + 1) C / W)``. A step:

1. the embeddings, labels (and per-sample scales) of every process are all-gathered, so each process
   sees the global batch ``x_1 .. x_B``; the gradient flowing back is summed over the processes and each
   keeps its own rows;
2. while training, each process keeps the batch's positive classes among its own and every other of
   its classes with probability ``r`` (``sample_rate``);
3. the cross-entropy over the union ``S`` of the kept classes,

.. math::
    \ell_i = \log\Big(e^{t_i} + \sum_{j \in S, j \ne y_i} e^{s_i \langle x_i, \hat w_j \rangle + b_j}\Big) - t_i,
    \qquad t_i = s_i\, \psi(\langle x_i, \hat w_{y_i} \rangle) + b_{y_i},

is computed by the chunked engine of ``deepmetric.losses.heads`` on each process's classes, with the
log-sum-exp bound all-reduced by a maximum and the partial sums by a sum; the process holding ``y_i``
supplies ``t_i``. Any margin ``psi`` of ``deepmetric.losses.margins`` applies unchanged (it sees the
global labels), and with ``r = 1`` the loss and every gradient equal the single-process full head's.

A class is kept when a uniform score drawn for it from ``(seed, draw, class id)`` is below ``r``, so the
classes drawn at a step do not depend on the number of processes: a run resumed on another number of
processes continues exactly (``save_centres`` / ``load_centres`` store the centres, their optimizer
state and the draw counter by class id). With one process and no process group the same code runs.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn

from deepmetric.io import read_json, save_weights, write_json
from deepmetric.losses.heads import (
    LOCAL,
    ClassCentreHead,
    HeadOutput,
    MarginFunction,
    Reductions,
    ShardTargets,
    identity_margin,
)
from deepmetric.losses.heads import nontarget_logsumexp as _nontarget_logsumexp
from deepmetric.validation import check_int

CENTRES_DIR = "centres"
CENTRES_MANIFEST = "manifest.json"
# Scores are drawn per block of classes from their own generator, so a process draws only its classes'.
_SCORE_BLOCK = 1 << 16
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9)  # odd 64-bit constants for the generator seeds


def _group_size_rank(group: Any) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group), dist.get_rank(group)
    return 1, 0


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """The contiguous classes ``[start, stop)`` process ``rank`` of ``world_size`` holds."""
    return rank * num_classes // world_size, (rank + 1) * num_classes // world_size


class ProcessGroupReductions(Reductions):
    """The engine's reductions as in-place all-reduces over a process group (gloo or nccl)."""

    def __init__(self, group: Any = None) -> None:
        self.group = group

    def maximum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def logsumexp_(self, values: torch.Tensor) -> torch.Tensor:
        largest = self.maximum_(values.clone())
        offset = torch.where(torch.isfinite(largest), largest, torch.zeros_like(largest))
        return self.sum_(torch.exp(values - offset)).log_().add_(offset)


class _GatherRows(torch.autograd.Function):
    """All-gather rows of possibly different counts per process (rank order); the backward sums the
    gradient of the gathered rows over the processes and returns this process's rows."""

    @staticmethod
    def forward(ctx, tensor, counts, group):
        padded = tensor.new_zeros((max(counts),) + tuple(tensor.shape[1:]))
        padded[:tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded, group=group)
        ctx.counts, ctx.group = counts, group
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        rank = dist.get_rank(ctx.group)
        start = sum(ctx.counts[:rank])
        return grad[start:start + ctx.counts[rank]], None, None


def _score_seed(seed: int, draw: int, block: int) -> int:
    value = (seed * _MIX[0] + draw) % (1 << 64)
    value = (value * _MIX[1] + block) % (1 << 64)
    return value % (1 << 63)


def kept_classes(start: int, stop: int, positives: torch.Tensor, sample_rate: float, *, seed: int, draw: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Sorted class ids in ``[start, stop)`` for one step's denominator: every id in ``positives`` (those
    in range) and each other id whose uniform score for ``(seed, draw, id)`` is below ``sample_rate``.

    The scores of a class are the same whichever range it falls in, so splitting the classes among any
    number of processes keeps the same union."""
    parts = []
    first, last = start // _SCORE_BLOCK, -(-stop // _SCORE_BLOCK)
    for block in range(first, last):
        low, high = max(start, block * _SCORE_BLOCK), min(stop, (block + 1) * _SCORE_BLOCK)
        generator = torch.Generator(device=device).manual_seed(_score_seed(seed, draw, block))
        scores = torch.rand(_SCORE_BLOCK, generator=generator, device=device)
        offset = low - block * _SCORE_BLOCK
        parts.append((scores[offset:offset + high - low] < sample_rate).nonzero().flatten() + low)
    positives = positives.to(device).long()
    positives = positives[(positives >= start) & (positives < stop)]
    return torch.unique(torch.cat(parts + [positives]))


class ShardedClassCentreHead(ClassCentreHead):
    r"""A ``ClassCentreHead`` whose classes are split across the processes (PartialFC, see the module
    docstring). ``weight`` holds this process's classes ``[class_start, class_stop)``, rows
    ``(class_stop - class_start) * K``; ``forward`` takes this process's samples and returns the losses
    of the global batch (every process returns the same values; average them on each).

    The gradient reaching this process's embeddings is that of the global-batch loss. Data-parallel
    wrappers that average the backbone's gradient over ``W`` processes must therefore sum instead (or
    multiply by ``W``), and must leave this head out (its parameters differ per process).

    Args:
        embedding_dim, num_classes, num_subcenters, normalize_weight, bias, chunk_size, sparse_gradient:
            see ``ClassCentreHead``.
        sample_rate: probability ``r`` in (0, 1] that a non-positive class is in a training step's
            denominator (1: every class, the full head).
        seed: seeds the class sampling and the centres' initialisation (the same on every process).
        process_group: the ``torch.distributed`` group (None: the default group, or one process when
            ``torch.distributed`` is not initialised).

    Example:
        >>> from deepmetric.losses.margins import arc_margin
        >>> head = ShardedClassCentreHead(embedding_dim=8, num_classes=100, sample_rate=0.2)
        >>> out = head(torch.nn.functional.normalize(torch.randn(4, 8), dim=1), torch.tensor([0, 5, 5, 99]),
        ...            row_scale=30.0, margin=lambda cos, labels: arc_margin(cos, 0.5))
        >>> out.losses.shape
        torch.Size([4])
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, num_subcenters: int = 1,
                 normalize_weight: bool = True, bias: bool = False, sample_rate: float = 0.1,
                 chunk_size: int | None = None, sparse_gradient: bool = False, seed: int = 0,
                 process_group: Any = None) -> None:
        self.seed = check_int("seed", seed, low=0)
        self.process_group = process_group
        self.world_size, self.rank = _group_size_rank(process_group)
        if num_classes < self.world_size:
            raise ValueError(f"num_classes={num_classes} must be at least the number of processes "
                             f"({self.world_size}) so that each holds one class")
        self.class_start, self.class_stop = shard_range(num_classes, self.world_size, self.rank)
        self.draws = 0
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, num_subcenters=num_subcenters,
                         normalize_weight=normalize_weight, bias=bias, head="sampled", sample_rate=sample_rate,
                         chunk_size=chunk_size, sparse_gradient=sparse_gradient)
        self.head = "sharded"
        self.reductions = ProcessGroupReductions(process_group) if self.world_size > 1 else LOCAL

    def _parameters_for(self, num_classes: int, bias: bool) -> tuple[nn.Parameter, nn.Parameter | None]:
        """This process's rows, initialised as ``uniform(-1/sqrt(D), 1/sqrt(D))`` from generators per
        block of classes, so the centres do not depend on the number of processes."""
        k, dim = self.num_subcenters, self.embedding_dim
        bound = 1.0 / math.sqrt(dim)
        weight = torch.empty((self.class_stop - self.class_start) * k, dim)
        for block in range(self.class_start // _SCORE_BLOCK, -(-self.class_stop // _SCORE_BLOCK)):
            low, high = block * _SCORE_BLOCK, (block + 1) * _SCORE_BLOCK
            generator = torch.Generator().manual_seed(_score_seed(self.seed, -1 % (1 << 64), block))
            rows = torch.empty(_SCORE_BLOCK * k, dim).uniform_(-bound, bound, generator=generator)
            keep_low, keep_high = max(low, self.class_start), min(high, self.class_stop)
            weight[(keep_low - self.class_start) * k:(keep_high - self.class_start) * k] = \
                rows[(keep_low - low) * k:(keep_high - low) * k]
        local_bias = nn.Parameter(torch.zeros(self.class_stop - self.class_start)) if bias else None
        return nn.Parameter(weight), local_bias

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", classes=[{self.class_start}, {self.class_stop}), "
                f"world_size={self.world_size}, seed={self.seed}")

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rows of ``tensor`` from every process in rank order (counts may differ), keeping the gradient."""
        if self.world_size == 1:
            return tensor
        count = torch.tensor([tensor.shape[0]], device=tensor.device)
        counts = [torch.empty_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count, group=self.process_group)
        return _GatherRows.apply(tensor, [int(c) for c in counts], self.process_group)

    def _global_batch(self, inputs: torch.Tensor, labels: torch.Tensor, row_scale: torch.Tensor | float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        row_scale = self._check(inputs, row_scale)
        labels = labels.to(inputs.device).long()
        if labels.shape != (inputs.shape[0],):
            raise ValueError(f"labels must have shape ({inputs.shape[0]},), got {tuple(labels.shape)}")
        self.check_labels(labels)
        if self.world_size == 1:
            return inputs, labels, row_scale
        # One gather for features and scales (the scale may carry a gradient too).
        both = self.gather(torch.cat([inputs, row_scale.unsqueeze(1)], dim=1))
        return both[:, :-1], self.gather(labels), both[:, -1]

    def _shard_targets(self, labels: torch.Tensor) -> tuple[ShardTargets, torch.Tensor]:
        owned = (labels >= self.class_start) & (labels < self.class_stop)
        rows = torch.where(owned, labels - self.class_start, torch.zeros_like(labels))
        return ShardTargets(owned, labels, self.reductions), rows

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor, *, row_scale: torch.Tensor | float = 1.0,
                margin: MarginFunction = identity_margin, class_index: torch.Tensor | None = None) -> HeadOutput:
        """Per-sample margin cross-entropy of the global batch (B_global,), the same on every process.

        Args:
            inputs: (B, D) this process's features (B may differ between processes, and be 0).
            labels: (B,) their global class ids.
            row_scale, margin: see ``ClassCentreHead.forward``.
            class_index: sorted global class ids forming the denominator (every label of the global
                batch among them); None: this step's sample while training, every class otherwise.
        """
        inputs, labels, row_scale = self._global_batch(inputs, labels, row_scale)
        shard, rows = self._shard_targets(labels)
        local_index = self._local_index(labels, class_index)
        if local_index is None:
            columns = rows
        else:
            columns = torch.searchsorted(local_index, rows)
            if local_index.numel():
                found = local_index[columns.clamp(max=local_index.numel() - 1)] == rows
            else:
                found = torch.zeros_like(shard.owned)
            if not bool((found | ~shard.owned).all()):
                raise ValueError("class_index must contain every label of the batch")
        columns = torch.where(shard.owned, columns, torch.full_like(columns, -1))
        return self._cross_entropy(inputs, row_scale, rows, columns, local_index, margin, shard)

    def _local_index(self, labels: torch.Tensor, class_index: torch.Tensor | None) -> torch.Tensor | None:
        """This process's denominator classes as sorted rows of its shard (None: all of them)."""
        if class_index is not None:
            class_index = class_index.to(labels.device).long()
            mine = class_index[(class_index >= self.class_start) & (class_index < self.class_stop)]
            return mine - self.class_start
        if not self.training or self.sample_rate >= 1.0:
            return None
        kept = kept_classes(self.class_start, self.class_stop, labels, self.sample_rate, seed=self.seed,
                            draw=self.draws, device=labels.device)
        self.draws += 1
        return kept - self.class_start

    def nontarget_logsumexp(self, inputs: torch.Tensor, labels: torch.Tensor, *,
                            row_scale: torch.Tensor | float = 1.0,
                            class_index: torch.Tensor | None = None) -> torch.Tensor:
        """``log sum_{j != y_i} exp(s_i <x_i, w_j> + b_j)`` of the global batch over every process's
        classes (or the sorted global ``class_index``), no gradient."""
        with torch.no_grad():
            inputs, labels, row_scale = self._global_batch(inputs, labels, row_scale)
            shard, rows = self._shard_targets(labels)
            local_index = None
            columns = rows
            if class_index is not None:
                local_index = self._local_index(labels, class_index)
                columns = torch.searchsorted(local_index, rows)
            columns = torch.where(shard.owned, columns, torch.full_like(columns, -1))
            return _nontarget_logsumexp(inputs, row_scale, self.weight, self.bias, columns, local_index,
                                        self.num_subcenters, self._resolve_chunk(inputs.shape[0]),
                                        self.normalize_weight, self.reductions)[0]

    def target_cosines(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``max_k <x_i, w_{y_i,k}>`` of the global batch (B_global,), no gradient."""
        with torch.no_grad():
            inputs, labels, _ = self._global_batch(inputs, labels, 1.0)
            shard, rows = self._shard_targets(labels)
            return self.reductions.sum_(super().target_cosines(inputs, rows) * shard.owned)

    def logits(self, inputs: torch.Tensor, *, row_scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Margin-free logits of the global batch over all classes (B_global, C), no gradient."""
        with torch.no_grad():
            inputs, _, row_scale = self._global_batch(inputs, inputs.new_zeros(inputs.shape[0]).long(), row_scale)
            local = super().logits(inputs, row_scale=row_scale)  # this process's classes
            if self.world_size == 1:
                return local
            return self.gather(local.T.contiguous()).T

    def unit_centres(self) -> torch.Tensor:
        if self.world_size > 1:
            raise ValueError("unit_centres() needs every class centre, and a sharded head with "
                             f"{self.world_size} processes holds only classes [{self.class_start}, "
                             f"{self.class_stop}) here; use the single-process head")
        return super().unit_centres()

    # -- checkpoints keyed by class id --------------------------------------------------------------

    def _row_state(self, optimizer: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
        """This process's tensors keyed by name: centres, bias, and each optimizer state of theirs that
        has one row per centre (or per class, for the bias)."""
        tensors = {"weight": self.weight.detach()}
        if self.bias is not None:
            tensors["bias"] = self.bias.detach()
        for name, param in self._own_parameters():
            state = {} if optimizer is None else optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    tensors[f"optimizer.{name}.{key}"] = value
        return tensors

    def _own_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, param) for name, param in (("weight", self.weight), ("bias", self.bias)) if param is not None]

    def _scalar_state(self, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        scalars: dict[str, Any] = {}
        for name, param in self._own_parameters():
            state = {} if optimizer is None else optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    continue
                if isinstance(value, torch.Tensor):
                    if value.numel() != 1:
                        raise ValueError(f"cannot reshard optimizer state {key!r} of shape {tuple(value.shape)}")
                    scalars[f"{name}.{key}"] = {"tensor": float(value), "dtype": str(value.dtype).split(".")[-1]}
                else:
                    scalars[f"{name}.{key}"] = value
        return scalars


def save_centres(folder: str | os.PathLike, head: ShardedClassCentreHead,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write ``head``'s centres and their optimizer state by class id into ``folder/centres/``, one file
    per process's range plus ``manifest.json``. Every process calls it; process 0 receives the others'
    rows one range at a time and writes them all, so ``folder`` need only exist on process 0 (e.g.
    inside the checkpoint's atomic folder)."""
    ranges = [shard_range(head.num_classes, head.world_size, rank) for rank in range(head.world_size)]
    tensors = head._row_state(optimizer)
    names = sorted(tensors)
    if head.rank != 0:
        for name in names:
            dist.send(tensors[name].contiguous(), dst=dist.get_global_rank(head.process_group, 0)
                      if head.process_group is not None else 0, group=head.process_group)
        return
    target = Path(folder) / CENTRES_DIR
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for rank, (start, stop) in enumerate(ranges):
        if rank:
            received = {}
            for name in names:
                rows = (stop - start) * (head.num_subcenters if _is_weight_state(name) else 1)
                buffer = tensors[name].new_empty((rows,) + tuple(tensors[name].shape[1:]))
                source = dist.get_global_rank(head.process_group, rank) if head.process_group is not None else rank
                dist.recv(buffer, src=source, group=head.process_group)
                received[name] = buffer
        else:
            received = tensors
        file = f"classes-{start:012d}-{stop:012d}.safetensors"
        save_weights(target / file, {name: value.cpu() for name, value in received.items()})
        files.append([start, stop, file])
    write_json(target / CENTRES_MANIFEST, {
        "format_version": 1, "num_classes": head.num_classes, "num_subcenters": head.num_subcenters,
        "embedding_dim": head.embedding_dim, "bias": head.bias is not None, "seed": head.seed,
        "draws": head.draws, "tensors": names, "optimizer_scalars": head._scalar_state(optimizer),
        "shards": files})


def _is_weight_state(name: str) -> bool:
    return name == "weight" or name.startswith("optimizer.weight.")


def _read_rows(target: Path, shards: Iterable[list], name: str, start: int, stop: int, per_class: int
               ) -> torch.Tensor:
    parts = []
    for low, high, file in shards:
        low, high = int(low), int(high)
        if high <= start or low >= stop:
            continue
        with safe_open(str(target / file), framework="pt") as handle:
            rows = handle.get_slice(name)
            first, last = (max(low, start) - low) * per_class, (min(high, stop) - low) * per_class
            parts.append(rows[first:last])
    return torch.cat(parts)


def load_centres(folder: str | os.PathLike, head: ShardedClassCentreHead,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load what ``save_centres`` wrote into ``head`` (and ``optimizer``'s state of its parameters),
    whatever the number of processes that wrote it: each process reads only the rows of its classes."""
    target = Path(folder) / CENTRES_DIR
    manifest = read_json(target / CENTRES_MANIFEST)
    for key in ("num_classes", "num_subcenters", "embedding_dim"):
        if manifest[key] != getattr(head, key):
            raise ValueError(f"the checkpoint's centres have {key}={manifest[key]}, the head has "
                             f"{getattr(head, key)}")
    if manifest["bias"] != (head.bias is not None):
        raise ValueError(f"the checkpoint's centres have bias={manifest['bias']}, the head has "
                         f"bias={head.bias is not None}")
    shards = manifest["shards"]
    covered = sorted((int(low), int(high)) for low, high, _ in shards)
    if covered[0][0] != 0 or covered[-1][1] != head.num_classes or any(
            a[1] != b[0] for a, b in itertools.pairwise(covered)):
        raise ValueError(f"{target / CENTRES_MANIFEST}: the shards do not cover classes 0..{head.num_classes}")
    values = {name: _read_rows(target, shards, name, head.class_start, head.class_stop,
                               head.num_subcenters if _is_weight_state(name) else 1)
              for name in manifest["tensors"]}
    with torch.no_grad():
        head.weight.copy_(values["weight"])
        if head.bias is not None:
            head.bias.copy_(values["bias"])
    head.seed, head.draws = int(manifest["seed"]), int(manifest["draws"])
    if optimizer is None:
        return
    for name, param in head._own_parameters():
        state: dict[str, Any] = {}
        for tensor_name, value in values.items():
            if tensor_name.startswith(f"optimizer.{name}."):
                state[tensor_name.split(".", 2)[2]] = value.to(param.device, param.dtype)
        for key, value in manifest["optimizer_scalars"].items():
            owner, _, field = key.partition(".")
            if owner == name:
                state[field] = (torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
                                if isinstance(value, dict) and "tensor" in value else value)
        if state:
            optimizer.state[param] = state
