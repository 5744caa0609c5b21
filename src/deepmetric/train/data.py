"""Batches that make a run resumable: each batch is loaded under a seed drawn from (run seed, rank, epoch, batch
number), and an epoch can start part-way through; plus the batch sampler of the pair and triplet modes."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


@contextlib.contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed Python, numpy and torch for one batch's augmentations, then put the previous states back, so
    a batch's augmentations depend only on (run seed, rank, epoch, batch number) and never on which worker
    process loads it or on what ran before: the key to exact resume mid-epoch."""
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def batch_transform_of(dataset: Any) -> Any:
    """The data set's batch augmentation (``batch_transform(uint8 batch, seed=) -> float batch``) when it can
    give items before augmentation (``uint8_item``), else None: it is then augmented one item at a time."""
    transform = getattr(dataset, "batch_transform", None)
    return transform if transform is not None and callable(getattr(dataset, "uint8_item", None)) else None


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a data set so that a batch of items ``(index, seed)`` is loaded under its seed. A data set
    whose augmentations use a private generator can expose ``reseed(seed)`` to take part.

    With ``batched=True`` the items are ``(uint8 image, label, seed)`` from ``dataset.uint8_item``: they
    collate into a uint8 batch that ``batch_transform_of(dataset)`` augments as a whole, under that seed."""

    def __init__(self, dataset: torch.utils.data.Dataset, *, batched: bool = False) -> None:
        if batched and batch_transform_of(dataset) is None:
            raise ValueError(f"{type(dataset).__name__} cannot be augmented per batch: it has no uint8_item and "
                             f"batch_transform")
        self.dataset = dataset
        self.batched = batched

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> list[Any]:
        # A DataLoader hands a whole batch to one worker; seeding once per batch (items carry their batch's
        # seed) keeps the cost of seeding negligible next to loading.
        seed = items[0][1]
        if self.batched:  # no randomness here: the batch transform draws from the batch seed
            return [(*self.dataset.uint8_item(index), seed) for index, _ in items]
        with _seeded_rngs(seed):
            reseed = getattr(self.dataset, "reseed", None)
            if callable(reseed):
                reseed(seed)
            return [self.dataset[index] for index, _ in items]


class SeededBatches:
    """Batch sampler adapter: yields ``[(index, batch seed), ...]`` from an inner batch sampler, skipping the
    first ``skip`` batches of the epoch (a resumed run continues where the checkpoint left off)."""

    def __init__(self, batch_sampler: Any, *, seed: int, rank: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.seed = int(seed)
        self.rank = int(rank)
        self.epoch = 0
        self.skip = 0

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        skip, self.skip = self.skip, 0
        for number, batch in enumerate(self.batch_sampler):
            if number < skip:
                continue
            seed = int(np.random.SeedSequence([self.seed, self.rank, self.epoch, number]).generate_state(1)[0])
            yield [(int(index), seed) for index in batch]


class ShuffledBatches:
    """Batches of a fresh permutation each epoch (a pure function of seed and epoch), split across ranks;
    the batch sampler of the pair and triplet modes, whose items are already pairs or triplets."""

    def __init__(self, num_items: int, *, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if num_items < batch_size * num_replicas:
            raise ValueError(f"the data set has {num_items} items, fewer than one batch of train.batch_size="
                             f"{batch_size} x {num_replicas} processes; lower train.batch_size")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items // (self.batch_size * self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        step = self.batch_size * self.num_replicas
        for start in range(0, len(self) * step, step):
            first = start + self.rank * self.batch_size
            yield order[first:first + self.batch_size].tolist()
