import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """The batches here are tiny: one thread avoids waiting on a second one on a busy shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
