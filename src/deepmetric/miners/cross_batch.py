"""Cross-batch memory (XBM, Wang et al. 2020): a FIFO queue of past embeddings that turns every batch into
a batch x memory mining problem, giving far more (hard) pairs than one batch holds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from deepmetric.miners.base import BaseMiner
from deepmetric.miners.pairs import AllPairsMiner
from deepmetric.registry import build, register
from deepmetric.types import Pairs, Triplets
from deepmetric.validation import check_batch, check_positive_int


def _inner_miner(miner: BaseMiner | Mapping[str, Any] | None) -> BaseMiner:
    if miner is None:
        return AllPairsMiner()
    if isinstance(miner, Mapping):
        miner = build(miner, "miner")
    if not isinstance(miner, BaseMiner):
        raise TypeError(f"miner must be a BaseMiner or a {{'name', 'args'}} node, "
                        f"got {type(miner).__name__}: {miner!r}")
    if isinstance(miner, CrossBatchMemoryMiner):
        raise TypeError("miner must not itself be a cross_batch_memory miner")
    return miner


def _without_self_pairs(mined: Pairs | Triplets, slots: torch.Tensor) -> Pairs | Triplets:
    """Drop tuples pairing an anchor with its own copy in the memory (``slots[i]`` = slot of item i)."""
    if isinstance(mined, Triplets):
        own = slots[mined.anchor]
        keep = (mined.positive != own) & (mined.negative != own)
        return Triplets(mined.anchor[keep], mined.positive[keep], mined.negative[keep])
    keep = mined.positive != slots[mined.anchor_positive]
    return Pairs(mined.anchor_positive[keep], mined.positive[keep], mined.anchor_negative, mined.negative)


@register("miner", "cross_batch_memory", example={"memory_size": 64, "miner": {"name": "all_pairs"}})
class CrossBatchMemoryMiner(BaseMiner):
    r"""Cross-batch memory (Wang, Zhang, Huang & Scott 2020, "Cross-Batch Memory for Embedding Learning").

    Keeps the last ``memory_size`` embeddings and labels in a FIFO queue :math:`\mathcal{M}`. Each call
    first enqueues the batch (detached, overwriting the oldest entries), then mines tuples between the batch
    (anchors) and the whole memory with the inner ``miner``; an anchor is never paired with its own copy.
    The loss over the memory is then

    .. math::
        \mathcal{L}_{xbm} = \sum_{i \in \text{batch}} \ell\big(f(x_i), y_i;\ \{(\tilde f_j, \tilde y_j)\}_{j \in
        \mathcal{M}}\big)

    where memory features :math:`\tilde f_j` carry no gradient (the paper's "slow drift" makes them close
    to current features). Indices returned point into ``ref_embeddings`` / ``ref_labels``, the memory as
    it is after the call, which the loss receives. A training step::

        xbm = CrossBatchMemoryMiner(memory_size=8192, miner={"name": "pair_ratio", "args": {"ratio": 3.0}})
        embeddings = model(images)
        mined = xbm(embeddings, labels)            # enqueue the batch, mine batch x memory
        loss = loss_fn(embeddings, labels) + memory_weight * loss_fn(
            embeddings, labels, mined=mined, ref_embeddings=xbm.ref_embeddings, ref_labels=xbm.ref_labels)
        loss.backward()

    The paper starts the memory term after a warm-up (about 1k iterations) so stored features are stable;
    move the miner with ``.to(device)``; its state (``state_dict``) holds the memory so a resumed run
    continues with it. When ``ref_embeddings``/``ref_labels`` are passed (e.g. the outputs of a momentum
    encoder for the same items), those are enqueued instead of the batch and no self-pair is removed.

    Args:
        memory_size: capacity M of the queue (a few times the batch size up to the data set size).
        miner: inner miner (instance or ``{"name", "args"}`` node), default ``all_pairs``.
        embedding_dim: D; allocates the memory up front (otherwise on the first call).

    Shapes: embeddings (B, D), labels (B,); memory (M, D), (M,). Memory of the mining step O(B M).

    Example:
        >>> import torch
        >>> xbm = CrossBatchMemoryMiner(memory_size=8, miner={"name": "all_pairs"})
        >>> _ = xbm(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]))
        >>> pairs = xbm(torch.randn(4, 3), torch.tensor([0, 1, 2, 2]))
        >>> xbm.ref_embeddings.shape, pairs.num_positive
        (torch.Size([8, 3]), 6)
    """

    def __init__(self, *, memory_size: int, miner: BaseMiner | Mapping[str, Any] | None = None,
                 embedding_dim: int | None = None) -> None:
        inner = _inner_miner(miner)
        super().__init__(distance=inner.distance)
        self.miner = inner
        self.memory_size = check_positive_int("memory_size", memory_size)
        check_positive_int("embedding_dim", embedding_dim, allow_none=True)
        self.register_buffer("memory_embeddings", torch.zeros(memory_size, embedding_dim or 0))
        self.register_buffer("memory_labels", torch.zeros(memory_size, dtype=torch.long))
        self.register_buffer("num_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("next_slot", torch.zeros((), dtype=torch.long))

    @property
    def ref_embeddings(self) -> torch.Tensor:
        """(n, D) stored embeddings, n = min(items seen, memory_size); slots fill in order, then wrap."""
        return self.memory_embeddings[: int(self.num_filled)]

    @property
    def ref_labels(self) -> torch.Tensor:
        """(n,) labels of ``ref_embeddings``."""
        return self.memory_labels[: int(self.num_filled)]

    def reset(self) -> None:
        """Empty the memory."""
        self.num_filled.zero_()
        self.next_slot.zero_()

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Store a batch (detached), overwriting the oldest entries; returns each item's slot (-1 when a
        batch larger than the memory leaves it out)."""
        check_batch(embeddings, labels, labels_required=True)
        size, dim = embeddings.shape
        if self.memory_embeddings.shape[1] not in (0, dim):
            raise ValueError(f"embeddings have dimension {dim}, the memory holds {self.memory_embeddings.shape[1]}")
        if int(self.num_filled) == 0:
            # An empty memory takes the dimension, dtype (at least float32) and device of its first batch.
            dtype = torch.promote_types(embeddings.dtype, torch.float32)
            self.memory_embeddings = torch.zeros(self.memory_size, dim, dtype=dtype, device=embeddings.device)
            self.memory_labels = self.memory_labels.to(embeddings.device)
        stored = min(size, self.memory_size)
        slots = torch.full((size,), -1, dtype=torch.long, device=embeddings.device)
        offsets = torch.arange(stored, device=embeddings.device)
        slots[size - stored:] = (int(self.next_slot) + offsets) % self.memory_size
        kept = slots[size - stored:]
        self.memory_embeddings[kept] = embeddings[size - stored:].detach().to(self.memory_embeddings)
        self.memory_labels[kept] = labels[size - stored:].to(self.memory_labels.device)
        self.next_slot.fill_((int(self.next_slot) + stored) % self.memory_size)
        self.num_filled.fill_(min(int(self.num_filled) + stored, self.memory_size))
        return slots

    def mine(self, embeddings, labels, ref_embeddings, ref_labels) -> Pairs | Triplets:
        own_batch = ref_labels is None
        slots = self.enqueue(embeddings, labels) if own_batch else self.enqueue(ref_embeddings, ref_labels)
        if embeddings.shape[1] != self.memory_embeddings.shape[1]:
            raise ValueError(f"embeddings have dimension {embeddings.shape[1]}, the memory holds "
                             f"{self.memory_embeddings.shape[1]}")
        memory = self.ref_embeddings.to(embeddings.dtype)
        mined = self.miner(embeddings, labels, memory, self.ref_labels)
        return _without_self_pairs(mined, slots) if own_batch else mined

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A memory allocated lazily has shape (M, 0) until the first batch; take the saved shape.
        saved = state_dict.get(prefix + "memory_embeddings")
        if saved is not None and self.memory_embeddings.shape[1] == 0 and saved.shape[0] == self.memory_size:
            self.memory_embeddings = torch.zeros_like(saved, device=self.memory_embeddings.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
