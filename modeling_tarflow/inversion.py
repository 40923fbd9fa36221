"""The inverse of one flow layer, h = f⁻¹(y), solved over its patches: exactly, patch after patch (with or without a
KV cache), or by parallel Jacobi fixed-point iteration over blocks of patches.

A layer maps h → y with y_t = τ(h_t; θ(h_{<t})) (§3.3), so its inverse is the triangular system
h_t = τ⁻¹(y_t; θ(h_{<t})) in the layer's own order. Every strategy takes y (B, N, c) in that order and a
`ConditionerContext` that has already read any known patches before y (a prompt, prefilled by the conditioner), and
returns h (B, N, c) with its statistics. The coupling (`couplings.py`) inverts the patches given their features,
its root finder stopped by the strategy's `root` (a sampling setting); the conditioner (`transformer.py`) computes
the features. With `compile_backend`, each coupling's inverse runs under `torch.compile` (`compiled_inverse`): at
batch 1 its hundreds of tiny operations per patch cost more in per-operation overhead than in arithmetic, and a
compiled graph fuses them.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, ClassVar, NamedTuple

import torch

from .root_finding import RootFinding
from .transformer import CausalConditioner, ConditionerContext


CouplingInverse = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int]]


class LayerInversion(NamedTuple):
    """A layer's recovered inputs h (B, N, c), the root-finder iterations of its slowest patch, and, for Jacobi
    inversion, the fixed-point iterations each block took (empty for sequential inversion)."""

    h: torch.Tensor
    root_iterations: int
    fixed_point_iterations: list[int]


class NonFiniteInversionError(FloatingPointError):
    """A flow layer's inverse met NaN or inf: in its parameters, in the conditioner's features, or in a recovered
    patch. The root finder's bracketing would turn non-finite mixture parameters into finite, plausible-looking
    latents, so the inverse refuses them instead, naming the layer."""


def check_finite_parameters(module: torch.nn.Module, layer_name: str) -> None:
    """Refuse a layer whose parameters hold NaN or inf (one device sync for all of them), naming the first."""
    parameters = list(module.named_parameters())
    finite = torch.stack([torch.isfinite(p).all() for _, p in parameters]) if parameters else torch.ones(1)
    if not bool(finite.all()):
        bad = [name for (name, _), ok in zip(parameters, finite.tolist()) if not ok]
        raise NonFiniteInversionError(f"{layer_name}: its parameters hold NaN or inf ({', '.join(bad[:3])}"
                                      f"{', ...' if len(bad) > 3 else ''}); the weights are corrupted")


def checked_inverse(inverse: CouplingInverse, layer_name: str) -> CouplingInverse:
    """`inverse` refusing non-finite conditioner features or recovered patches (one device sync per call for both):
    every inverse step of every strategy, compiled or not, goes through it."""

    def checked(u: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, int]:
        h, iterations = inverse(u, features)
        if not bool(torch.isfinite(features).all() & torch.isfinite(h).all()):
            what = "conditioner features" if not bool(torch.isfinite(features).all()) else "recovered patch"
            raise NonFiniteInversionError(f"{layer_name}: non-finite {what} (NaN or inf) while inverting the flow; "
                                          "the weights are probably corrupted (check torch.isfinite on "
                                          "model.parameters())")
        return h, iterations
    return checked


# Newton iterations of the root finder's branch-free mode under `torch.compile`: the trained models' root finds take
# 1–6 (bench/results/sampling.json); a patch that needs more is solved again eagerly.
COMPILED_ROOT_ITERATIONS = 8



def compiled_inverse(coupling, backend: str | None, root: RootFinding = RootFinding()) -> CouplingInverse:
    """`coupling.inverse` under the stopping rule `root`, or with a `torch.compile` backend ("inductor", ...) that
    inverse compiled with the root finder's branch-free mode (`COMPILED_ROOT_ITERATIONS` Newton iterations, no
    data-dependent branch). An entry it leaves unconverged is NaN, and then the patch is solved again eagerly: the
    result is always the exact inverse, and its converged entries are the eager ones (`solve_increasing`) up to the
    compiler's reordering of float arithmetic; the iterations it reports are the fixed count. torch.compile keeps
    the compiled code with the coupling's code, so a new wrapper per call recompiles nothing."""
    eager = functools.partial(coupling.inverse, root=root)
    if backend is None:
        return eager
    branch_free = dataclasses.replace(root, fixed_iterations=COMPILED_ROOT_ITERATIONS)
    fast = torch.compile(functools.partial(coupling.inverse, root=branch_free), backend=backend,
                         options=_compile_options(coupling, backend))

    def inverse(u: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, int]:
        h, iterations = fast(u, features)
        if bool(torch.isfinite(h).all()):
            return h, iterations
        return eager(u, features)
    return inverse


def _compile_options(coupling, backend: str) -> dict | None:
    """Inductor on CPU generates its wrapper in C++ (`cpp_wrapper`): a patch's inverse is hundreds of tiny fused
    kernels and buffers, and at batch 1 calling and allocating them from Python costs more than the kernels do."""
    device = next(coupling.parameters()).device
    return {"cpp_wrapper": True} if backend == "inductor" and device.type == "cpu" else None


def invert_patch_by_patch(inverse: CouplingInverse, conditioner: CausalConditioner, y: torch.Tensor,
                          context: ConditionerContext, stop=None) -> tuple[torch.Tensor, int]:
    """h_t = τ⁻¹(y_t; f_t) for t = 0, 1, ..: the exact triangular solve, one conditioner step per patch; `stop`
    (patch → bool), when given, ends it early (the patches solved so far are returned)."""
    patches, iterations = [], 0
    for t in range(y.shape[1]):
        patch, used = inverse(y[:, t:t + 1], conditioner.step(context))
        context.advance(patch)
        patches.append(patch)
        iterations = max(iterations, used)
        if stop is not None and stop(patch):
            break
    return torch.cat(patches, dim=1).to(y.dtype), iterations


@dataclass(frozen=True)
class SequentialInversion:
    """The exact inverse: one patch after another, each with one transformer step (`use_cache`: the keys and values
    of the earlier patches are kept in a preallocated `KVCache`) or a full transformer pass over all earlier patches
    (no cache: O(N²), the reference the cached path is tested against). `compile_backend`: see `compiled_inverse`;
    `root`: the root finder's stopping rule."""

    use_cache: bool = True
    compile_backend: str | None = None
    root: RootFinding = RootFinding()

    def invert(self, conditioner: CausalConditioner, coupling, y: torch.Tensor, context: ConditionerContext,
               layer_name: str = "a flow layer") -> LayerInversion:
        inverse = checked_inverse(compiled_inverse(coupling, self.compile_backend, self.root), layer_name)
        return LayerInversion(*invert_patch_by_patch(inverse, conditioner, y, context), [])


@dataclass(frozen=True)
class JacobiInversion:
    r"""Parallel fixed-point inversion (Jacobi iteration, as STARFlow samples images; Gauss–Seidel across blocks).

    Patches are taken in blocks of `block_size`. Within a block every patch is updated at once from the current
    guess of the ones before it, h^{k+1}_t = τ⁻¹(y_t; θ(h^k_{<t})) — one transformer pass and one batched coupling
    inverse per iteration — until max |h^{k+1} − h^k| ≤ `tolerance` or `max_iterations` (default `block_size`).
    The first k patches of a block are exact after k iterations, so with `max_iterations = block_size` and
    tolerance 0 this is the exact inverse; with a tolerance it stops early, trading a small drift from the
    sequential sample for fewer sequential steps. Finished blocks fill the cache for the next.

    A layer whose inverse is close to a discrete choice (a Mix-d layer over a narrow codebook) barely contracts:
    its blocks need about as many iterations as patches, each iteration costing a whole block. Once a block needs
    more than `fallback_fraction` of its size, the rest of that layer is inverted patch by patch (its count is then
    reported as one block of as many iterations as patches). `compile_backend`: see `compiled_inverse`.
    """

    use_cache: ClassVar[bool] = True
    block_size: int = 16
    max_iterations: int | None = None
    tolerance: float = 1e-4
    fallback_fraction: float = 0.5
    compile_backend: str | None = None
    root: RootFinding = RootFinding()

    def invert(self, conditioner: CausalConditioner, coupling, y: torch.Tensor, context: ConditionerContext,
               layer_name: str = "a flow layer") -> LayerInversion:
        inverse = checked_inverse(compiled_inverse(coupling, self.compile_backend, self.root), layer_name)
        blocks, root_iterations, block_iterations = [], 0, []
        for start in range(0, y.shape[1], self.block_size):
            if block_iterations and block_iterations[-1] > self.fallback_fraction * self.block_size:
                h, used = invert_patch_by_patch(inverse, conditioner, y[:, start:], context)
                blocks, block_iterations = blocks + [h], block_iterations + [h.shape[1]]
                root_iterations = max(root_iterations, used)
                break
            h, iterations, used = self._solve_block(inverse, conditioner, y[:, start:start + self.block_size], context)
            blocks, block_iterations = blocks + [h], block_iterations + [iterations]
            root_iterations = max(root_iterations, used)
        return LayerInversion(torch.cat(blocks, dim=1).to(y.dtype), root_iterations, block_iterations)

    def _solve_block(self, inverse: CouplingInverse, conditioner: CausalConditioner, y: torch.Tensor,
                     context: ConditionerContext):
        """Fixed-point iteration for the block starting at `context.position`; the initial guess is h = y (the
        identity map). Leaves `context` after the block."""
        h, root_iterations = y, 0
        for iteration in range(1, (self.max_iterations or y.shape[1]) + 1):
            h_next, used = inverse(y, conditioner.step(context, h))
            root_iterations = max(root_iterations, used)
            change = (h_next - h).abs().max()
            h = h_next.to(y.dtype)
            if iteration == y.shape[1] or bool(change <= self.tolerance):
                break
        context.advance(h)
        return h, iteration, root_iterations


SEQUENTIAL = SequentialInversion()

__all__ = ["LayerInversion", "NonFiniteInversionError", "check_finite_parameters", "checked_inverse", "invert_patch_by_patch", "SequentialInversion", "JacobiInversion", "SEQUENTIAL", "compiled_inverse",
           "COMPILED_ROOT_ITERATIONS"]
