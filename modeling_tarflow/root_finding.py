"""A vectorised, safeguarded Newton–bisection solver for many independent increasing 1-D equations g(z) = 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class RootFindResult:
    """Roots `z`, the iterations the slowest entry needed, and the largest residual |g| at the last evaluation."""

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
    `rtsafe` rule); otherwise it bisects. An entry is frozen once |g| ≤ `tolerance` and its Newton step
    |g/g'| ≤ `tolerance`·max(1, |z|) — it then keeps that last Newton step, which by quadratic convergence is
    accurate to about the square of the tolerance — or once its bracket has collapsed to floating-point
    resolution (it then keeps the best point evaluated). Frozen entries stop moving; the loop ends when all are.
    """
    z = start.clamp(lower, upper)
    lower, upper = lower.clone(), upper.clone()
    previous_step = upper - lower
    active = torch.ones_like(z, dtype=torch.bool)
    resolution = 2 * torch.finfo(z.dtype).eps
    best_z, best_residual = z, torch.full_like(z, float("inf"))
    solution, residual, iterations = z, torch.zeros_like(z), 0
    for iterations in range(1, max_iterations + 1):
        residual, slope = residual_and_slope(z)
        improved = residual.abs() < best_residual
        best_z, best_residual = torch.where(improved, z, best_z), torch.where(improved, residual.abs(), best_residual)
        lower = torch.where(active & (residual <= 0), z, lower)
        upper = torch.where(active & (residual > 0), z, upper)
        newton_step = residual / slope
        newton = z - newton_step
        inside = (newton >= lower) & (newton <= upper) & torch.isfinite(newton)
        small_step = (newton_step.abs() <= tolerance * z.abs().clamp_min(1.0)) & (residual.abs() <= tolerance)
        collapsed = (upper - lower) <= resolution * torch.maximum(lower.abs(), upper.abs()).clamp_min(1.0)
        done = active & ((small_step & inside) | (residual == 0) | collapsed)
        solution = torch.where(done, torch.where(small_step & inside, newton, best_z), solution)
        active = active & ~done
        if not bool(active.any()):
            break
        use_newton = inside & (newton > lower) & (newton < upper) & (2 * newton_step.abs() <= previous_step.abs())
        proposal = torch.where(use_newton, newton, 0.5 * (lower + upper))
        previous_step = torch.where(active, proposal - z, previous_step)
        z = torch.where(active, proposal, z)
    solution = torch.where(active, best_z, solution)
    max_residual = float(residual.abs().max()) if z.numel() else 0.0
    return RootFindResult(z=solution, iterations=iterations, max_residual=max_residual)


__all__ = ["RootFindResult", "solve_increasing"]
