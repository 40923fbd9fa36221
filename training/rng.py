"""Random draws that leave the training RNG untouched, so evaluating or sampling mid-run changes nothing after."""

import contextlib

import torch


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device):
    """Inside: the global torch RNG (and this CUDA device's) seeded with `seed`; on exit: restored as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
