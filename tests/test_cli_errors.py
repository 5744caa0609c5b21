"""Every ``deepmetric`` command answers bad arguments and bad paths with one line, ``error: ...`` or click's
usage error, a non-zero exit code and no traceback (issue 12, items 9 and 10)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from deepmetric.cli import app


def _run(*args: str):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _refused(result) -> str:
    """The one-line reason of a refused command (its message may be wrapped in click's box)."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return " ".join(result.output.replace("│", " ").split())


@pytest.fixture
def npy_files(tmp_path):
    (tmp_path / "text.npy").write_text("hello, not numbers\n")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    return tmp_path


@pytest.mark.parametrize("kind, expected", [("text.npy", "is not a NumPy .npy file"),
                                            ("objects.npy", "holds Python objects, not numbers")])
def test_npy_arguments_say_what_is_wrong_with_the_file(npy_files, kind, expected):
    bad, good = npy_files / kind, npy_files / "x.npy"
    commands = [
        ("index", "build", bad, "-o", npy_files / "index"),
        ("index", "search", npy_files / "no-index", bad),
        ("evaluate", bad, "--labels", good, "-o", npy_files / "eval"),
        ("evaluate", good, "--labels", bad, "-o", npy_files / "eval"),
    ]
    _run("index", "build", good, "-o", npy_files / "built")
    commands.append(("index", "search", npy_files / "built", bad))
    for command in commands:
        message = _refused(_run(*command))
        if command[:2] == ("index", "search") and command[2].name == "no-index":
            continue  # the missing index is reported first
        assert expected in message and "pickled" not in message, (command, message)
