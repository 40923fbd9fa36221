"""The working precision of the density arithmetic: one rule for every module.

Mixture CDFs, Φ⁻¹, the codebook densities log N_k(z) (§3.1) and the base noise u run in float32 or wider, whatever
the network's dtype: a bf16 model (or bf16 autocast) keeps its transformers in bf16, but a softmax over V logits or
a tail probability log Φ(u) ≈ −690 would be lost in bf16. float64 inputs stay float64.
"""

from __future__ import annotations

import contextlib

import torch


def working_dtype(*values: torch.Tensor | torch.dtype) -> torch.dtype:
    """At least float32; float64 if any of the tensors (or dtypes) is float64."""
    dtype = torch.float32
    for value in values:
        dtype = torch.promote_types(dtype, value if isinstance(value, torch.dtype) else value.dtype)
    return dtype


def full_precision(*tensors: torch.Tensor):
    """(a context outside autocast, the tensors in `working_dtype`): bf16 training never reaches the CDF arithmetic.
    Entering a disabled autocast costs microseconds, which add up over the inverse's many small calls, so the
    context is a no-op when autocast is off."""
    dtype, device_type = working_dtype(*tensors), tensors[0].device.type
    enabled = torch.is_autocast_enabled(device_type)
    context = torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()
    return context, [t.to(dtype) for t in tensors]


__all__ = ["working_dtype", "full_precision"]
