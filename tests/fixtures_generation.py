"""Shared by the generation tests."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """Sampling runs thousands of operations on tiny tensors; with several threads each may wait on a descheduled
    OpenMP worker when other processes share the cores (seconds become minutes), so these tests use one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
