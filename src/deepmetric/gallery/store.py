"""The gallery's source of truth: one SQLite database in WAL mode holding identities, their templates
(float32 vector blobs, optionally the enrolled image) and the stamp of the model that embedded them.

Every write is one ``BEGIN IMMEDIATE`` transaction committed with ``synchronous=FULL``, so an acknowledged
write survives ``kill -9`` and a killed write leaves nothing behind. Each write bumps a generation counter
and logs the identities it touched, which lets index caches catch up without a full rebuild.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.validation import check_embeddings, check_int, check_non_negative_int, check_positive_int

SCHEMA_VERSION = 1
IDENTITY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}")  # the whole id must match (fullmatch)
MAX_NAME_LENGTH = 256
MAX_METADATA_BYTES = 16_384

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    num INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    metadata TEXT NOT NULL,
    centroid BLOB NOT NULL,
    num_templates INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    template_id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_num INTEGER NOT NULL REFERENCES identities(num) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    image BLOB,
    image_path TEXT,
    source TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_by_identity ON templates(identity_num);
CREATE TABLE IF NOT EXISTS changes (generation INTEGER PRIMARY KEY, identity_num INTEGER NOT NULL);
"""


class GalleryError(ValueError):
    """A gallery operation was refused: unknown or duplicate identity, bad vector, wrong database."""


@contextlib.contextmanager
def refused() -> Iterator[None]:
    """Re-raise a shared check's ValueError (``deepmetric.validation``) as a GalleryError, the one error a
    gallery's users (the service's health check, the CLI) catch for a refused operation; a TypeError, a
    programming mistake, passes unchanged."""
    try:
        yield
    except GalleryError:
        raise
    except ValueError as error:
        raise GalleryError(str(error)) from error


class UnknownIdentityError(GalleryError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateIdentityError(GalleryError):
    pass


@dataclass(frozen=True)
class TemplateInput:
    """One template to store: its vector and, optionally, the image it came from (bytes and/or path)."""

    vector: np.ndarray
    source: str = "embedding"
    image: bytes | None = None
    image_path: str | None = None


@dataclass(frozen=True)
class TemplateRecord:
    template_id: int
    source: str
    has_image: bool
    image_path: str | None
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"template_id": self.template_id, "source": self.source, "has_image": self.has_image,
                "image_path": self.image_path, "created_at": self.created_at}


@dataclass(frozen=True)
class IdentityRecord:
    identity_id: str
    name: str
    metadata: dict[str, Any]
    num_templates: int
    created_at: float
    updated_at: float
    templates: list[TemplateRecord] = field(default_factory=list)
    #: Set by an enrolment from photos: the faces found in each photo (None per photo for whole-image models).
    faces_seen: list[int | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"identity_id": self.identity_id, "name": self.name, "metadata": self.metadata,
               "num_templates": self.num_templates, "created_at": self.created_at, "updated_at": self.updated_at}
        if self.templates:
            out["templates"] = [t.to_dict() for t in self.templates]
        if self.faces_seen is not None:
            out["faces_seen"] = list(self.faces_seen)
        return out


def check_identity_id(identity_id: Any) -> str:
    if not isinstance(identity_id, str) or not IDENTITY_ID_PATTERN.fullmatch(identity_id):
        raise GalleryError(f"identity_id must be 1-128 characters of letters, digits and _.@+- starting with a "
                           f"letter or digit, got {identity_id!r}")
    return identity_id


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise GalleryError(f"name must be a non-empty string of at most {MAX_NAME_LENGTH} characters, got {name!r}")
    return name.strip()


def encode_metadata(metadata: Any) -> str:
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise GalleryError(f"metadata must be a JSON object (dict), got {type(metadata).__name__}")
    try:
        text = json.dumps(metadata, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise GalleryError(f"metadata must be JSON-serialisable without NaN: {error}") from error
    if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        raise GalleryError(f"metadata is {len(text)} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    return text


def unit_vectors(vectors: Any, embedding_dim: int, *, name: str = "embeddings") -> np.ndarray:
    """Validate ``vectors`` as (N, embedding_dim) finite, non-zero, and return them L2-normalised float32."""
    try:
        array = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise GalleryError(f"{name} must be numeric, got {type(vectors).__name__}") from error
    if array.ndim == 1:
        array = array[None, :]
    with refused():
        check_embeddings(name, array, dim=embedding_dim, allow_empty=False)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if np.any(norms < 1e-12):
        raise GalleryError(f"{name} contain an all-zero vector, which has no direction")
    return (array / norms).astype(np.float32)


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes, embedding_dim: int) -> np.ndarray:
    vector = np.frombuffer(blob, dtype="<f4")
    if vector.shape[0] != embedding_dim:
        raise GalleryError(f"stored vector has {vector.shape[0]} values, expected {embedding_dim}: corrupt row")
    return vector


def mean_direction(vectors: np.ndarray) -> np.ndarray:
    """Template aggregation: the normalised mean of unit template vectors (falls back to the first when they
    cancel out exactly)."""
    mean = np.asarray(vectors, dtype=np.float64).mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm < 1e-9:
        return np.asarray(vectors[0], dtype=np.float32)
    return (mean / norm).astype(np.float32)


class GalleryStore:
    """SQLite-backed store. Safe to share between threads (one connection per thread) and processes
    (WAL: readers never block the writer; writers queue on ``busy_timeout``).

    Args:
        path: the database file.
        create: make a new database (refused if one exists); otherwise open an existing one.
        embedding_dim: required with ``create``.
        model_stamp: fingerprint of the embedding model, required with ``create``.
        model_config: JSON description of that model, kept for messages.
        store_images: default for keeping enrolled image bytes (needed by ``reembed``).
        busy_timeout: seconds to wait for another writer before failing.
    """

    def __init__(self, path: str | Path, *, create: bool = False, embedding_dim: int | None = None,
                 model_stamp: str | None = None, model_config: dict[str, Any] | None = None,
                 store_images: bool = True, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        if create:
            if self.path.exists():
                raise GalleryError(f"a gallery already exists at {str(self.path)!r}")
            with refused():
                embedding_dim = check_positive_int("embedding_dim", embedding_dim)
            if not isinstance(model_stamp, str) or not model_stamp:
                raise GalleryError(f"model_stamp must be a non-empty string, got {model_stamp!r}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Biometric data: only the owner may read it. SQLite gives the -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            self._initialise(embedding_dim, model_stamp, model_config or {}, store_images)
        elif not self.path.is_file():
            raise GalleryError(f"no gallery at {str(self.path)!r}; create one with `deepmetric gallery create`")
        meta = self._read_meta()
        if int(meta.get("schema_version", -1)) != SCHEMA_VERSION:
            raise GalleryError(f"{str(self.path)!r} is not a deepmetric gallery of schema {SCHEMA_VERSION} "
                               f"(found {meta.get('schema_version')!r})")
        self.embedding_dim = int(meta["embedding_dim"])
        self.model_stamp = meta["model_stamp"]
        self.model_config = json.loads(meta.get("model_config", "{}"))
        self.store_images = meta.get("store_images", "1") == "1"

    # -- connections -------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                         check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            connection.execute("PRAGMA journal_mode = WAL")
            # FULL: the WAL is fsynced at every commit, so a commit that returned survives power loss too.
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
            # Deleted rows are overwritten with zeros, so a removed face template leaves no bytes behind.
            connection.execute("PRAGMA secure_delete = ON")
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _initialise(self, embedding_dim: int, model_stamp: str, model_config: dict, store_images: bool) -> None:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            # executescript() would commit behind our back, so the schema runs statement by statement.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            rows = {"schema_version": str(SCHEMA_VERSION), "embedding_dim": str(embedding_dim),
                    "model_stamp": model_stamp, "model_config": json.dumps(model_config, sort_keys=True, default=str),
                    "store_images": "1" if store_images else "0", "generation": "0",
                    "created_at": repr(time.time())}
            connection.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", rows.items())
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _read_meta(self) -> dict[str, str]:
        try:
            rows = self._connection().execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as error:
            raise GalleryError(f"{str(self.path)!r} is not a gallery database: {error}") from error
        return dict(rows)

    def close(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
            self._connections.clear()
        self._local = threading.local()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot across several queries."""
        connection = self._connection()
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            connection.execute("COMMIT")

    @contextlib.contextmanager
    def _write(self, touched: list[int]) -> Iterator[sqlite3.Connection]:
        """A write transaction; on success the generation is bumped and ``touched`` identity numbers logged."""
        with self._write_lock:
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                generation = int(connection.execute(
                    "SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
                for num in dict.fromkeys(touched):
                    generation += 1
                    connection.execute("INSERT INTO changes(generation, identity_num) VALUES (?, ?)",
                                       (generation, num))
                if not touched:
                    generation += 1
                connection.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    # -- reads ---------------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        row = self._connection().execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    def __len__(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM identities").fetchone()[0])

    def num_templates(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM templates").fetchone()[0])

    def _num(self, connection: sqlite3.Connection, identity_id: str) -> int:
        row = connection.execute("SELECT num FROM identities WHERE identity_id = ?", (identity_id,)).fetchone()
        if row is None:
            raise UnknownIdentityError(f"unknown identity {identity_id!r}")
        return int(row[0])

    def contains(self, identity_id: str) -> bool:
        return self._connection().execute(
            "SELECT 1 FROM identities WHERE identity_id = ?", (identity_id,)).fetchone() is not None

    @staticmethod
    def _identity(row: Sequence[Any], templates: list[TemplateRecord] | None = None) -> IdentityRecord:
        return IdentityRecord(identity_id=row[0], name=row[1], metadata=json.loads(row[2]), num_templates=row[3],
                              created_at=row[4], updated_at=row[5], templates=templates or [])

    _IDENTITY_COLUMNS = "identity_id, name, metadata, num_templates, created_at, updated_at"

    def get(self, identity_id: str) -> IdentityRecord:
        with self._read() as connection:
            num = self._num(connection, identity_id)
            row = connection.execute(f"SELECT {self._IDENTITY_COLUMNS} FROM identities WHERE num = ?",
                                     (num,)).fetchone()
            templates = [TemplateRecord(template_id=r[0], source=r[1], has_image=bool(r[2]), image_path=r[3],
                                        created_at=r[4])
                         for r in connection.execute(
                             "SELECT template_id, source, image IS NOT NULL, image_path, created_at FROM templates "
                             "WHERE identity_num = ? ORDER BY template_id", (num,))]
        return self._identity(row, templates)

    def list(self, *, offset: int = 0, limit: int | None = None, prefix: str | None = None) -> list[IdentityRecord]:
        """Identities ordered by id, ``limit`` at a time from ``offset``; ``prefix`` filters ids."""
        with refused():
            offset = check_non_negative_int("offset", offset)
            limit = check_int("limit", limit, low=0, allow_none=True)
        query = f"SELECT {self._IDENTITY_COLUMNS} FROM identities"
        params: list[Any] = []
        if prefix:
            query += " WHERE identity_id >= ? AND identity_id < ?"
            params += [prefix, prefix + "\U0010ffff"]
        query += " ORDER BY identity_id LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]
        return [self._identity(row) for row in self._connection().execute(query, params)]

    def identities_by_num(self, nums: Sequence[int]) -> dict[int, dict[str, Any]]:
        """For identity numbers (index ids): id, name, centroid and templates ``[(template_id, vector)]``,
        read in one snapshot; numbers no longer present are absent from the answer."""
        nums = [int(n) for n in dict.fromkeys(nums) if int(n) >= 0]
        if not nums:
            return {}
        marks = ",".join("?" * len(nums))
        out: dict[int, dict[str, Any]] = {}
        with self._read() as connection:
            for num, identity_id, name, centroid in connection.execute(
                    f"SELECT num, identity_id, name, centroid FROM identities WHERE num IN ({marks})", nums):
                out[num] = {"identity_id": identity_id, "name": name,
                            "centroid": from_blob(centroid, self.embedding_dim), "templates": []}
            for template_id, num, vector in connection.execute(
                    f"SELECT template_id, identity_num, vector FROM templates WHERE identity_num IN ({marks}) "
                    f"ORDER BY template_id", nums):
                if num in out:
                    out[num]["templates"].append((template_id, from_blob(vector, self.embedding_dim)))
        return out

    def num_of(self, identity_id: str) -> int:
        return self._num(self._connection(), identity_id)

    def centroids(self, *, batch_size: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All identity centroids as ``(nums int64 (B,), vectors float32 (B, D))`` batches, one snapshot."""
        with self._read() as connection:
            cursor = connection.execute("SELECT num, centroid FROM identities ORDER BY num")
            while True:
                rows = cursor.fetchmany(batch_size)
                if not rows:
                    return
                nums = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                blob = b"".join(r[1] for r in rows)
                yield nums, np.frombuffer(blob, dtype="<f4").reshape(len(rows), self.embedding_dim)

    def template_image(self, identity_id: str, template_id: int) -> bytes | None:
        """The stored image bytes of one template of ``identity_id`` (None when not stored)."""
        row = self._connection().execute(
            "SELECT t.image FROM templates t JOIN identities i ON t.identity_num = i.num "
            "WHERE i.identity_id = ? AND t.template_id = ?", (identity_id, int(template_id))).fetchone()
        if row is None:
            raise UnknownIdentityError(f"identity {identity_id!r} has no template {template_id}")
        return row[0]

    def changes_since(self, generation: int) -> tuple[int, list[int]]:
        """``(current generation, identity numbers touched after generation)`` in one snapshot."""
        with self._read() as connection:
            current = int(connection.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
            nums = [r[0] for r in connection.execute(
                "SELECT DISTINCT identity_num FROM changes WHERE generation > ?", (int(generation),))]
        return current, nums

    def templates(self, *, with_images: bool = False) -> Iterator[dict[str, Any]]:
        """Every template (identity id, template id, source, vector, image bytes/path when asked)."""
        columns = "t.template_id, i.identity_id, t.source, t.vector, t.image_path"
        if with_images:
            columns += ", t.image"
        with self._read() as connection:
            for row in connection.execute(f"SELECT {columns} FROM templates t JOIN identities i "
                                          f"ON t.identity_num = i.num ORDER BY i.identity_id, t.template_id"):
                item = {"template_id": row[0], "identity_id": row[1], "source": row[2],
                        "vector": from_blob(row[3], self.embedding_dim), "image_path": row[4]}
                if with_images:
                    item["image"] = row[5]
                yield item

    # -- writes ---------------------------------------------------------------------------------------
    def _insert_templates(self, connection: sqlite3.Connection, num: int,
                          templates: Sequence[TemplateInput], now: float) -> list[int]:
        ids = []
        for template in templates:
            cursor = connection.execute(
                "INSERT INTO templates(identity_num, vector, image, image_path, source, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (num, to_blob(template.vector), template.image, template.image_path, template.source, now))
            ids.append(int(cursor.lastrowid))
        return ids

    def _refresh_centroid(self, connection: sqlite3.Connection, num: int, now: float) -> int:
        blobs = [r[0] for r in connection.execute("SELECT vector FROM templates WHERE identity_num = ?", (num,))]
        vectors = np.stack([from_blob(b, self.embedding_dim) for b in blobs])
        connection.execute("UPDATE identities SET centroid = ?, num_templates = ?, updated_at = ? WHERE num = ?",
                           (to_blob(mean_direction(vectors)), len(blobs), now, num))
        return len(blobs)

    def _check_templates(self, templates: Sequence[TemplateInput]) -> None:
        if not templates:
            raise GalleryError("at least one template (image or embedding) is needed")
        for template in templates:
            vector = np.asarray(template.vector)
            if vector.shape != (self.embedding_dim,) or not np.all(np.isfinite(vector)):
                raise GalleryError(f"template vector must be finite with shape ({self.embedding_dim},), "
                                   f"got {vector.shape}")

    def add_identity(self, identity_id: str, *, name: str | None, metadata: dict[str, Any] | None,
                     templates: Sequence[TemplateInput]) -> list[int]:
        """Create an identity with its templates atomically; returns the template ids."""
        return self.add_identities([(identity_id, name, metadata, templates)])[0]

    def add_identities(self, records: Sequence[tuple[str, str | None, dict[str, Any] | None,
                                                     Sequence[TemplateInput]]]) -> list[list[int]]:
        """Create several identities ``(identity_id, name, metadata, templates)`` in one transaction (all or
        none: a duplicate id anywhere refuses the whole batch); returns the template ids of each."""
        prepared = []
        for identity_id, name, metadata, templates in records:
            check_identity_id(identity_id)
            self._check_templates(templates)
            prepared.append((identity_id, check_name(identity_id if name is None else name),
                             encode_metadata(metadata), templates))
        touched: list[int] = []
        all_ids = []
        now = time.time()
        with self._write(touched) as connection:
            for identity_id, name, metadata_text, templates in prepared:
                try:
                    cursor = connection.execute(
                        "INSERT INTO identities(identity_id, name, metadata, centroid, num_templates, created_at, "
                        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (identity_id, name, metadata_text, to_blob(mean_direction(
                            np.stack([t.vector for t in templates]))), len(templates), now, now))
                except sqlite3.IntegrityError as error:
                    raise DuplicateIdentityError(f"identity {identity_id!r} already exists") from error
                num = int(cursor.lastrowid)
                touched.append(num)
                all_ids.append(self._insert_templates(connection, num, templates, now))
        return all_ids

    def add_templates(self, identity_id: str, templates: Sequence[TemplateInput]) -> list[int]:
        self._check_templates(templates)
        touched: list[int] = []
        now = time.time()
        with self._write(touched) as connection:
            num = self._num(connection, identity_id)
            touched.append(num)
            template_ids = self._insert_templates(connection, num, templates, now)
            self._refresh_centroid(connection, num, now)
        return template_ids

    def update(self, identity_id: str, *, name: str | None = None, metadata: dict[str, Any] | None = None) -> None:
        """Rename and/or replace the metadata of an identity."""
        updates: dict[str, str] = {}
        if name is not None:
            updates["name"] = check_name(name)
        if metadata is not None:
            updates["metadata"] = encode_metadata(metadata)
        if not updates:
            raise GalleryError("nothing to update: give name and/or metadata")
        assignments = ", ".join(f"{column} = ?" for column in updates)
        touched: list[int] = []
        with self._write(touched) as connection:
            num = self._num(connection, identity_id)
            connection.execute(f"UPDATE identities SET {assignments}, updated_at = ? WHERE num = ?",
                               (*updates.values(), time.time(), num))

    def remove(self, identity_id: str) -> None:
        touched: list[int] = []
        with self._write(touched) as connection:
            num = self._num(connection, identity_id)
            touched.append(num)
            connection.execute("DELETE FROM identities WHERE num = ?", (num,))
        self._scrub_wal()

    def _scrub_wal(self) -> None:
        """Copy the WAL into the database and truncate it, so that the pages that held deleted vectors (and the
        frames that first wrote them) are gone from the WAL file too; secure_delete zeroed them in the database.
        Readers in the middle of a transaction can keep frames alive: then the next removal finishes the job."""
        with contextlib.suppress(sqlite3.Error):
            self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def remove_template(self, template_id: int) -> str:
        """Delete one template; returns its identity id. The last template of an identity cannot be removed
        (remove the identity instead), so every identity always has a vector."""
        touched: list[int] = []
        with self._write(touched) as connection:
            row = connection.execute("SELECT t.identity_num, i.identity_id, i.num_templates FROM templates t JOIN "
                                     "identities i ON t.identity_num = i.num WHERE t.template_id = ?",
                                     (int(template_id),)).fetchone()
            if row is None:
                raise UnknownIdentityError(f"unknown template {template_id!r}")
            num, identity_id, count = row
            if count <= 1:
                raise GalleryError(f"template {template_id} is the last one of identity {identity_id!r}; "
                                   f"remove the identity instead")
            touched.append(num)
            connection.execute("DELETE FROM templates WHERE template_id = ?", (int(template_id),))
            self._refresh_centroid(connection, num, time.time())
        self._scrub_wal()
        return identity_id

    def replace_vectors(self, vectors: dict[int, np.ndarray], *, model_stamp: str, embedding_dim: int,
                        model_config: dict[str, Any]) -> None:
        """Re-embedding: replace every template vector (``template_id -> vector``) and the model stamp in one
        transaction. Templates not in ``vectors`` are deleted, and identities left without any with them."""
        touched: list[int] = []
        now = time.time()
        old_dim = self.embedding_dim
        with self._write(touched) as connection:
            self.embedding_dim = embedding_dim
            try:
                existing = [r[0] for r in connection.execute("SELECT template_id FROM templates")]
                for template_id in existing:
                    if template_id in vectors:
                        connection.execute("UPDATE templates SET vector = ? WHERE template_id = ?",
                                           (to_blob(vectors[template_id]), template_id))
                    else:
                        connection.execute("DELETE FROM templates WHERE template_id = ?", (template_id,))
                connection.execute("DELETE FROM identities WHERE num NOT IN (SELECT identity_num FROM templates)")
                nums = [r[0] for r in connection.execute("SELECT num FROM identities")]
                for num in nums:
                    self._refresh_centroid(connection, num, now)
                touched.extend(nums)
                for key, value in (("model_stamp", model_stamp), ("embedding_dim", str(embedding_dim)),
                                   ("model_config", json.dumps(model_config, sort_keys=True, default=str))):
                    connection.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
                # Every cached index is now meaningless: mark the change log as restarted.
                connection.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('reset_generation', "
                                   "(SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'generation'))")
            except BaseException:
                self.embedding_dim = old_dim
                raise
        self.model_stamp = model_stamp
        self.model_config = model_config
        self._scrub_wal()

    @property
    def reset_generation(self) -> int:
        """Caches older than this generation must be rebuilt, not caught up (set by re-embedding)."""
        row = self._connection().execute("SELECT value FROM meta WHERE key = 'reset_generation'").fetchone()
        return int(row[0]) if row else 0

    def integrity_problems(self) -> list[str]:
        """Consistency checks used by tests and ``deepmetric gallery list --check``: SQLite's own check, every
        identity has templates, template counts and centroids agree with the templates."""
        problems = []
        connection = self._connection()
        result = connection.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            problems.append(f"sqlite integrity_check: {result}")
        with self._read() as connection:
            for num, identity_id, count, centroid in connection.execute(
                    "SELECT num, identity_id, num_templates, centroid FROM identities"):
                blobs = [r[0] for r in connection.execute(
                    "SELECT vector FROM templates WHERE identity_num = ?", (num,))]
                if len(blobs) != count or not blobs:
                    problems.append(f"{identity_id}: num_templates {count} but {len(blobs)} templates stored")
                    continue
                expected = mean_direction(np.stack([from_blob(b, self.embedding_dim) for b in blobs]))
                if not np.allclose(from_blob(centroid, self.embedding_dim), expected, atol=1e-5):
                    problems.append(f"{identity_id}: centroid does not match its templates")
        return problems
