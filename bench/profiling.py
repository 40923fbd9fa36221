"""Where a TarFlowLM call spends its work, per part of the model: the tensor operations it dispatches, and its
wall-clock seconds.

At batch 1 a sampler's time per token is about its operations per token times the per-operation overhead (a few
microseconds on a CPU, a kernel launch on a GPU), so the count is what the speed work reduces, and unlike a timing
it is the same on every machine and under any background load. A compiled inverse dispatches no operations one by
one, so for it the seconds per part are the profile.
"""

from __future__ import annotations

import collections
import contextlib
import time
from unittest import mock

from torch.utils._python_dispatch import TorchDispatchMode

from modeling_tarflow import inversion

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


def seconds_by_part(model, function) -> dict[str, float]:
    """Wall seconds of `function()` (e.g. a `generate` call of the TarFlowLM `model`) in each flow layer's
    transformer steps (`layer ℓ transformer`) and coupling inverses (`layer ℓ Mix-d inverse`, ..., compiled or not:
    the function `inversion.compiled_inverse` returns is what is timed), and the rest (`other`)."""
    seconds = collections.Counter()
    labels = {id(layer.coupling): f"layer {index} "
              f"{COUPLING_NAMES.get(type(layer.coupling).__name__, type(layer.coupling).__name__)} inverse"
              for index, layer in enumerate(model.flow.layers, start=1)}

    def timed(label: str, method):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - start
        return call

    def timed_inverse(coupling, *args, **kwargs):
        return timed(labels[id(coupling)], compiled_inverse(coupling, *args, **kwargs))

    compiled_inverse = inversion.compiled_inverse
    with contextlib.ExitStack() as patches:
        for index, layer in enumerate(model.flow.layers, start=1):
            patches.enter_context(mock.patch.object(layer.conditioner, "step", timed(
                f"layer {index} transformer", layer.conditioner.step)))
        patches.enter_context(mock.patch.object(inversion, "compiled_inverse", timed_inverse))
        start = time.perf_counter()
        function()
        total = time.perf_counter() - start
    return {**dict(sorted(seconds.items())), "other": total - sum(seconds.values()), "total": total}


__all__ = ["count_operations", "operations_by_part", "seconds_by_part"]
