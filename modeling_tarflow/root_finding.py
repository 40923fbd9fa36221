"""A vectorised solver for many independent increasing 1-D equations g(z) = 0: Newton's method, with a safeguarded
Newton–bisection fallback that always converges. It inverts the Mixture-CDF flows, z = F⁻¹(Φ(u)) (Table 1, App. A;
per dimension of the Rosenblatt inverse, App. B), and its stopping rule (`RootFinding`) is a sampling setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# Bracketed Newton iterations tried before the safeguarded solver takes over. From a good start Newton converges
# quadratically (2–4 iterations); an entry still unconverged after this many is in a region Newton handles badly.
NEWTON_ITERATIONS = 6


@dataclass(frozen=True)
class RootFinding:
    """How the inverse CDFs are solved: `tolerance` in probit units |Φ⁻¹(F(z)) − u|, at most `max_iterations`
    iterations; `fixed_iterations`: the branch-free mode (exactly that many Newton iterations, NaN where
    unconverged), which `torch.compile` needs."""

    tolerance: float = 1e-6
    max_iterations: int = 100
    fixed_iterations: int | None = None

    @classmethod
    def for_model(cls, model_config) -> "RootFinding":
        """The defaults, or the `root_tolerance` / `root_max_iterations` an older config.json still carries (they
        were model settings before they became sampling settings; such a model samples as it did)."""
        default = cls()
        return cls(getattr(model_config, "root_tolerance", None) or default.tolerance,
                   getattr(model_config, "root_max_iterations", None) or default.max_iterations)


class RootFindResult:
    """Roots `z`, the iterations the slowest entry needed, and the residuals g at the last evaluation."""

    def __init__(self, z: torch.Tensor, iterations: int, residual: torch.Tensor):
        self.z, self.iterations, self.residual = z, iterations, residual


class _Convergence:
    """The stopping rule shared by both phases: a Newton step from z is accepted as the root when
    |g/g'| ≤ tolerance·max(1, |z|) and either |g| ≤ residual_tolerance or the step is below float resolution
    (then |g| cannot be made smaller in this dtype)."""

    def __init__(self, tolerance: float, residual_tolerance: torch.Tensor | float, dtype: torch.dtype):
        self.tolerance, self.residual_tolerance = tolerance, residual_tolerance
        self.resolution = 4 * torch.finfo(dtype).eps

    def __call__(self, z: torch.Tensor, residual: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        # step ≤ max(1, |z|) · (tolerance if |g| is small, else the float resolution)
        scale = z.abs().clamp_min(1.0)
        return step.abs() <= torch.where(residual.abs() <= self.residual_tolerance, self.tolerance * scale,
                                         self.resolution * scale)


@torch.no_grad()
def solve_increasing(
    residual_and_slope: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    lower: torch.Tensor,
    upper: torch.Tensor,
    start: torch.Tensor,
    tolerance: float = 1e-6,
    max_iterations: int = 100,
    residual_tolerance: torch.Tensor | float | None = None,
    fixed_iterations: int | None = None,
) -> RootFindResult:
    """Solve g(z) = 0 elementwise for an increasing g with g(lower) ≤ 0 ≤ g(upper).

    `start` is shaped like `lower`, or holds several candidate starts stacked on a new first axis: the first
    iteration evaluates them all (one call, with the extra axis broadcast) and continues from the one whose Newton
    step is shortest.

    Phase 1 is bracketed Newton from `start`, at most `NEWTON_ITERATIONS` iterations: the bracket shrinks with the
    sign of g, the Newton step z − g/g' is taken when it lands inside the bracket and the bracket is bisected
    otherwise; each entry keeps the Newton step of the first iteration at which it converged (so its root does not
    depend on the other entries), and the loop stops once every entry has. From a good start this takes 2–4
    iterations of one evaluation and a handful of elementwise operations. Only if some entry has not converged by
    then does phase 2 (`_safeguarded`) take over, which guarantees convergence.

    With `fixed_iterations`, phase 1 runs exactly that many iterations with no data-dependent branch (what
    `torch.compile` and CUDA graphs need), and an entry that has not converged is NaN instead of going to phase 2:
    the caller checks `isfinite` once and solves again without `fixed_iterations`. A converged entry is the same in
    both modes.

    An entry has converged when its Newton step |g/g'| ≤ `tolerance`·max(1, |z|) and |g| ≤ `residual_tolerance`
    (default: `tolerance`; a tensor gives one per entry) or the step is below float resolution. It then keeps that
    last Newton step, which by quadratic convergence is accurate to about the square of the tolerance.
    """
    residual_tolerance = tolerance if residual_tolerance is None else residual_tolerance
    converged = _Convergence(tolerance, residual_tolerance, start.dtype)
    z, candidates = start.clamp(lower, upper), start.dim() > lower.dim()
    solution = done = None
    iteration = 0
    for iteration in range(1, (fixed_iterations or min(NEWTON_ITERATIONS, max_iterations)) + 1):
        residual, slope = residual_and_slope(z)
        step = residual / slope
        if candidates and iteration == 1:
            z, residual, step = _closest_candidate(z, residual, step)
        newton = z - step
        now = converged(z, residual, step)
        solution, done = (newton, now) if done is None else (torch.where(done, solution, newton), done | now)
        if fixed_iterations is None and bool(done.all()):
            return RootFindResult(solution, iteration, residual)
        lower = torch.where(residual <= 0, z, lower)
        upper = torch.where(residual > 0, z, upper)
        # non-strict: a Newton point on the bracket's edge is that edge's own root (g = 0), not a stall
        z = torch.where((newton >= lower) & (newton <= upper), newton, 0.5 * (lower + upper))
    if fixed_iterations is not None:
        return RootFindResult(torch.where(done, solution, torch.nan), iteration, residual)
    result = _safeguarded(residual_and_slope, lower, upper, z, converged, max_iterations - iteration, ~done)
    return RootFindResult(torch.where(done, solution, result.z), iteration + result.iterations, result.residual)


def _safeguarded(residual_and_slope, lower, upper, z, converged: _Convergence, max_iterations: int,
                 active: torch.Tensor) -> RootFindResult:
    """Newton–bisection for the `active` entries: each iteration shrinks the bracket with the sign of g and takes
    the Newton step when it lands strictly inside the bracket and the bracket is shrinking fast enough (Numerical
    Recipes' `rtsafe` rule), otherwise bisects. Converged entries are frozen; an entry whose bracket has collapsed
    to float resolution keeps its current point. The loop ends when every entry is frozen."""
    lower, upper = lower.clone(), upper.clone()
    previous_step = upper - lower
    solution, residual, iterations = z, torch.zeros_like(z), 0
    for iterations in range(1, max_iterations + 1):
        residual, slope = residual_and_slope(z)
        lower = torch.where(residual <= 0, z, lower)
        upper = torch.where(residual > 0, z, upper)
        step = residual / slope
        newton = z - step
        inside = (newton >= lower) & (newton <= upper)
        accepted = inside & converged(z, residual, step)
        collapsed = (upper - lower) <= converged.resolution * torch.maximum(lower.abs(), upper.abs()).clamp_min(1.0)
        done = active & (accepted | collapsed | (residual == 0))
        solution = torch.where(done, torch.where(accepted, newton, z), solution)
        active = active & ~done
        if not bool(active.any()):
            break
        use_newton = inside & (2 * step.abs() <= previous_step.abs())
        proposal = torch.where(use_newton, newton, 0.5 * (lower + upper))
        previous_step = proposal - z
        z = torch.where(active, proposal, z)
    return RootFindResult(torch.where(active, z, solution), iterations, residual)


def _closest_candidate(z: torch.Tensor, residual: torch.Tensor, step: torch.Tensor):
    """Per entry, the candidate start (first axis) whose Newton step |g/g'| — an estimate of its distance to the
    root — is shortest."""
    if len(z) == 1:
        return z[0], residual[0], step[0]
    best = step.abs().nan_to_num(float("inf")).argmin(0, keepdim=True)
    return [x.gather(0, best).squeeze(0) for x in (z, residual, step)]


__all__ = ["RootFinding", "RootFindResult", "solve_increasing", "NEWTON_ITERATIONS"]
