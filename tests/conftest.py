"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture
def torch_one_thread():
    """Run a test with one torch thread: on small tensors intra-op thread sync dominates on 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
