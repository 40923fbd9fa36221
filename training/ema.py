"""Exponential moving average of the weights: what is evaluated, sampled and exported (as in MDLM / bd3lms)."""

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmed_up_decay(decay: float, num_averaged: int) -> float:
    """min(decay, (1 + n) / (10 + n)): early averages forget the random initialisation quickly, so short runs
    (the CPU quickstart) export trained weights, while long runs reach the nominal decay."""
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged))


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """A frozen copy of `model` whose parameters track an EMA of the trained ones; buffers are copied, not averaged.

    `torch.optim.swa_utils.AveragedModel` does the bookkeeping (its `n_averaged` buffer is the update count) and is
    an `nn.Module`, so `accelerator.register_for_checkpointing` saves and restores it.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        weight = 1.0 - warmed_up_decay(decay, int(num_averaged))
        torch._foreach_lerp_(averaged, current, weight)

    ema = AveragedModel(model, multi_avg_fn=update, use_buffers=False)
    ema.module.requires_grad_(False)
    ema.module.eval()
    return ema
