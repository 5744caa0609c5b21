"""Batch samplers that put P classes x K samples in every batch, so that each batch holds positive pairs
for the miners and losses; a distributed variant gives every rank different classes at each step."""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np

from deepmetric.registry import register
from deepmetric.validation import check_bool, check_int

_STATE_VERSION = 1


def _as_labels(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch tensor, without importing torch here
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence of class ids, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


class _PKSchedule:
    """Builds one epoch of steps; each step holds ``classes_per_step`` distinct classes x K indices.

    Every eligible class is cut into chunks of K of its shuffled indices (the last chunk topped up with
    other items of the class, or drawn with replacement when the class has fewer than K). Chunks get
    evenly spread random positions in [0, 1) per class, so a large class appears throughout the epoch, and
    are taken in that order into steps; a chunk whose class is already in the step waits for the next one.
    When the chunks run out before ``num_steps``, a fresh round of chunks is dealt.

    Args:
        members: data indices of the eligible classes, grouped by class.
        sizes: items per class, in the order of ``members``.
    """

    def __init__(self, members: np.ndarray, sizes: np.ndarray, samples_per_class: int, classes_per_step: int) -> None:
        self.members = members
        self.sizes = sizes
        self.starts = np.cumsum(sizes) - sizes
        self.member_class = np.repeat(np.arange(len(sizes)), sizes)
        self.samples_per_class = samples_per_class
        self.classes_per_step = classes_per_step
        self.chunk_counts = -(-sizes // samples_per_class)
        self.chunks_per_round = int(self.chunk_counts.sum())

    def _deal(self, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
        """One round: the class of every chunk and the chunks (T, K), in dealing order."""
        k, counts = self.samples_per_class, self.chunk_counts
        # class + U[0, 1) sorts by class, then randomly within each class.
        shuffled = self.members[np.argsort(self.member_class + rng.random(len(self.members)))]
        slots = counts * k
        slot_class = np.repeat(np.arange(len(counts)), slots)
        position = np.arange(int(slots.sum())) - np.repeat(np.cumsum(slots) - slots, slots)
        size = self.sizes[slot_class]
        source = position.copy()
        over = position >= size
        # Top-up of a class with >= K items: its first items, a random subset (the class is shuffled) that
        # is disjoint from the last chunk. A class with fewer than K items is drawn with replacement.
        small = over & (size < k)
        source[over & ~small] = (position - size)[over & ~small]
        source[small] = (rng.random(int(small.sum())) * size[small]).astype(np.int64)
        chunks = shuffled[self.starts[slot_class] + source].reshape(-1, k)
        owner = np.repeat(np.arange(len(counts)), counts)
        ordinal = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        order = np.argsort((ordinal + rng.random(len(owner))) / counts[owner], kind="stable")
        return owner[order].tolist(), chunks[order]

    def steps(self, rng: np.random.Generator, num_steps: int) -> np.ndarray:
        """(num_steps, classes_per_step, K) data indices."""
        chosen = np.empty((num_steps, self.classes_per_step), dtype=np.int64)
        waiting: OrderedDict[int, deque] = OrderedDict()
        owner, chunks = self._deal(rng)
        tables, offset, position = [chunks], 0, 0
        for step in range(num_steps):
            taken: dict[int, int] = {}
            # Chunks that waited go first, one per class, oldest class first.
            for cls in list(islice(waiting, self.classes_per_step)):
                taken[cls] = waiting[cls].popleft()
                if waiting[cls]:
                    waiting.move_to_end(cls)
                else:
                    del waiting[cls]
            while len(taken) < self.classes_per_step:
                if position == len(owner):
                    offset += len(owner)
                    owner, chunks = self._deal(rng)
                    tables.append(chunks)
                    position = 0
                cls, chunk_id = owner[position], offset + position
                position += 1
                if cls in taken:
                    waiting.setdefault(cls, deque()).append(chunk_id)
                else:
                    taken[cls] = chunk_id
            chosen[step] = list(taken.values())
        return np.concatenate(tables)[chosen]


class _PKBase:
    def __init__(self, labels: Any, *, classes_per_batch: int, samples_per_class: int, seed: int,
                 num_batches: int | None, drop_small_classes: bool, skip_single_sample_classes: bool,
                 num_replicas: int, rank: int) -> None:
        self.labels = _as_labels(labels)
        self.classes_per_batch = check_int("classes_per_batch", classes_per_batch, low=1)
        self.samples_per_class = check_int("samples_per_class", samples_per_class, low=1)
        self.seed = check_int("seed", seed)
        self.num_replicas = check_int("num_replicas", num_replicas, low=1)
        self.rank = check_int("rank", rank, low=0, high=self.num_replicas - 1)
        self.drop_small_classes = check_bool("drop_small_classes", drop_small_classes)
        self.skip_single_sample_classes = check_bool("skip_single_sample_classes", skip_single_sample_classes)

        classes, inverse, counts = np.unique(self.labels, return_inverse=True, return_counts=True)
        minimum = self.samples_per_class if self.drop_small_classes else (2 if self.skip_single_sample_classes else 1)
        eligible = np.flatnonzero(counts >= minimum)
        self.classes = classes[eligible]
        needed = self.classes_per_batch * self.num_replicas
        if len(eligible) < needed:
            raise ValueError(
                f"classes_per_batch={self.classes_per_batch} x num_replicas={self.num_replicas} needs {needed} classes "
                f"with >= {minimum} samples, but labels have {len(eligible)} (of {len(classes)} classes)")
        by_class = np.argsort(inverse, kind="stable")
        members = by_class[np.isin(inverse[by_class], eligible)]
        self._schedule = _PKSchedule(members, counts[eligible], self.samples_per_class, needed)
        if num_batches is None:
            num_batches = max(1, self._schedule.chunks_per_round // needed)
        self.num_batches = check_int("num_batches", num_batches, low=1)
        self.epoch = 0
        self.position = 0
        self._fingerprint = hashlib.sha1(self.labels.tobytes()).hexdigest()[:16]

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch``; a new epoch restarts at its first batch, the current one (e.g.
        right after ``load_state_dict``) continues where it stopped."""
        epoch = check_int("epoch", epoch, low=0)
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of ``epoch`` (default: the current one) for this rank, without changing the state."""
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, low=0)
        rng = np.random.default_rng([self.seed, epoch])
        steps = self._schedule.steps(rng, self.num_batches)
        start = self.rank * self.classes_per_batch
        return steps[:, start:start + self.classes_per_batch].reshape(self.num_batches, -1).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        while self.position < self.num_batches:
            batch = batches[self.position]
            self.position += 1
            yield batch
        # A finished epoch moves on, so iterating again without set_epoch gives a new shuffle.
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        """Where the sampler is: ``epoch`` and ``position`` (batches already yielded in the epoch).

        A DataLoader with workers fetches batches ahead of the training loop; a trainer that resumes
        exactly should store the number of batches it consumed as ``position``.
        """
        return {"version": _STATE_VERSION, "seed": self.seed, "epoch": self.epoch, "position": self.position,
                "num_batches": self.num_batches, "num_replicas": self.num_replicas,
                "labels_fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume exactly: the next batch yielded is batch ``state["position"]`` of ``state["epoch"]``."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = {"seed", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"sampler state is missing {sorted(missing)}")
        for key, mine in (("labels_fingerprint", self._fingerprint), ("num_batches", self.num_batches),
                          ("num_replicas", self.num_replicas)):
            if key in state and state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler has {mine!r}; "
                                 "it was saved for different labels or settings")
        position = check_int("position", state["position"], low=0)
        if position > self.num_batches:
            raise ValueError(f"position must be <= num_batches={self.num_batches}, got {position}")
        self.seed = int(state["seed"])
        self.epoch = check_int("epoch", state["epoch"], low=0)
        self.position = position


_PK_DOC_ARGS = """
    Args:
        labels: (N,) integer class of every item of the data set (numpy array, list or tensor).
        classes_per_batch: P, distinct classes in each batch.
        samples_per_class: K, items per class in each batch.
        seed: the shuffle of epoch e is a pure function of (seed, e).
        num_batches: batches per epoch; default: enough to visit every item of the eligible classes about
            once.
        drop_small_classes: leave out classes with fewer than K items. By default such a class is used
            with replacement: its items are repeated (randomly) up to K in a batch.
        skip_single_sample_classes: leave out classes with one item (default True): they can form no
            positive pair. Ignored when ``drop_small_classes`` is set.
"""


@register("sampler", "pk", example={"labels": [0, 0, 0, 1, 1, 2, 2, 2, 3, 3], "classes_per_batch": 2,
                                   "samples_per_class": 2})
class PKSampler(_PKBase):
    __doc__ = r"""Batch sampler: every batch has P distinct classes x K items each (batch size P K), the
    sampling of Hermans, Beyer & Leibe 2017 that batch-hard and semi-hard mining need.

    Within an epoch each class is visited in chunks of K of its shuffled items, spread over the epoch, so
    every item of the eligible classes is seen about once; batches are lists of indices, used as
    ``DataLoader(dataset, batch_sampler=PKSampler(...))``. ``set_epoch`` reshuffles;
    ``state_dict``/``load_state_dict`` resume exactly mid-epoch.
    """ + _PK_DOC_ARGS + r"""
    Example:
        >>> sampler = PKSampler([0, 0, 1, 1, 2, 2, 2], classes_per_batch=2, samples_per_class=2, seed=0)
        >>> len(sampler), all(len(batch) == 4 for batch in sampler)
        (2, True)
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, *, classes_per_batch: int, samples_per_class: int,
                 seed: int = 0, num_batches: int | None = None, drop_small_classes: bool = False,
                 skip_single_sample_classes: bool = True) -> None:
        super().__init__(labels, classes_per_batch=classes_per_batch, samples_per_class=samples_per_class,
                         seed=seed, num_batches=num_batches, drop_small_classes=drop_small_classes,
                         skip_single_sample_classes=skip_single_sample_classes, num_replicas=1, rank=0)


def _distributed_world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is not None and rank is not None:
        return num_replicas, rank
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("num_replicas and rank must be given when torch.distributed is not initialised, "
                         f"got num_replicas={num_replicas!r}, rank={rank!r}")
    return (dist.get_world_size() if num_replicas is None else num_replicas,
            dist.get_rank() if rank is None else rank)


@register("sampler", "distributed_pk", example={"labels": [0, 0, 1, 1, 2, 2, 3, 3], "classes_per_batch": 2,
                                                "samples_per_class": 2, "num_replicas": 2, "rank": 0})
class DistributedPKSampler(_PKBase):
    __doc__ = r"""P x K batch sampler for data-parallel training: at every step the ranks together draw
    P x num_replicas distinct classes and rank r takes the r-th group of P, so no class is split across
    ranks within a step (the all-gathered batch is a valid P' x K batch) and every rank has the same number
    of batches. All ranks must use the same labels, seed and settings.
    """ + _PK_DOC_ARGS + r"""        num_replicas: number of ranks (default: the initialised process group's world
            size).
        rank: this rank (default: the process group's rank).

    Example:
        >>> labels = [0, 0, 1, 1, 2, 2, 3, 3]
        >>> rank0 = DistributedPKSampler(labels, classes_per_batch=1, samples_per_class=2, num_replicas=2, rank=0)
        >>> rank1 = DistributedPKSampler(labels, classes_per_batch=1, samples_per_class=2, num_replicas=2, rank=1)
        >>> len(rank0) == len(rank1) == 2
        True
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, *, classes_per_batch: int, samples_per_class: int,
                 seed: int = 0, num_batches: int | None = None, drop_small_classes: bool = False,
                 skip_single_sample_classes: bool = True, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        num_replicas, rank = _distributed_world(num_replicas, rank)
        super().__init__(labels, classes_per_batch=classes_per_batch, samples_per_class=samples_per_class,
                         seed=seed, num_batches=num_batches, drop_small_classes=drop_small_classes,
                         skip_single_sample_classes=skip_single_sample_classes, num_replicas=num_replicas,
                         rank=rank)
