import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Several test processes share 2 cores; with spinning OpenMP threads, one thread each is much faster.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
