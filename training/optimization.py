"""AdamW over every parameter, and a learning-rate schedule (warmup, then decay) restarted at each stage."""

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from training.arguments import TrainingSettings
from training.stages import StageSchedule


def build_optimizer(model: nn.Module, settings: TrainingSettings) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT's rule: biases, norms and 1-D scales are not decayed).

    One optimizer serves every progressive stage: parameters without a gradient (frozen, or not yet in use) are
    skipped by AdamW's step, decay included, and their moments are created when they first train.
    """
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    not_decayed = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": settings.weight_decay},
              {"params": not_decayed, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(settings.adam_beta1, settings.adam_beta2),
                             eps=settings.adam_epsilon)


def stagewise_lr_factor(schedule: StageSchedule, scheduler_type: str, warmup_steps: int):
    """step → lr factor: the `transformers` schedule of the step's stage, at the step's offset in that stage.

    Each stage trains newly added layers from scratch, so each gets its own warmup and decay. A plain function,
    so `LambdaLR.state_dict` keeps only the step count (the curve is rebuilt from the settings on resume).
    """
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # only to obtain the lr curves
    stage_factors = [get_scheduler(scheduler_type, probe, num_warmup_steps=min(warmup_steps, stage.num_steps - 1),
                                   num_training_steps=stage.num_steps).lr_lambdas[0] for stage in schedule.stages]

    def lr_factor(step: int) -> float:
        stage = schedule.stage_at(step)
        return stage_factors[stage.index](step - stage.start_step)

    return lr_factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: StageSchedule,
                       settings: TrainingSettings) -> LambdaLR:
    """Stepped once per optimizer step (not per process), so the schedule counts optimizer steps on any cluster."""
    return LambdaLR(optimizer, stagewise_lr_factor(schedule, settings.lr_scheduler_type, settings.warmup_steps))
