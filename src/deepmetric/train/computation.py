"""What one training step computes: embeddings -> [miner] -> loss, as one module, so that DistributedDataParallel
averages the gradients of the loss's own parameters (class centres) too."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from deepmetric.train.distributed import gather_with_grad
from deepmetric.types import Pairs, Triplets
from deepmetric.validation import check_choice


class LossComputation(nn.Module):
    """Model + miner + loss in one module, so that DistributedDataParallel sees (and averages the gradient
    of) the loss's own parameters too, e.g. class centres.

    ``mode="labels"``: batches of (images, labels); with several processes the embeddings and labels are
    gathered from every rank, so the miner and the loss see the global batch (many losses, e.g. proxy
    anchor or multi-similarity, are not means over samples, so local losses would not add up to it). The
    loss is multiplied by the world size because DDP averages gradients while each rank holds the gradient
    of its own slice only; the loss's own parameters (class centres) see the whole batch on every rank, so
    the trainer divides their averaged gradient by the world size again.
    ``mode="pairs"``: batches of (first, second, same) train from pair labels alone; ``mode="triplets"``:
    batches of (anchor, positive, negative) images. Both feed one shared network (a Siamese/triplet net).
    A cross-batch-memory miner (one with ``ref_embeddings``) adds ``memory_weight`` times the loss of the
    batch against the memory to the in-batch loss.
    ``raw_features=True`` gives the loss the embeddings before L2 normalisation (``model.features``), for
    losses whose formula keeps the feature norm (softmax, center loss, SphereFace).
    """

    def __init__(self, model: nn.Module, loss: nn.Module, *, miner: nn.Module | None = None, mode: str = "labels",
                 mixed_precision: bool = True, world_size: int = 1, memory_weight: float = 1.0,
                 raw_features: bool = False) -> None:
        super().__init__()
        mode = check_choice("mode", mode, ("labels", "pairs", "triplets"))
        self.model = model
        self.loss = loss
        self.miner = miner
        self.mode = mode
        self.mixed_precision = mixed_precision
        self.world_size = world_size
        self.gather = world_size > 1 and mode == "labels"  # pair/triplet batches: local means average exactly
        self.uses_memory = miner is not None and hasattr(miner, "ref_embeddings")
        self.memory_weight = float(memory_weight)
        self.memory_active = True  # the trainer switches it on at train.memory_start_step
        self.raw_features = bool(raw_features)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        with _autocast(images.device, self.mixed_precision):
            return (self.model.features(images) if self.raw_features else self.model(images)).float()

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        if self.mode == "labels":
            images, labels = batch
            return self._labels_loss(self.embed(images), labels)
        groups = batch[:2] if self.mode == "pairs" else batch
        embeddings = self.embed(torch.cat(groups))
        size = groups[0].shape[0]
        index = torch.arange(size, device=embeddings.device)
        # Stand-in labels that encode nothing but the given relations (pair i's members share label i when
        # they are "same"); only the mined tuples below enter the loss, so no identity is ever used.
        if self.mode == "pairs":
            same = batch[2].to(embeddings.device).bool()
            mined: Pairs | Triplets = Pairs(index[same], index[same] + size, index[~same], index[~same] + size)
            labels = torch.cat([index, torch.where(same, index, index + size)])
        else:
            mined = Triplets(index, index + size, index + 2 * size)
            labels = torch.cat([index, index, index + size])
        return self.loss(embeddings, labels, mined=mined)

    def _labels_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scale = 1.0
        if self.gather:
            embeddings, labels = gather_with_grad(embeddings), gather_with_grad(labels)
            scale = float(self.world_size)
        if self.miner is None:
            return self.loss(embeddings, labels) * scale
        mined = self.miner(embeddings, labels)
        if not self.uses_memory:
            return self.loss(embeddings, labels, mined=mined) * scale
        # Cross-batch memory (Wang et al. 2020): the in-batch loss plus the batch-vs-memory loss, the latter
        # once the stored features have stopped drifting fast (after ``memory_start_step``).
        value = self.loss(embeddings, labels)
        if self.memory_active:
            value = value + self.memory_weight * self.loss(embeddings, labels, mined=mined,
                                                           ref_embeddings=self.miner.ref_embeddings,
                                                           ref_labels=self.miner.ref_labels)
        return value * scale


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    # Mixed precision is float16 on CUDA; CPU autocast would mean bfloat16, a trade-off the trainer does not make.
    if device.type == "cuda" and enabled:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
