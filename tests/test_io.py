import os
import subprocess
import sys

import pytest
import torch

from deepmetric.io import (
    FOLDER_MARKER,
    FolderInUseError,
    atomic_directory,
    atomic_write_text,
    load_weights,
    read_json,
    recover_directory,
    save_weights,
    write_json,
)


def test_weights_round_trip(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_weights(tmp_path / "w.safetensors", tensors, metadata={"k": "v"})
    back = load_weights(tmp_path / "w.safetensors")
    assert set(back) == {"a", "b"} and torch.equal(back["a"], tensors["a"])


def test_corrupt_weights_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_weights(path)
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.safetensors")


def test_json_round_trip_and_errors(tmp_path):
    write_json(tmp_path / "c.json", {"x": [1, 2]})
    assert read_json(tmp_path / "c.json") == {"x": [1, 2]}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    from deepmetric.io import atomic_path

    def crash() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        crash()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_directory_replaces_its_own_kind(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target, kind="model") as tmp:
        (tmp / "a").write_text("1")
    with atomic_directory(target, kind="model") as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [FOLDER_MARKER, "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no leftovers beside it


def test_atomic_directory_never_replaces_what_it_did_not_write(tmp_path):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FolderInUseError, match="did not write"), atomic_directory(user, kind="model") as tmp:
        (tmp / "a").write_text("1")
    assert [p.name for p in user.iterdir()] == ["holiday.jpg"]
    (tmp_path / "file").write_text("keep")
    with pytest.raises(FolderInUseError, match="not a folder"), atomic_directory(tmp_path / "file", kind="model"):
        pass
    assert (tmp_path / "file").read_text() == "keep"
    with atomic_directory(tmp_path / "index", kind="index") as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(FolderInUseError, match="deepmetric index folder"), \
            atomic_directory(tmp_path / "index", kind="model"):
        pass
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty", kind="model") as tmp:
        (tmp / "x").write_text("1")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "state.json").write_text("{}")
    with atomic_directory(legacy, kind="checkpoint", legacy=lambda folder: (folder / "state.json").is_file()) as tmp:
        (tmp / "state.json").write_text("[]")
    assert (legacy / "state.json").read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "index", "legacy", "photos"]


# A writer that dies at its N-th file-system step: every os.replace, renameat2 exchange, rmtree, fsync and
# directory fsync of the replacement counts as one step.
_DYING_WRITER = """
import os, shutil, sys
import deepmetric.io as io
target, version, die_at, exchange = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
steps = [0]
def step(function):
    def wrapped(*args, **kwargs):
        steps[0] += 1
        if steps[0] == die_at:
            os._exit(9)
        return function(*args, **kwargs)
    return wrapped
writing = [False]
original_exchange = io._exchange
io._exchange = step(original_exchange if exchange else (lambda source, target: False))
io._fsync_dir = step(io._fsync_dir)
os.replace = step(os.replace)
shutil.rmtree = step(shutil.rmtree)
os.fsync = step(os.fsync)
with io.atomic_directory(target, kind="test") as tmp:
    for name in ("a", "b", "c"):
        (tmp / name).write_text(version * 1000)
print("finished", steps[0])
"""


def _read_version(folder) -> str:
    texts = {p.name: p.read_text() for p in folder.iterdir() if p.name != FOLDER_MARKER}
    assert sorted(texts) == ["a", "b", "c"], sorted(texts)
    versions = {text[0] for text in texts.values()}
    assert len(versions) == 1 and all(len(text) == 1000 for text in texts.values())
    return versions.pop()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_kill_at_every_step_of_a_folder_replacement_keeps_a_whole_version(tmp_path, exchange):
    target = tmp_path / "folder"
    with atomic_directory(target, kind="test") as tmp:
        for name in ("a", "b", "c"):
            (tmp / name).write_text("0" * 1000)
    die_at, seen = 1, {"0": 0, "1": 0}
    while True:
        run = subprocess.run([sys.executable, "-c", _DYING_WRITER, str(target), "1", str(die_at),
                              "1" if exchange else "0"], capture_output=True, text=True, check=False)
        if run.returncode == 0:
            assert run.stdout.startswith("finished")
            break
        assert run.returncode == 9, run.stderr
        recover_directory(target)
        version = _read_version(target)  # a whole version, the old or the new one, never a mix
        seen[version] += 1
        assert [p.name for p in tmp_path.iterdir()] == ["folder"], "recovery left files beside the folder"
        # put the old version back for the next kill point
        if version == "1":
            with atomic_directory(target, kind="test") as tmp:
                for name in ("a", "b", "c"):
                    (tmp / name).write_text("0" * 1000)
        die_at += 1
    assert _read_version(target) == "1"
    assert die_at > 5 and seen["0"] >= 4 and seen["1"] >= 1  # every step was reached


def test_recovery_after_kill_between_the_two_renames(tmp_path):
    target = tmp_path / "folder"
    with atomic_directory(target, kind="test") as tmp:
        (tmp / "a").write_text("old")
    os.replace(target, tmp_path / ".folder.old")  # what a kill between the renames leaves
    (tmp_path / ".folder.new-x.tmp").mkdir()
    (tmp_path / ".folder.new-x.tmp" / "a").write_text("new")
    recover_directory(target)
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_recovery_leaves_a_live_writers_folder_alone(tmp_path):
    target = tmp_path / "folder"
    with atomic_directory(target, kind="test") as tmp:
        (tmp / "a").write_text("old")
        recover_directory(target)  # e.g. a reader opening the folder while it is being rewritten
        assert tmp.is_dir()
        (tmp / "a").write_text("new")
    assert (target / "a").read_text() == "new"


def test_kill_during_writes_never_leaves_partial_file(tmp_path):
    target = tmp_path / "big.txt"
    code = (
        "import sys\nfrom deepmetric.io import atomic_write_text\n"
        f"p = {str(target)!r}\n"
        "i = 0\n"
        "while True:\n"
        "    atomic_write_text(p, str(i) * 200000)\n"
        "    i = (i + 1) % 10\n"
        "    if i == 3: print('ok', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ok"
    proc.kill()
    proc.wait()
    text = target.read_text()
    assert len(text) == 200000 and len(set(text)) == 1
    assert os.path.getsize(target) == 200000
