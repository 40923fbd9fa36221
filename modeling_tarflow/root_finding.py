"""A vectorised, safeguarded Newton–bisection solver for many independent increasing 1-D equations g(z) = 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class RootFindResult:
    """Roots `z`, the iterations the slowest entry needed, and the largest final residual |g(z)|."""

    z: torch.Tensor
    iterations: int
    max_residual: float


@torch.no_grad()
def solve_increasing(
    residual_and_slope: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    lower: torch.Tensor,
    upper: torch.Tensor,
    start: torch.Tensor,
    tolerance: float = 1e-6,
    max_iterations: int = 100,
) -> RootFindResult:
    """Solve g(z) = 0 elementwise for an increasing g with g(lower) ≤ 0 ≤ g(upper).

    Each iteration evaluates g and g' once, shrinks the bracket with the sign of g, and takes the Newton step
    z − g/g' when it lands strictly inside the bracket and the bracket is shrinking fast enough (Numerical Recipes'
    `rtsafe` rule); otherwise it bisects. An entry is frozen once its Newton step |g/g'| is below
    `tolerance`·max(1, |z|) (the distance to the root, to first order) or its bracket has collapsed to floating-point
    resolution, so converged entries stop moving and the loop ends when all have converged.
    """
    z = start.clamp(lower, upper)
    lower, upper = lower.clone(), upper.clone()
    previous_step = upper - lower
    active = torch.ones_like(z, dtype=torch.bool)
    resolution = 4 * torch.finfo(z.dtype).eps
    residual = torch.zeros_like(z)
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        residual, slope = residual_and_slope(z)
        lower = torch.where(active & (residual <= 0), z, lower)
        upper = torch.where(active & (residual > 0), z, upper)
        newton_step = residual / slope
        magnitude = torch.maximum(lower.abs(), upper.abs()).clamp_min(1.0)
        collapsed = (upper - lower) <= resolution * magnitude
        converged = (newton_step.abs() <= tolerance * z.abs().clamp_min(1.0)) | (residual == 0) | collapsed
        active = active & ~converged
        if not bool(active.any()):
            break
        newton = z - newton_step
        use_newton = (newton > lower) & (newton < upper) & (2 * newton_step.abs() <= previous_step.abs())
        use_newton = use_newton & torch.isfinite(newton)
        proposal = torch.where(use_newton, newton, 0.5 * (lower + upper))
        previous_step = torch.where(active, proposal - z, previous_step)
        z = torch.where(active, proposal, z)
    else:
        residual, _ = residual_and_slope(z)
    return RootFindResult(z=z, iterations=iterations, max_residual=float(residual.abs().max()) if z.numel() else 0.0)


__all__ = ["RootFindResult", "solve_increasing"]
