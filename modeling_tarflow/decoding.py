"""How one flow layer's inverse is solved over its positions: exactly, patch after patch (with or without a KV
cache), or by parallel Jacobi fixed-point iteration over blocks of patches.

A layer maps h → y with y_t = τ(h_t; θ(h_{<t})), so its inverse is the triangular system h_t = τ⁻¹(y_t; θ(h_{<t}))
in the layer's own order. Every strategy here takes y (B, N, c) in that order and, optionally, a prefix (B, Np, c)
of already known inputs h that precede y (a prompt, for a left-to-right layer), and returns h (B, N, c) with its
statistics. The coupling (`couplings.py`) inverts the patches given their features; the conditioner
(`transformer.py`) computes the features. With `compile_backend`, each coupling's inverse runs under `torch.compile`
(`compiled_inverse`): at batch 1 its hundreds of tiny operations per patch cost more in per-operation overhead than
in arithmetic, and a compiled graph fuses them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from .transformer import CausalConditioner, KVCache


class LayerInversion(NamedTuple):
    """A layer's recovered inputs h (B, N, c), the root-finder iterations of its slowest patch, and, for Jacobi
    decoding, the fixed-point iterations each block took (empty for sequential decoding)."""

    h: torch.Tensor
    root_iterations: int
    fixed_point_iterations: list[int]


def _new_cache(conditioner: CausalConditioner, y: torch.Tensor, prefix: torch.Tensor | None) -> KVCache:
    length = y.shape[1] + (0 if prefix is None else prefix.shape[1])
    return conditioner.new_cache(y.shape[0], length, y.device, _network_dtype(conditioner))


def _network_dtype(conditioner: CausalConditioner) -> torch.dtype:
    return conditioner.proj_in.weight.dtype


def _prefill(conditioner: CausalConditioner, prefix: torch.Tensor | None, cache: KVCache) -> torch.Tensor | None:
    """Run the known prefix through the conditioner to fill the cache; returns its last patch (None if no prefix)."""
    if prefix is None or prefix.shape[1] == 0:
        return None
    conditioner(prefix.to(_network_dtype(conditioner)), cache)
    return prefix[:, -1:]


class _CachedFeatures:
    """f_t from one transformer step per patch; the earlier patches' keys and values stay in a `KVCache`."""

    def __init__(self, conditioner: CausalConditioner, cache: KVCache, previous: torch.Tensor | None,
                 position: int, batch_size: int):
        self.conditioner, self.cache, self.batch_size = conditioner, cache, batch_size
        self.previous, self.position = previous, position

    @classmethod
    def after_prefix(cls, conditioner: CausalConditioner, y: torch.Tensor, prefix: torch.Tensor | None):
        cache = _new_cache(conditioner, y, prefix)
        previous = _prefill(conditioner, prefix, cache)
        return cls(conditioner, cache, previous, 0 if prefix is None else prefix.shape[1], y.shape[0])

    def next(self) -> torch.Tensor:
        previous = None if self.previous is None else self.previous.to(_network_dtype(self.conditioner))
        return self.conditioner.step(previous, self.position, self.cache, self.batch_size)

    def observe(self, patch: torch.Tensor) -> None:
        self.previous, self.position = patch, self.position + 1


class _RecomputedFeatures:
    """f_t from a full transformer pass over every earlier patch: no cache, O(N²) work."""

    def __init__(self, conditioner: CausalConditioner, y: torch.Tensor, prefix: torch.Tensor | None):
        self.conditioner = conditioner
        self.known = [] if prefix is None else [prefix]
        self.unread = y.new_zeros(y.shape[0], 1, y.shape[-1])   # a sequence's last patch is never read

    @classmethod
    def after_prefix(cls, conditioner: CausalConditioner, y: torch.Tensor, prefix: torch.Tensor | None):
        return cls(conditioner, y, prefix)

    def next(self) -> torch.Tensor:
        sequence = torch.cat([*self.known, self.unread], dim=1).to(_network_dtype(self.conditioner))
        return self.conditioner(sequence)[:, -1:]

    def observe(self, patch: torch.Tensor) -> None:
        self.known.append(patch)


# Newton iterations of the root finder's branch-free mode under `torch.compile`: the trained models' root finds take
# 1–6 (bench/results/sampling.json); a patch that needs more is solved again eagerly.
COMPILED_ROOT_ITERATIONS = 8

CouplingInverse = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int]]


def compiled_inverse(coupling, backend: str | None) -> CouplingInverse:
    """`coupling.inverse`, or with a `torch.compile` backend ("inductor", ...) that inverse compiled with the root
    finder's branch-free mode (`COMPILED_ROOT_ITERATIONS` Newton iterations, no data-dependent branch). An entry it
    leaves unconverged is NaN, and then the patch is solved again eagerly: the result is always the exact inverse,
    and its converged entries are the eager ones (`solve_increasing`) up to the compiler's reordering of float
    arithmetic; the iterations it reports are the fixed count. torch.compile keeps the compiled code with the
    coupling's code, so a new wrapper per call recompiles nothing."""
    if backend is None:
        return coupling.inverse
    fast = torch.compile(functools.partial(coupling.inverse, fixed_iterations=COMPILED_ROOT_ITERATIONS),
                         backend=backend)

    def inverse(u: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, int]:
        h, iterations = fast(u, features)
        if bool(torch.isfinite(h).all()):
            return h, iterations
        return coupling.inverse(u, features)
    return inverse


def _invert_patch_by_patch(inverse: CouplingInverse, y: torch.Tensor, features) -> tuple[torch.Tensor, int]:
    """h_t = τ⁻¹(y_t; f_t) for t = 0, 1, ..: the exact triangular solve, features from `features`."""
    patches, iterations = [], 0
    for t in range(y.shape[1]):
        patch, used = inverse(y[:, t:t + 1], features.next())
        features.observe(patch)
        patches.append(patch)
        iterations = max(iterations, used)
    return torch.cat(patches, dim=1).to(y.dtype), iterations


@dataclass(frozen=True)
class SequentialDecoding:
    """The exact inverse: one patch after another, each with one transformer step (`use_cache`: the keys and values
    of the earlier patches are kept in a preallocated `KVCache`) or a full transformer pass over all earlier patches
    (no cache: O(N²), the reference the cached path is tested against). `compile_backend`: see `compiled_inverse`."""

    use_cache: bool = True
    compile_backend: str | None = None

    def invert(self, conditioner: CausalConditioner, coupling, y: torch.Tensor,
               prefix: torch.Tensor | None = None) -> LayerInversion:
        features = (_CachedFeatures if self.use_cache else _RecomputedFeatures).after_prefix(conditioner, y, prefix)
        inverse = compiled_inverse(coupling, self.compile_backend)
        return LayerInversion(*_invert_patch_by_patch(inverse, y, features), [])


@dataclass(frozen=True)
class JacobiDecoding:
    r"""Parallel fixed-point decoding (Jacobi iteration, as STARFlow samples images; Gauss–Seidel across blocks).

    Patches are taken in blocks of `block_size`. Within a block every patch is updated at once from the current
    guess of the ones before it, h^{k+1}_t = τ⁻¹(y_t; θ(h^k_{<t})) — one transformer pass and one batched coupling
    inverse per iteration — until max |h^{k+1} − h^k| ≤ `tolerance` or `max_iterations` (default `block_size`).
    The first k patches of a block are exact after k iterations, so with `max_iterations = block_size` and
    tolerance 0 this is the exact inverse; with a tolerance it stops early, trading a small drift from the
    sequential sample for fewer sequential steps. Finished blocks fill the cache for the next.

    A layer whose inverse is close to a discrete choice (a Mix-d layer over a narrow codebook) barely contracts:
    its blocks need about as many iterations as patches, each iteration costing a whole block. Once a block needs
    more than `fallback_fraction` of its size, the rest of that layer is decoded patch by patch (its count is then
    reported as one block of as many iterations as patches). `compile_backend`: see `compiled_inverse`.
    """

    block_size: int = 16
    max_iterations: int | None = None
    tolerance: float = 1e-4
    fallback_fraction: float = 0.5
    compile_backend: str | None = None

    def invert(self, conditioner: CausalConditioner, coupling, y: torch.Tensor,
               prefix: torch.Tensor | None = None) -> LayerInversion:
        features = _CachedFeatures.after_prefix(conditioner, y, prefix)
        inverse = compiled_inverse(coupling, self.compile_backend)
        blocks, root_iterations, block_iterations = [], 0, []
        for start in range(0, y.shape[1], self.block_size):
            if block_iterations and block_iterations[-1] > self.fallback_fraction * self.block_size:
                h, used = _invert_patch_by_patch(inverse, y[:, start:], features)
                blocks, block_iterations = blocks + [h], block_iterations + [h.shape[1]]
                root_iterations = max(root_iterations, used)
                break
            h, iterations, used = self._solve_block(inverse, y[:, start:start + self.block_size], features)
            blocks, block_iterations = blocks + [h], block_iterations + [iterations]
            root_iterations = max(root_iterations, used)
        return LayerInversion(torch.cat(blocks, dim=1).to(y.dtype), root_iterations, block_iterations)

    def _solve_block(self, inverse: CouplingInverse, y: torch.Tensor, features: _CachedFeatures):
        """Fixed-point iteration for the block starting at `features.position`; the initial guess is h = y (the
        identity map). Leaves `features` after the block."""
        h, root_iterations, conditioner = y, 0, features.conditioner
        first = features.previous if features.previous is not None else y.new_zeros(y.shape[0], 1, y.shape[-1])
        for iteration in range(1, (self.max_iterations or y.shape[1]) + 1):
            shifted = torch.cat([first, h[:, :-1]], dim=1).to(_network_dtype(conditioner))
            h_next, used = inverse(y, conditioner.step(shifted, features.position, features.cache, y.shape[0]))
            root_iterations = max(root_iterations, used)
            change = (h_next - h).abs().max()
            h = h_next.to(y.dtype)
            if iteration == y.shape[1] or bool(change <= self.tolerance):
                break
        features.previous, features.position = h[:, -1:], features.position + y.shape[1]
        return h, iteration, root_iterations


SEQUENTIAL = SequentialDecoding()

__all__ = ["LayerInversion", "SequentialDecoding", "JacobiDecoding", "SEQUENTIAL", "compiled_inverse",
           "COMPILED_ROOT_ITERATIONS"]
