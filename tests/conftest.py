"""Test-wide settings: nothing may reach a model hub, and tiny tensors run on one intra-op thread."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The test batches are tiny and CI has 2 cores: a second spinning OpenMP thread only adds waiting.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
