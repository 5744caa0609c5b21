"""Siamese and triplet networks: one shared embedder fed pairs or triplets, and the data sets that feed them.

A pair data set needs only same/different pair labels, not identities; built from a labelled set it
draws ``negative_ratio`` different-label pairs per same-label pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from deepmetric.types import Pairs
from deepmetric.validation import check_non_negative_float, check_positive_int


class SiameseNetwork(nn.Module):
    """Two inputs through the same weights (Bromley et al., "Signature Verification using a Siamese Time
    Delay Neural Network", 1993; trained with the contrastive loss of Hadsell, Chopra, LeCun 2006):
    :math:`z_1 = G_W(x_1), z_2 = G_W(x_2)`, compared by a distance :math:`D_W = \\|z_1 - z_2\\|`.

    Args:
        embedder: the shared network (usually an ``Embedder``).
    """

    def __init__(self, *, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if first.shape != second.shape:
            raise ValueError(f"pair members must have the same shape, got {tuple(first.shape)} and "
                             f"{tuple(second.shape)}")
        # One pass over the concatenation keeps BatchNorm statistics shared by both members.
        embeddings = self.embedder(torch.cat([first, second]))
        return embeddings[: first.shape[0]], embeddings[first.shape[0]:]

    def similarity(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B,) of each pair; higher means more alike."""
        a, b = self(first, second)
        return torch.nn.functional.cosine_similarity(a, b, dim=1)


class TripletNetwork(nn.Module):
    """Anchor, positive and negative through the same weights (Hoffer & Ailon, "Deep metric learning using
    Triplet network", 2015; FaceNet, Schroff et al. 2015).

    Args:
        embedder: the shared network.
    """

    def __init__(self, *, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor,
                negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not anchor.shape == positive.shape == negative.shape:
            raise ValueError(f"triplet members must have the same shape, got {tuple(anchor.shape)}, "
                             f"{tuple(positive.shape)}, {tuple(negative.shape)}")
        size = anchor.shape[0]
        embeddings = self.embedder(torch.cat([anchor, positive, negative]))
        return embeddings[:size], embeddings[size:2 * size], embeddings[2 * size:]


def pair_batch(first_embeddings: torch.Tensor, second_embeddings: torch.Tensor,
               same: torch.Tensor) -> tuple[torch.Tensor, Pairs]:
    """Stack a batch of pairs for the loss library: returns embeddings (2B, D) and ``Pairs`` where pair ``i``
    is ``(i, B + i)``, positive when ``same[i]``. Use as ``loss(embeddings, None, mined=pairs)``."""
    if first_embeddings.shape != second_embeddings.shape:
        raise ValueError(f"first_embeddings {tuple(first_embeddings.shape)} and second_embeddings "
                         f"{tuple(second_embeddings.shape)} differ")
    same = torch.as_tensor(same, device=first_embeddings.device).bool().reshape(-1)
    size = first_embeddings.shape[0]
    if same.numel() != size:
        raise ValueError(f"same must have one entry per pair ({size}), got {same.numel()}")
    first = torch.arange(size, device=first_embeddings.device)
    pairs = Pairs(first[same], first[same] + size, first[~same], first[~same] + size)
    return torch.cat([first_embeddings, second_embeddings]), pairs


def sample_pairs(labels: np.ndarray, *, num_pairs: int, negative_ratio: float = 1.0,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``num_pairs`` index pairs: ``round(num_pairs / (1 + negative_ratio))`` with equal labels, the rest
    with different labels. Returns (first, second, same) arrays."""
    labels = np.asarray(labels)
    check_positive_int("num_pairs", num_pairs)
    check_non_negative_float("negative_ratio", negative_ratio)
    rng = np.random.default_rng(seed)
    num_positive = int(round(num_pairs / (1.0 + negative_ratio)))
    num_negative = num_pairs - num_positive
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if num_positive and not (counts >= 2).any():
        raise ValueError("no label has two items, so no same-label pair exists")
    members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
    eligible = np.flatnonzero(counts >= 2)
    weights = counts[eligible] / counts[eligible].sum()
    chosen = rng.choice(eligible, size=num_positive, p=weights)
    pos_first = np.empty(num_positive, np.int64)
    pos_second = np.empty(num_positive, np.int64)
    for row, c in enumerate(chosen):
        pos_first[row], pos_second[row] = rng.choice(members[c], 2, replace=False)
    neg_first = rng.integers(0, len(labels), num_negative)
    neg_second = draw_different(labels, neg_first, rng)
    order = rng.permutation(num_pairs)
    first = np.concatenate([pos_first, neg_first])[order]
    second = np.concatenate([pos_second, neg_second])[order]
    same = np.concatenate([np.ones(num_positive, bool), np.zeros(num_negative, bool)])[order]
    return first, second, same


def draw_different(labels: np.ndarray, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each anchor index, a random index whose label differs (rejection sampling)."""
    if len(np.unique(labels)) < 2:
        raise ValueError("only one label: no different-label pair exists")
    others = rng.integers(0, len(labels), len(anchors))
    clash = labels[others] == labels[anchors]
    while clash.any():  # each round keeps a (K-1)/K share of the clashes for K balanced labels: few rounds
        others[clash] = rng.integers(0, len(labels), int(clash.sum()))
        clash = labels[others] == labels[anchors]
    return others


class _WrapperDataset(Dataset):
    images: Dataset

    def reseed(self, seed: int) -> None:
        """Forward the trainer's per-batch augmentation seed to the wrapped data set."""
        reseed = getattr(self.images, "reseed", None)
        if callable(reseed):
            reseed(seed)


class PairDataset(_WrapperDataset):
    """Items ``(first_input, second_input, same)`` for a Siamese network.

    Give either ``pairs=(first_indices, second_indices, same)`` over ``images`` (only pair labels known),
    or nothing and a labelled ``images`` set (with a ``labels`` attribute): then ``num_pairs`` pairs are
    drawn with ``negative_ratio`` negatives per positive, redrawn by ``set_epoch``.

    Args:
        images: a Dataset whose items are an input or ``(input, label)``.
        pairs: explicit (first, second, same) index arrays.
        num_pairs: pairs per epoch when drawing from labels (default: ``len(images)``).
        negative_ratio: different-label pairs per same-label pair.
        seed: base seed; epoch ``e`` uses ``seed + e``.
    """

    def __init__(self, images: Dataset, *, pairs: Sequence[Sequence[Any]] | None = None,
                 num_pairs: int | None = None, negative_ratio: float = 1.0, seed: int = 0) -> None:
        self.images = images
        self.negative_ratio = float(negative_ratio)
        self.seed = int(seed)
        if pairs is not None:
            if num_pairs is not None:
                raise ValueError("give pairs or num_pairs, not both")
            first, second, same = (np.asarray(p) for p in pairs)
            if not first.shape == second.shape == same.shape or first.ndim != 1:
                raise ValueError(f"pairs must be three 1-D arrays of equal length, got shapes {first.shape}, "
                                 f"{second.shape}, {same.shape}")
            size = len(images)
            for name, index in (("first", first), ("second", second)):
                if len(index) and (index.min() < 0 or index.max() >= size):
                    raise ValueError(f"pairs {name} indices must be in [0, {size}), got range "
                                     f"[{index.min()}, {index.max()}]")
            self.labels = None
            self.first, self.second, self.same = first.astype(np.int64), second.astype(np.int64), same.astype(bool)
        else:
            labels = getattr(images, "labels", None)
            if labels is None:
                raise ValueError("images has no labels attribute: pass explicit pairs=(first, second, same)")
            self.labels = np.asarray(labels)
            self.num_pairs = int(num_pairs or len(self.labels))
            self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Redraw the pairs (only when they are drawn from labels)."""
        if self.labels is not None:
            self.first, self.second, self.same = sample_pairs(
                self.labels, num_pairs=self.num_pairs, negative_ratio=self.negative_ratio, seed=self.seed + epoch)

    def __len__(self) -> int:
        return len(self.same)

    def _input(self, index: int) -> Any:
        item = self.images[int(index)]
        return item[0] if isinstance(item, (tuple, list)) else item

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        return self._input(self.first[index]), self._input(self.second[index]), int(self.same[index])


class TripletDataset(_WrapperDataset):
    """Items ``(anchor, positive, negative)`` drawn from a labelled data set, redrawn by ``set_epoch``.

    Args:
        images: a Dataset of ``(input, label)`` items with a ``labels`` attribute.
        num_triplets: triplets per epoch (default ``len(images)``).
        seed: base seed.
    """

    def __init__(self, images: Dataset, *, num_triplets: int | None = None, seed: int = 0) -> None:
        labels = getattr(images, "labels", None)
        if labels is None:
            raise ValueError("TripletDataset needs a data set with a labels attribute")
        self.images = images
        self.labels = np.asarray(labels)
        self.num_triplets = int(num_triplets or len(self.labels))
        self.seed = int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        # A positive pair plus a negative for its first member is a triplet.
        rng = np.random.default_rng([self.seed, epoch, 1])
        anchors, positives, _ = sample_pairs(self.labels, num_pairs=self.num_triplets, negative_ratio=0.0,
                                             seed=self.seed + epoch)
        self.anchors, self.positives = anchors, positives
        self.negatives = draw_different(self.labels, anchors, rng)

    def __len__(self) -> int:
        return self.num_triplets

    def __getitem__(self, index: int) -> tuple[Any, Any, Any]:
        return tuple(self.images[int(i)][0] for i in (self.anchors[index], self.positives[index],
                                                       self.negatives[index]))
