"""Test-wide settings: nothing may reach a model hub, and tiny tensors run on one intra-op thread."""

import os
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_IMPORTS_CONFTEST = re.compile(r"^\s*(from\s+conftest\s+import|import\s+conftest\b)", re.MULTILINE)


def layout_problems(root: Path) -> list[str]:
    """Why some subset of the test folders would not collect together: the test folders are not packages, so
    pytest imports every module by its basename, and two ``x.py`` (or a test importing "conftest", which is
    whichever folder's conftest came last) clash when their folders run in one session."""
    by_name = defaultdict(list)
    problems = []
    for path in sorted(root.rglob("*.py")):
        if path.name != "conftest.py":
            by_name[path.name].append(path.relative_to(root))
        if _IMPORTS_CONFTEST.search(path.read_text(encoding="utf-8")):
            problems.append(f"{path.relative_to(root)} imports from conftest: put shared helpers in a uniquely "
                            f"named module (e.g. <folder>_helpers.py)")
    problems += [f"{name} exists twice ({', '.join(map(str, paths))}): test and helper modules need unique "
                 f"basenames" for name, paths in by_name.items() if len(paths) > 1]
    return problems


def pytest_configure(config):
    problems = layout_problems(Path(__file__).parent)
    if problems:
        raise pytest.UsageError("test layout: " + "; ".join(problems))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The test batches are tiny and CI has 2 cores: a second spinning OpenMP thread only adds waiting.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
