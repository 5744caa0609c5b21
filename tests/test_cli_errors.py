"""Every ``deepmetric`` command answers bad arguments and bad paths with one line, ``error: ...`` or click's
usage error, a non-zero exit code and no traceback (issue 12, items 9 and 10)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from deepmetric.cli import app


def _run(*args: str):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _refused(result, where: str = "") -> str:
    """The one-line reason of a refused command (its message may be wrapped in click's box)."""
    assert result.exit_code != 0, (where, result.output)
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


# -- every command, walked from the command tree ---------------------------------------------------------------

def _commands():
    import typer.main

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, command

    return list(walk(typer.main.get_command(app), []))


COMMANDS = _commands()
#: Options that write where they are told (they are not inputs, so a bad-input case leaves them valid).
OUTPUTS = {"output", "out", "report", "plot", "folder"}
#: Paths a command creates (``serve`` creates a missing gallery, then serves it).
CREATED = {"gallery create": {"gallery"}, "serve": {"gallery"}}
#: Optional inputs given good values too, so that the one bad value is what a command refuses (without --labels,
#: ``evaluate`` of a .npy would refuse every case for that instead).
ALSO_GIVEN = {"evaluate": {"labels"}}
#: Numeric options for which a negative number is a valid value.
NEGATIVE_OK = {"threshold"}  # a cosine similarity: -1 is valid, -2 is not


def _annotation(param) -> str:
    return str(param.type_descriptor.annotation)


def _is_path(param) -> bool:
    return "Path" in _annotation(param)


def _is_number(param) -> bool:
    return _annotation(param) in (str(int), str(float))


def _invocation(path, command, values) -> list[str]:
    """The command line of ``path`` with ``values`` (param name -> text) for its params: every required one
    and the optional ones given."""
    args = list(path)
    for param in command.params:
        if param.name not in values:
            continue
        value = values[param.name]
        if param.param_type_name == "argument":
            args.append(value)
        else:
            args += [param.opts[0], value]
    return args


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Good inputs (so one bad value at a time is what fails) and bad ones."""
    from deepmetric.gallery import Gallery
    from deepmetric.models import build_embedder

    folder = tmp_path_factory.mktemp("cli")
    (folder / "text.npy").write_text("hello, not numbers\n")
    (folder / "a_folder").mkdir()
    np.save(folder / "x.npy", np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    np.save(folder / "labels.npy", np.arange(20) % 4)
    with Gallery.create(folder / "gallery", embedding_dim=4, model_stamp="cli-test",
                        model_config={"calibration": {"metric": "cosine", "threshold": 0.5}}) as gallery:
        gallery.enroll("someone", embeddings=np.eye(4)[:1])  # so commands on an identity reach their options
    build_embedder({"backbone": {"name": "small_cnn", "args": {"width": 8}}, "embedding_dim": 4,
                    "preprocessing": {"image_size": [16, 16], "channels": 3, "mean": [0.5] * 3,
                                      "std": [0.5] * 3}}).save(folder / "model")
    assert _run("index", "build", folder / "x.npy", "-o", folder / "index").exit_code == 0
    return folder


#: Command groups whose good inputs this fixture builds, so a refusal must name the one bad value; the others
#: (their inputs are two-tower models, GLDv2 trees, landmark indexes, ...) may refuse a "good" value first, and are
#: held to a clean one-line refusal only. Give a group its good inputs in GOOD to hold it to the naming too.
INPUTS_BUILT = {"datasets", "gallery", "index", "train", "embed", "evaluate", "serve", "quickstart"}
#: Good values that depend on the command: a new identity to enrol, a data set that exists, an output file type.
GOOD = {"gallery enroll": {"identity_id": "newcomer"}, "datasets show": {"name": "digits"},
        "embed": {"output": "out-embeddings.npy"}}


def _good(command: str, param, folder) -> str:
    name = param.name
    if name in GOOD.get(command, {}):
        value = GOOD[command][name]
        return str(folder / value) if name in OUTPUTS else value
    known = {"gallery": folder / "gallery", "index_path": folder / "index", "labels": folder / "labels.npy",
             "identity_id": "someone", "name": "someone",
             # a model folder where a path is wanted (embed), a registered face model's name where text is
             "model": folder / "model" if _is_path(param) else "dlib-face"}
    if name in OUTPUTS:
        return str(folder / f"out-{name}")
    return str(known.get(name, folder / "x.npy"))


def _names_the_problem(message: str, param, bad: str) -> bool:
    """Whether a refusal names what was wrong: the option (``--batch-size``, ``batch_size``, ``BATCH_SIZE``)
    or the bad path."""
    spellings = {param.name, param.name.upper(), param.name.replace("_", "-"), *param.opts}
    return any(spelling in message for spelling in spellings) or bad in message.replace(" ", "")


BAD_PATHS = {"missing file": "missing/nothing.npy", "folder for a file": "a_folder", "text for .npy": "text.npy"}


@pytest.mark.timeout(60)  # a command that started a server or a benchmark on a bad value fails, not stalls
@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_every_command_refuses_bad_paths_and_negative_numbers_in_one_line(inputs, path, command):
    """Every command of the tree, with one bad value at a time: a one-line refusal naming the problem, before
    any work (a command that started a benchmark, a training run or a server on a bad value would hang here)."""
    name = " ".join(path)
    given = {p.name: _good(name, p, inputs) for p in command.params if p.required or p.name in ALSO_GIVEN.get(name, ())}
    outputs = OUTPUTS | CREATED.get(name, set())
    cases = []
    for param in command.params:
        if _is_path(param) and param.name not in outputs:
            cases += [(f"{param.name}: {kind}", param, bad, {**given, param.name: str(inputs / bad)})
                      for kind, bad in BAD_PATHS.items()]
        elif _is_number(param) and param.name not in NEGATIVE_OK:
            cases.append((f"{param.name} = -2", param, "-2", {**given, param.name: "-2"}))
    if any(p.required for p in command.params):
        cases.append(("nothing given", None, "", {}))
    for case, param, bad, values in cases:
        args = _invocation(path, command, values)
        result = _run(*args)
        where = f"deepmetric {' '.join(map(str, args))} ({case})"
        message = _refused(result, where)
        assert "error:" in message or "Error" in message or "Usage:" in message, (where, message)
        if param is not None and path[0] in INPUTS_BUILT:
            assert _names_the_problem(message, param, bad), (where, message)
        if "error:" in message:
            line = result.output.strip().splitlines()[-1]
            assert line.startswith("error: ") and len(result.output.strip().splitlines()) <= 3, (where, message)


def test_an_identity_id_with_a_trailing_newline_is_refused_on_the_command_line(inputs):
    """Issue 12, item 4: "nl\n" was enrolled beside "nl" (the id pattern ended in $, not a full match)."""
    result = _run("gallery", "enroll", inputs / "gallery", "someone-else\n", "--embeddings", inputs / "x.npy")
    assert "identity_id" in _refused(result) and result.output.startswith("error: ")
    listed = _run("gallery", "list", inputs / "gallery")
    assert listed.exit_code == 0 and "someone-else" not in listed.output
