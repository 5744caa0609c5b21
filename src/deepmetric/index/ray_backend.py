"""A ``VectorIndex`` whose items are split over Ray actors, each holding one of our indexes (exact, faiss,
hnswlib, annoy): ``add`` routes each id to shard ``id mod S``, ``search`` fans out and merges the shards'
top-k (their ids are the global ids), ``save`` writes one index folder per shard plus a manifest.

With ``durable_dir``, each shard logs every acknowledged ``add`` and ``remove`` to its folder before
answering, and a shard actor that dies is restarted by Ray and rebuilt from its last snapshot
(``checkpoint()``) plus the log, so no acknowledged change is lost.

Ties in the merged top-k go to the smaller id, which is the exact engine's order (insertion order)
whenever ids grow with insertion, as the default ids do. A search that cannot reach a shard raises
``ShardUnavailableError`` naming it, unless ``allow_partial=True``: then the answer comes from the
reachable shards and says which were missing (``ShardedSearchResult.missing_shards``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.index.base import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    IndexFormatError,
    RangeSearchResult,
    VectorIndex,
    as_ids,
    as_vectors,
    file_sha256,
    read_manifest,
)
from deepmetric.types import SearchResult
from deepmetric.validation import check_positive_int

SHARD_DIR = "shard-{:04d}"


class ShardUnavailableError(RuntimeError):
    """A shard actor did not answer (dead, unreachable or too slow)."""


@dataclass(frozen=True)
class ShardedSearchResult(SearchResult):
    """A ``SearchResult`` that says which shards did not answer (empty unless ``allow_partial=True``)."""

    missing_shards: tuple[int, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.missing_shards)


class _Shard:
    """The Ray actor: one of our indexes, driven through its public verbs; with ``durable`` a folder of
    ``snapshot-<seq>/`` index folders and ``log/<seq>.npz`` records of the changes after them."""

    def __init__(self, spec: str, dim: int, metric: str, backend: str, folder: str | None = None,
                 durable: str | None = None) -> None:
        from deepmetric.index.factory import build_index, load_index

        self.durable = None if durable is None else Path(durable)
        self.sequence = 0
        snapshots = [] if self.durable is None else sorted(self.durable.glob("snapshot-*"))
        if snapshots:
            self.index = load_index(snapshots[-1])
            self.sequence = int(snapshots[-1].name.split("-")[1])
        else:
            self.index = load_index(folder) if folder else build_index(spec, dim, metric, backend)
        if self.durable is not None:
            for record in sorted((self.durable / "log").glob("*.npz")):
                sequence = int(record.stem)
                if sequence > self.sequence:
                    with np.load(record, allow_pickle=False) as arrays:
                        self._apply(str(arrays["verb"]), arrays)
                    self.sequence = sequence

    def _apply(self, verb: str, arrays: Any) -> Any:
        if verb == "train":
            return self.index.train(arrays["x"])
        if verb == "add":
            return self.index.add(arrays["x"], arrays["ids"])
        return self.index.remove(arrays["ids"])

    def _logged(self, verb: str, **arrays: np.ndarray) -> Any:
        """Apply a change, then make it durable before acknowledging it (a kill in between loses only an
        unacknowledged change)."""
        result = self._apply(verb, arrays)
        if self.durable is not None:
            from deepmetric.io import atomic_path

            self.sequence += 1
            with atomic_path(self.durable / "log" / f"{self.sequence:012d}.npz") as tmp, open(tmp, "wb") as handle:
                np.savez(handle, verb=np.array(verb), **arrays)
        return result

    def call(self, verb: str, *args: Any, **kwargs: Any) -> Any:
        if verb == "train":
            self._logged("train", x=np.asarray(args[0], np.float32))
            return None
        if verb == "add":
            self._logged("add", x=np.asarray(args[0], np.float32), ids=np.asarray(args[1], np.int64))
            return None
        if verb == "remove":
            return int(self._logged("remove", ids=np.asarray(args[0], np.int64)))
        result = getattr(self.index, verb)(*args, **kwargs)
        return None if result is self.index else result

    def checkpoint(self) -> None:
        """Snapshot the index and drop the log records (and older snapshots) it contains."""
        if self.durable is None:
            return
        import shutil

        target = self.durable / f"snapshot-{self.sequence:012d}"
        self.index.save(target)
        for old in self.durable.glob("snapshot-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        for record in (self.durable / "log").glob("*.npz"):
            if int(record.stem) <= self.sequence:
                record.unlink()

    def search(self, q: np.ndarray, k: int, subset: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        result = self.index.search(q, k, subset=subset)
        return result.scores, result.ids

    def range_search(self, q: np.ndarray, threshold: float, subset: np.ndarray | None):
        result = self.index.range_search(q, threshold, subset=subset)
        return result.lims, result.scores, result.ids

    def state(self) -> dict[str, Any]:
        return {"size": len(self.index), "ids": self.index.ids, "trained": self.index.is_trained,
                "memory": self.index.memory_bytes()}

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, self.index.ids)

    def save(self, folder: str) -> None:
        self.index.save(folder)


def _connect(address: str | None):
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is in the [ray] extra
        raise ImportError("backend='ray' needs Ray: pip install 'deepmetric[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return ray


class RayShardedIndex(VectorIndex):
    """``VectorIndex`` over ``shards`` Ray actors (see the module docstring).

    Args:
        spec: every shard's index spec (``"Flat"``, ``"HNSW32"``, ``"IVF4096,PQ32"``, ...).
        dim, metric: as for ``build_index``.
        shards: the number of actors ``S``.
        address: the Ray cluster (``"127.0.0.1:6379"``, ``"auto"``); None joins the running Ray client or
            starts a local one.
        shard_backend: the library of each shard (None: chosen from the spec as ``build_index`` does).
        timeout: seconds to wait for a shard before calling it unavailable.
        durable_dir: a folder reachable from every node: shards log their changes there and Ray restarts
            a dead shard, which rebuilds itself from it (None: a dead shard stays dead).
    """

    backend = "ray"

    def __init__(self, *, spec: str, dim: int, metric: str = "cosine", shards: int = 2, address: str | None = None,
                 shard_backend: str | None = None, timeout: float = 60.0, durable_dir: str | os.PathLike | None = None,
                 _folder: Path | None = None) -> None:
        from deepmetric.index.factory import _backend_for

        super().__init__(spec=spec, dim=dim, metric=metric)
        self.num_shards = check_positive_int("shards", shards)
        self.shard_backend = shard_backend or _backend_for(spec)
        self.timeout = float(timeout)
        self._ray = _connect(address)
        self.durable_dir = None if durable_dir is None else Path(durable_dir)
        remote = self._ray.remote(num_cpus=0)(_Shard)
        self._actors = [
            remote.options(scheduling_strategy="SPREAD", max_restarts=-1 if self.durable_dir else 0).remote(
                spec, dim, self.metric, self.shard_backend,
                None if _folder is None else str(_folder / SHARD_DIR.format(shard)),
                None if self.durable_dir is None else str(self.durable_dir / SHARD_DIR.format(shard)))
            for shard in range(self.num_shards)]
        self._next_id = 0
        if _folder is not None:
            ids = self.ids
            self._next_id = int(ids[-1]) + 1 if ids.size else 0

    # ---- fan-out ------------------------------------------------------------------------------------
    def _gather(self, futures: dict[int, Any], allow_partial: bool = False) -> tuple[dict[int, Any], list[int]]:
        """The answers of the shards in ``futures``; unreachable shards raise, or are listed when partial
        answers are allowed."""
        from ray.exceptions import GetTimeoutError, RayActorError

        answers, missing = {}, []
        for shard, future in futures.items():
            try:
                answers[shard] = self._ray.get(future, timeout=self.timeout)
            except (RayActorError, GetTimeoutError) as error:
                if not allow_partial:
                    raise ShardUnavailableError(
                        f"shard {shard} of {self.num_shards} of ray index {self.spec!r} did not answer "
                        f"({type(error).__name__}); pass allow_partial=True to search the others") from error
                missing.append(shard)
        return answers, missing

    def _route(self, ids: np.ndarray) -> np.ndarray:
        return np.mod(ids, self.num_shards)

    def _split(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        """Positions of ``ids`` per shard."""
        shard_of = self._route(ids)
        return {shard: np.flatnonzero(shard_of == shard) for shard in range(self.num_shards)
                if (shard_of == shard).any()}

    def _states(self) -> list[dict[str, Any]]:
        answers, _ = self._gather({s: actor.state.remote() for s, actor in enumerate(self._actors)})
        return [answers[s] for s in range(self.num_shards)]

    # ---- the contract -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(state["size"] for state in self._states())

    @property
    def ids(self) -> np.ndarray:
        return np.sort(np.concatenate([state["ids"] for state in self._states()]))

    @property
    def num_tombstones(self) -> int:
        return 0

    def __contains__(self, item: int) -> bool:
        ids = np.asarray([item], dtype=np.int64)
        return bool(self._ray.get(self._actors[int(self._route(ids)[0])].contains.remote(ids), timeout=self.timeout)[0])

    @property
    def is_trained(self) -> bool:
        return all(state["trained"] for state in self._states())

    def memory_bytes(self) -> int:
        return sum(state["memory"] for state in self._states())

    def _checked(self, x: Any, argument: str) -> np.ndarray:
        """Validated float32 rows; cosine normalisation is the shards' (doing it twice would round twice)."""
        x = as_vectors(x, self.dim, argument)
        if self.metric == "cosine" and x.shape[0]:
            zero = np.flatnonzero(~np.any(x != 0, axis=1))
            if zero.size:
                raise ValueError(f"{argument} has an all-zero row {int(zero[0])}; cosine similarity is undefined "
                                 "for it")
        return x

    def train(self, x: Any) -> RayShardedIndex:
        """Every shard learns its quantiser / codebooks from the same ``x``."""
        x = self._checked(x, "x")
        self._gather({s: actor.call.remote("train", x) for s, actor in enumerate(self._actors)})
        return self

    def add(self, x: Any, ids: Any = None) -> RayShardedIndex:
        """Add ``x`` under new ``ids`` (default: the next free integers), each to shard ``id mod S``. Every
        id is checked on its shard before any shard adds, so a refused call adds nothing; the call returns
        once every shard has acknowledged its part."""
        x = self._checked(x, "x")
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + x.shape[0], dtype=np.int64)
        ids = as_ids(ids, x.shape[0], "ids")
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise ValueError("ids contains duplicates")
        if x.shape[0] == 0:
            return self
        parts = self._split(ids)
        present, _ = self._gather({s: self._actors[s].contains.remote(ids[rows]) for s, rows in parts.items()})
        taken = np.concatenate([ids[parts[s]][present[s]] for s in parts])
        if taken.size:
            raise ValueError(f"ids already in the index (remove them first): {np.sort(taken)[:5].tolist()}")
        if not self.is_trained:
            raise ValueError(f"index {self.spec!r} must be trained before add(); call train(x) first")
        self._gather({s: self._actors[s].call.remote("add", x[rows], ids[rows]) for s, rows in parts.items()})
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        return self

    def remove(self, ids: Any) -> int:
        ids = as_ids(ids, None, "ids")
        answers, _ = self._gather({s: self._actors[s].call.remote("remove", ids[rows])
                                   for s, rows in self._split(ids).items()})
        return int(sum(answers.values()))

    def checkpoint(self) -> None:
        """Every durable shard snapshots its index and truncates its log."""
        self._gather({s: actor.checkpoint.remote() for s, actor in enumerate(self._actors)})

    def compact(self) -> None:
        self._gather({s: actor.call.remote("compact") for s, actor in enumerate(self._actors)})

    def knob_names(self) -> list[str]:
        return self._ray.get(self._actors[0].call.remote("knob_names"), timeout=self.timeout)

    def set_params(self, knobs: str | dict[str, Any]) -> RayShardedIndex:
        from deepmetric.index.base import parse_knobs

        parsed = parse_knobs(knobs)
        self._gather({s: actor.call.remote("set_params", parsed) for s, actor in enumerate(self._actors)})
        self.knobs.update(parsed)
        return self

    def _subsets(self, subset: Any) -> dict[int, np.ndarray | None]:
        if subset is None:
            return dict.fromkeys(range(self.num_shards))
        subset = np.unique(as_ids(subset, None, "subset"))
        return {s: subset[rows] for s, rows in self._split(subset).items()}

    def search(self, q: Any, k: int, *, subset: Any = None, allow_partial: bool = False) -> ShardedSearchResult:
        """Top-``k`` over every shard, merged; ``subset`` restricts the eligible ids (only their shards
        are asked). ``allow_partial``: answer from the reachable shards (see ``missing_shards``)."""
        q = self._checked(q, "q")
        k = check_positive_int("k", k)
        futures = {s: self._actors[s].search.remote(q, k, rows) for s, rows in self._subsets(subset).items()}
        answers, missing = self._gather(futures, allow_partial)
        scores = np.full((q.shape[0], k), -np.inf, np.float32)
        ids = np.full((q.shape[0], k), -1, np.int64)
        if answers:
            scores = np.concatenate([scores] + [answers[s][0] for s in sorted(answers)], axis=1)
            ids = np.concatenate([ids] + [answers[s][1] for s in sorted(answers)], axis=1)
            # decreasing score, then increasing id; missing entries (-1, -inf) last
            order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
            scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        return ShardedSearchResult(scores=scores, ids=ids, missing_shards=tuple(missing))

    def range_search(self, q: Any, threshold: float, *, subset: Any = None) -> RangeSearchResult:
        """Every item with similarity >= ``threshold`` on every shard, per query by decreasing similarity
        (ties: smaller id first)."""
        q = self._checked(q, "q")
        futures = {s: self._actors[s].range_search.remote(q, float(threshold), rows)
                   for s, rows in self._subsets(subset).items()}
        answers, _ = self._gather(futures)
        per_query_ids, per_query_scores = [], []
        for row in range(q.shape[0]):
            ids = np.concatenate([answer[2][answer[0][row]:answer[0][row + 1]] for answer in answers.values()]
                                 or [np.empty(0, np.int64)])
            scores = np.concatenate([answer[1][answer[0][row]:answer[0][row + 1]] for answer in answers.values()]
                                    or [np.empty(0, np.float32)])
            order = np.lexsort((ids, -scores))
            per_query_ids.append(ids[order])
            per_query_scores.append(scores[order])
        lims = np.concatenate([[0], np.cumsum([part.shape[0] for part in per_query_ids])]).astype(np.int64)
        return RangeSearchResult(lims, np.concatenate(per_query_scores).astype(np.float32),
                                 np.concatenate(per_query_ids).astype(np.int64))

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """One index folder per shard (written by its actor: ``path`` must be reachable from every node,
        e.g. shared storage) and ``index.json`` with the SHA-256 of every shard's own manifest, atomically."""
        from deepmetric.io import atomic_directory

        with atomic_directory(path, kind="index", legacy=lambda folder: (folder / MANIFEST).is_file()) as folder:
            folders = {s: folder / SHARD_DIR.format(s) for s in range(self.num_shards)}
            self._gather({s: actor.save.remote(str(folders[s])) for s, actor in enumerate(self._actors)})
            manifest = {
                "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "backend": self.backend,
                "spec": self.spec, "dim": self.dim, "metric": self.metric, "knobs": self.knobs,
                "num_items": len(self),
                "backend_state": {"shards": self.num_shards, "shard_backend": self.shard_backend,
                                  "shard_manifests": {SHARD_DIR.format(s): file_sha256(folders[s] / MANIFEST)
                                                      for s in folders}},
                "files": {},
            }
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def load_ray_index(folder: Path, manifest: dict[str, Any], *, address: str | None = None, verify: bool = True,
                   timeout: float = 60.0) -> RayShardedIndex:
    """Start one actor per saved shard, each loading its folder (checked against the manifest first)."""
    state = manifest["backend_state"]
    for name, digest in state["shard_manifests"].items():
        shard_manifest = Path(folder) / name / MANIFEST
        if not shard_manifest.is_file():
            raise IndexFormatError(f"{folder} is incomplete: {name}/{MANIFEST} is missing")
        if file_sha256(shard_manifest) != digest:
            raise IndexFormatError(f"{shard_manifest} is corrupt: SHA-256 does not match {folder / MANIFEST}")
        read_manifest(shard_manifest.parent, verify=verify)
    index = RayShardedIndex(spec=manifest["spec"], dim=int(manifest["dim"]), metric=manifest["metric"],
                            shards=int(state["shards"]), address=address, shard_backend=state["shard_backend"],
                            timeout=timeout, _folder=Path(folder))
    index.knobs = dict(manifest.get("knobs") or {})
    return index
