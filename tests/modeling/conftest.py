"""Fixtures of the model tests: one sampling thread, and a tiny randomised TarFlowLM shared by a test module."""

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


@pytest.fixture(scope="module")
def model():
    """A tiny TarFlowLM (P = 2; Mix-d, Mix-1, affine) with every parameter moved off its initialisation."""
    from modeling_tarflow import TarFlowForCausalFlowLM
    from tests.helpers.modeling import randomize_, tiny_config

    return randomize_(TarFlowForCausalFlowLM(tiny_config(patch_size=2))).eval()
