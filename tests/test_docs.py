"""The documentation runs: every module imports, every docstring example passes, the Markdown Python blocks execute.

Modules are discovered by walking the package, so a module that moves or is added is checked without editing this
file. A module may be skipped only when it needs an optional extra (``pip install 'deepmetric[...]'``) that is not
installed; any other import error fails.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.metadata
import pkgutil
import re
import runpy
import sys
from pathlib import Path

import pytest

import deepmetric

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before Python 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOCTEST_FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
# Markdown files whose ```python blocks are user-facing examples.
MARKDOWN_FILES = sorted([REPO / "README.md", REPO / "ARCHITECTURE.md", *(REPO / "docs").glob("*.md")])


def _walk_modules() -> list[tuple[str, Path]]:
    """(name, source file) of every module of deepmetric; packages are imported to find their children."""
    # A package that fails to import hides its children but is still listed, so its own import test reports why.
    walk = pkgutil.walk_packages(deepmetric.__path__, "deepmetric.", onerror=lambda name: None)
    return [("deepmetric", Path(deepmetric.__file__)),
            *((info.name, Path(info.module_finder.find_spec(info.name).origin)) for info in walk)]


MODULES = _walk_modules()
# Decided from the source text so collection does not import every module; the test itself checks that the
# examples were found in docstrings.
MODULES_WITH_EXAMPLES = [name for name, path in MODULES if ">>>" in path.read_text(encoding="utf-8")]


def _optional_distributions() -> dict[str, str]:
    """Distribution name -> extra name, for every optional dependency declared in pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = {}
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in requirements:
            name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
            if name != "deepmetric":
                out.setdefault(name, extra)
    return out


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _missing_extra(error: ModuleNotFoundError) -> str | None:
    """Why ``error`` is an acceptable skip (an optional extra is not installed), or None when it is a real failure."""
    top = (error.name or "").partition(".")[0]
    if not top or top == "deepmetric":
        return None
    for distribution, extra in _optional_distributions().items():
        normalized = distribution.lower().replace("-", "_")
        # faiss-cpu provides faiss, dlib-bin dlib, python-multipart multipart: the import name is the
        # distribution name or one of its underscore-separated ends.
        if top.lower() in (normalized, normalized.split("_")[0], normalized.split("_")[-1]):
            if _installed(distribution):
                return None  # installed but broken: that is a failure, not a skip
            return f"needs the optional '{extra}' extra ({distribution} is not installed)"
    return None


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        reason = _missing_extra(error)
        if reason is None:
            raise
        pytest.skip(f"{name} {reason}")


def test_the_walk_finds_the_package():
    names = {name for name, _ in MODULES}
    # A broken walk (wrong path, swallowed errors) would make every other test here vacuous.
    assert {"deepmetric.registry", "deepmetric.losses", "deepmetric.index"} <= names
    assert len(MODULES_WITH_EXAMPLES) >= 10


@pytest.mark.parametrize(("missing", "distribution"), [("faiss", "faiss-cpu"), ("dlib", "dlib-bin"),
                                                       ("multipart", "python-multipart"), ("timm", "timm")])
def test_only_a_missing_optional_extra_is_a_skip(missing, distribution):
    reason = _missing_extra(ModuleNotFoundError(f"No module named {missing!r}", name=missing))
    # An installed extra that fails to import is a broken install: a failure, not a skip.
    assert (reason is None) == _installed(distribution)
    for name in ("deepmetric.demo", "numpy_typo", ""):
        assert _missing_extra(ModuleNotFoundError(name=name)) is None


@pytest.mark.parametrize("name", [name for name, _ in MODULES])
def test_every_module_imports(name):
    _import(name)


class _Runner(doctest.DocTestRunner):
    """Records the examples that failed only because an optional extra is missing (imported when they run)."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.missing_extras: list[str] = []

    def report_unexpected_exception(self, out, test, example, exc_info):
        reason = _missing_extra(exc_info[1]) if isinstance(exc_info[1], ModuleNotFoundError) else None
        if reason is not None:
            self.missing_extras.append(reason)
        super().report_unexpected_exception(out, test, example, exc_info)


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    module = _import(name)
    tests = [test for test in doctest.DocTestFinder().find(module) if test.examples]
    assert tests, (f"{name} contains '>>>' but no docstring example was found; examples outside a docstring of "
                   f"this module's own objects never run")
    skipped = [f"{test.name} (line {test.lineno + example.lineno + 1})" for test in tests for example in test.examples
               if example.options.get(doctest.SKIP)]
    assert not skipped, f"every docstring example must run; '+SKIP' is used in {skipped}"
    monkeypatch.chdir(tmp_path)  # examples that write files (a model folder, a gallery) write here
    report: list[str] = []
    runner = _Runner(optionflags=DOCTEST_FLAGS)
    for test in tests:
        runner.run(test, out=report.append)
    if runner.missing_extras:
        pytest.skip(f"examples of {name} {runner.missing_extras[0]}")
    if runner.failures:
        pytest.fail(f"{runner.failures} of {runner.tries} examples failed in {name}:\n" + "".join(report),
                    pytrace=False)


def _python_blocks(path: Path) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block in a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1))
            for match in re.finditer(r"^```python[ \t]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


MARKDOWN_BLOCKS = [(path, line, code) for path in MARKDOWN_FILES if path.is_file()
                   for line, code in _python_blocks(path)]


def test_the_readme_has_a_python_block():
    assert any(path.name == "README.md" for path, _, _ in MARKDOWN_BLOCKS)


@pytest.mark.parametrize(("path", "line", "code"), MARKDOWN_BLOCKS,
                         ids=[f"{path.name}:{line}" for path, line, _ in MARKDOWN_BLOCKS])
def test_markdown_python_blocks(path, line, code, tmp_path, monkeypatch):
    if "fashion_mnist" in code:
        from deepmetric.data.builtin import fashion_mnist_available

        if not fashion_mnist_available():
            pytest.skip("the block uses Fashion-MNIST: sudo apt-get install dataset-fashion-mnist")
    monkeypatch.chdir(tmp_path)
    script = tmp_path / f"{path.stem}_line_{line}.py"
    # Padding keeps the traceback's line numbers equal to the Markdown file's.
    script.write_text("\n" * (line - 1) + code, encoding="utf-8")
    runpy.run_path(str(script), run_name="__markdown__")
