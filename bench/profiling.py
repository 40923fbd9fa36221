"""Operation counts: how many tensor operations a call dispatches, in all and per part of a TarFlowLM.

At batch 1 a sampler's time per token is about its operations per token times the per-operation overhead (a few
microseconds on a CPU, a kernel launch on a GPU), so the count is what the speed work reduces, and unlike a timing
it is the same on every machine and under any background load.
"""

from __future__ import annotations

import collections
import contextlib
from unittest import mock

from torch.utils._python_dispatch import TorchDispatchMode

COUPLING_NAMES = {"MixtureRosenblattCoupling": "Mix-d", "MixtureCDFCoupling": "Mix-1", "AffineCoupling": "affine"}


class _OperationCounter(TorchDispatchMode):
    """Counts every operation dispatched while active, under the label of the part of the model running it."""

    def __init__(self):
        super().__init__()
        self.counts, self.part = collections.Counter(), "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.part] += 1
        return func(*args, **(kwargs or {}))

    def labelled(self, part: str, method):
        def call(*args, **kwargs):
            outer, self.part = self.part, part
            try:
                return method(*args, **kwargs)
            finally:
                self.part = outer
        return call


def count_operations(function) -> int:
    """Operations dispatched by `function()`."""
    with _OperationCounter() as counter:
        function()
    return sum(counter.counts.values())


def operations_by_part(model, function) -> dict[str, int]:
    """Operations dispatched by `function()` (e.g. a `generate` call of the TarFlowLM `model`), split into each
    flow layer's transformer (`layer ℓ transformer`) and coupling inverse (`layer ℓ Mix-d inverse`, ...); `other`
    is the rest (noise, the final token draw, bookkeeping)."""
    counter = _OperationCounter()
    with contextlib.ExitStack() as patches:
        for index, layer in enumerate(model.flow.layers, start=1):
            conditioner, coupling = layer.conditioner, layer.coupling
            name = COUPLING_NAMES.get(type(coupling).__name__, type(coupling).__name__)
            for method in ("forward", "step"):
                patches.enter_context(mock.patch.object(conditioner, method, counter.labelled(
                    f"layer {index} transformer", getattr(conditioner, method))))
            patches.enter_context(mock.patch.object(coupling, "inverse", counter.labelled(
                f"layer {index} {name} inverse", coupling.inverse)))
        with counter:
            function()
    return dict(sorted(counter.counts.items()))


__all__ = ["count_operations", "operations_by_part"]
