import os
import subprocess
import sys

import pytest
import torch

from deepmetric.io import (atomic_directory, atomic_write_text, load_weights, read_json, save_weights,
                           write_json)


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
    with pytest.raises(RuntimeError):
        from deepmetric.io import atomic_path
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_directory_replaces(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    with atomic_directory(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


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
