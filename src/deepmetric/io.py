"""Atomic file writes, safetensors weights and JSON sidecars.

Every write goes to a temporary file (or folder) in the same folder, is fsynced, then renamed over the
target, so a kill at any moment leaves either the old version or the new one, never half of one. Folder
writes never replace a folder deepmetric did not write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSON file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


# The only globals a plain-data pickle may name: Python 2 and 3 spell sets through one, and protocol 2 pickles
# written by Python 3 spell bytes as _codecs.encode(text, "latin1") (answered by a shim that does only that).
_PLAIN_GLOBALS: dict[tuple[str, str], Callable] = {
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
}


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes build (dicts, lists, tuples, strings, bytes, numbers, booleans,
    None) plus sets; any other class or function the file names is refused, so loading cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _PLAIN_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: this file may hold only built-in "
                                         "containers, strings, bytes and numbers")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id")


def load_plain_pickle(path: str | os.PathLike, *, encoding: str = "latin1") -> Any:
    """The one way deepmetric reads a pickle it did not write (insightface ``.bin`` pairs, revisited Oxford /
    Paris ``gnd_*.pkl``): a restricted unpickler that builds built-in containers, strings, bytes, numbers and
    sets only, and refuses every class or function the file names with a ``ValueError`` naming the file.
    ``encoding`` says how Python 2 ``str`` objects are read: ``"latin1"`` as text, ``"bytes"`` as bytes.

    Example:
        >>> import pickle, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "plain.pkl")
        >>> with open(path, "wb") as handle:
        ...     pickle.dump({"imlist": ["a", "b"], "ok": {1, 2}}, handle)
        >>> load_plain_pickle(path)
        {'imlist': ['a', 'b'], 'ok': {1, 2}}
        >>> with open(path, "wb") as handle:
        ...     pickle.dump(os.getcwd, handle)
        >>> load_plain_pickle(path)
        Traceback (most recent call last):
        ...
        ValueError: ...: refusing to load posix.getcwd: this file may hold only built-in containers, ...numbers
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle not found: {path}")
    with open(path, "rb") as handle:
        try:
            return _PlainDataUnpickler(handle, encoding=encoding).load()
        except pickle.UnpicklingError as error:
            reason = str(error) if str(error).startswith("refusing") else f"not a readable pickle: {error}"
            raise ValueError(f"{path}: {reason}") from error
        except (EOFError, ValueError, struct.error, IndexError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path} is not a readable pickle: {error}") from error


def load_array(path: str | os.PathLike, *, what: str = "array", mmap: bool = False) -> Any:
    """Read a NumPy ``.npy`` file without ever unpickling it; a missing file, a file of another format or
    one holding Python objects is an error that says which."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such {what} file: {path}")
    with open(path, "rb") as handle:
        head = handle.read(6)
    if head != b"\x93NUMPY":
        hint = " (an .npz archive: pass the .npy inside it)" if head[:2] == b"PK" else ""
        raise ValueError(f"{path} is not a NumPy .npy file{hint}; expected the {what} saved with numpy.save")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise ValueError(f"{path} holds Python objects, not numbers; deepmetric never unpickles files "
                             f"(save a numeric array for the {what})") from error
        raise ValueError(f"{path} is a corrupt .npy file: {error}") from error


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def save_weights(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors as safetensors, atomically. Tensors are made contiguous and moved to the CPU."""
    from safetensors.torch import save_file

    clean = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (never a pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a valid safetensors file: {error}") from error


#: Written by :func:`atomic_directory` into every folder it publishes: which kind of folder deepmetric wrote
#: there. A folder without it is the user's, and is never replaced.
FOLDER_MARKER = ".deepmetric-folder.json"


class FolderInUseError(ValueError):
    """The target of a folder write holds something deepmetric did not write there (or another kind)."""


def _folder_kind(path: Path) -> str | None:
    try:
        return json.loads((path / FOLDER_MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _check_replaceable(target: Path, kind: str, legacy: Callable[[Path], bool] | None) -> None:
    if not (target.exists() or target.is_symlink()):
        return
    if target.is_symlink() or not target.is_dir():
        raise FolderInUseError(f"{target} exists and is not a folder; refusing to replace it "
                               f"(choose a new path for the {kind})")
    if not any(target.iterdir()):
        return
    found = _folder_kind(target)
    if found == kind or (found is None and legacy is not None and legacy(target)):
        return
    what = f"a deepmetric {found} folder" if found else "a folder deepmetric did not write"
    raise FolderInUseError(f"{target} is {what}, not empty; refusing to replace it with a {kind} "
                           f"(choose a new or empty folder)")


def _exchange(source: Path, target: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    libc = _libc()
    if libc is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = libc.renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), rename_exchange)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV, errno.EPERM):
        return False  # the file system or kernel cannot exchange: fall back to two renames
    raise OSError(error, os.strerror(error), str(target))


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        libc.renameat2.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def _parent_lock(parent: Path) -> Iterator[None]:
    """Serialise writers and recovery of the folders in ``parent`` across processes (``flock`` on it)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _old_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _new_prefix(target: Path) -> str:
    return f".{target.name}.new-"


def _recover(target: Path) -> None:
    """Finish what a killed replacement left (caller holds the parent lock): restore the old version when
    the target is missing, then drop leftovers (the old copy, unfinished new folders)."""
    old = _old_path(target)
    if old.is_dir() and not (target.exists() or target.is_symlink()):
        os.replace(old, target)
        _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    prefix = _new_prefix(target)
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*"):
        if leftover.name.endswith(".tmp") and leftover.is_dir() and not _locked_by_writer(leftover):
            shutil.rmtree(leftover, ignore_errors=True)


def _lock_new_folder(folder: Path) -> int | None:
    """Create ``folder``'s marker file and hold an exclusive ``flock`` on it until the fd is closed: the
    sign that a live writer owns ``folder`` (the lock dies with the process)."""
    fd = os.open(folder / FOLDER_MARKER, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return fd
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _locked_by_writer(folder: Path) -> bool:
    """Whether a live writer still holds ``folder``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        fd = os.open(folder / FOLDER_MARKER, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def recover_directory(path: str | os.PathLike) -> Path:
    """Repair ``path`` after a writer was killed mid-replacement: the last complete version is put back in
    place and leftovers are removed. Readers call this before opening a folder; it is cheap when there is
    nothing to do, and does nothing in a folder the process may not write."""
    target = Path(path)
    parent = target.parent
    old = _old_path(target)
    if not parent.is_dir() or not (old.exists() or any(parent.glob(f"{glob.escape(_new_prefix(target))}*"))):
        return target
    with contextlib.suppress(PermissionError), _parent_lock(parent):
        _recover(target)
    return target


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, kind: str,
                     legacy: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` atomically.

    ``kind`` names what is written ("model", "checkpoint", ...) and is recorded in the folder's
    :data:`FOLDER_MARKER`. An existing ``path`` is replaced only when it is empty or deepmetric wrote it as
    the same kind (``legacy(path)`` recognises folders written before the marker existed); anything else,
    a user's folder or a file, raises :class:`FolderInUseError` before any work is done.

    The old version stays until the new one is in place: on Linux the two are swapped in one
    ``renameat2(RENAME_EXCHANGE)``; elsewhere the old one is renamed aside first, and a kill between the
    two renames is repaired by :func:`recover_directory` (the old version comes back). Writers of folders
    in one parent take turns (``flock`` on the parent): do not nest two writers in the same parent.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _parent_lock(target.parent):
            _recover(target)
            _check_replaceable(target, kind, legacy)
            tmp = Path(tempfile.mkdtemp(prefix=_new_prefix(target), suffix=".tmp", dir=target.parent))
            tmp_lock = _lock_new_folder(tmp)
    except OSError as error:
        raise OSError(error.errno, f"cannot write the {kind} folder {target}: {error.strerror}") from error
    try:
        yield tmp
        (tmp / FOLDER_MARKER).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb+") as handle:
                    os.fsync(handle.fileno())
            elif child.is_dir():
                _fsync_dir(child)
        _fsync_dir(tmp)
        with _parent_lock(target.parent):
            _check_replaceable(target, kind, legacy)  # it may have changed while we were writing
            if not target.exists():
                os.replace(tmp, target)
                _fsync_dir(target.parent)
            elif _exchange(tmp, target):
                _fsync_dir(target.parent)
                shutil.rmtree(tmp)  # now the old version
            else:
                old = _old_path(target)
                os.replace(target, old)
                _fsync_dir(target.parent)
                os.replace(tmp, target)
                _fsync_dir(target.parent)
                shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if tmp_lock is not None:
            os.close(tmp_lock)
