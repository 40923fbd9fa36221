"""Progressive layer-wise training (arXiv 2507.00425 §3.3): which flow layers each stage trains and which it freezes.

Stage s (0-based) uses the first ``n_s`` flow layers. It trains layers ``n_{s-1} .. n_s - 1`` (stage 0 also trains
the codebook, i.e. the encoder and the tied decoder) and keeps the earlier ones frozen: they run under ``no_grad``
and ``requires_grad`` is off, so no optimizer step, weight decay included, can move them. Layers beyond ``n_s`` are
not run at all; they keep their zero-initialised heads, so each one starts its stage as the identity and the NELBO
at the start of a stage equals the NELBO at the end of the previous one. A single stage with every layer is plain
joint training.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.errors import SettingsError


@dataclass(frozen=True)
class Stage:
    index: int
    start_step: int           # first optimizer step of the stage (0-based)
    end_step: int             # one past its last step
    num_flow_layers: int      # n_s: layers in use
    num_frozen_flow_layers: int  # n_{s-1}: of which frozen (0 in the first stage)

    @property
    def num_steps(self) -> int:
        return self.end_step - self.start_step


class StageSchedule:
    """The stages of a run, from the flow-layer counts per stage and each stage's share of the steps."""

    def __init__(self, stage_flow_layers: list[int], max_steps: int, fractions: list[float] | None = None,
                 total_flow_layers: int | None = None):
        if fractions is None or len(stage_flow_layers) == 1:  # a single stage (joint training) takes every step
            fractions = [1.0 / len(stage_flow_layers)] * len(stage_flow_layers)
        _check_schedule(stage_flow_layers, fractions, max_steps, total_flow_layers)
        boundaries = _stage_ends(fractions, max_steps)
        starts = [0] + boundaries[:-1]
        frozen = [0] + list(stage_flow_layers[:-1])
        self.stages = [Stage(i, start, end, layers, num_frozen) for i, (start, end, layers, num_frozen)
                       in enumerate(zip(starts, boundaries, stage_flow_layers, frozen))]

    def stage_at(self, step: int) -> Stage:
        """The stage that optimizer step `step` (0-based) belongs to."""
        for stage in self.stages:
            if step < stage.end_step:
                return stage
        return self.stages[-1]

    def __len__(self) -> int:
        return len(self.stages)

    def describe(self) -> str:
        if len(self.stages) == 1:
            return f"joint training of every layer, steps 0-{self.stages[0].end_step - 1}"
        return "; ".join(f"stage {s.index + 1}: steps {s.start_step}-{s.end_step - 1}, "
                         f"{_layer_range(s.num_frozen_flow_layers + 1, s.num_flow_layers)} trained"
                         + (f", {_layer_range(1, s.num_frozen_flow_layers)} frozen" if s.num_frozen_flow_layers else "")
                         for s in self.stages)


def _layer_range(first: int, last: int) -> str:
    return f"flow layer {first}" if first == last else f"flow layers {first}-{last}"


def _stage_ends(fractions: list[float], max_steps: int) -> list[int]:
    """One past the last step of each stage: the rounded cumulative shares, moved just enough that every stage
    keeps at least one step (``max_steps`` 3 at shares 0.8 / 0.1 / 0.1 gives one step each, not 2, 3, 3)."""
    ends = [round(max_steps * share) for share in _cumulative(fractions)]
    for i in range(len(ends)):  # at least one step after the previous stage's end...
        ends[i] = max(ends[i], (ends[i - 1] if i else 0) + 1)
    ends[-1] = max_steps
    for i in reversed(range(len(ends) - 1)):  # ...and at least one step left for each later stage
        ends[i] = min(ends[i], ends[i + 1] - 1)
    return ends


def _cumulative(fractions: list[float]) -> list[float]:
    total, out = sum(fractions), []
    for share in fractions:
        out.append((out[-1] if out else 0.0) + share / total)
    out[-1] = 1.0
    return out


def _check_schedule(layers: list[int], fractions: list[float], max_steps: int, total: int | None) -> None:
    if not layers or any(b <= a for a, b in zip(layers, layers[1:])) or layers[0] < 1:
        raise SettingsError(f"--stage_flow_layers must be increasing positive layer counts, got {layers}")
    if total is not None and layers[-1] != total:
        raise SettingsError(f"--stage_flow_layers must end with the model's {total} flow layers, got {layers}")
    if len(fractions) != len(layers) or any(not math.isfinite(f) or f <= 0 for f in fractions):
        raise SettingsError(f"--stage_fractions must be {len(layers)} positive numbers, got {fractions}")
    if max_steps < len(layers):
        raise SettingsError(f"--max_steps ({max_steps}) must allow at least one step per stage ({len(layers)})")


def set_trainable(model: nn.Module, stage: Stage) -> None:
    """requires_grad on for the stage's trained parameters only (TarFlowLM: `codebook`, `flow.layers`)."""
    first_trained = stage.num_frozen_flow_layers
    model.codebook.requires_grad_(first_trained == 0)
    for index, layer in enumerate(model.flow.layers):
        layer.requires_grad_(first_trained <= index < stage.num_flow_layers)


@torch.no_grad()
def freeze_averaged_weights(model: nn.Module, averaged: nn.Module, stage: Stage) -> None:
    """Give the parameters that `stage` freezes their EMA values (the weights that will be exported), so that the
    later layers are trained on the very outputs the exported model computes."""
    if stage.num_frozen_flow_layers == 0:
        return
    modules = [(model.codebook, averaged.codebook)] + list(zip(
        model.flow.layers[:stage.num_frozen_flow_layers], averaged.flow.layers[:stage.num_frozen_flow_layers]))
    for trained, ema in modules:
        for parameter, ema_parameter in zip(trained.parameters(), ema.parameters()):
            parameter.copy_(ema_parameter)
