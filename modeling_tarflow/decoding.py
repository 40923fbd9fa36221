"""How one flow layer's inverse is solved over its positions: exactly, patch after patch (with or without a KV
cache), or by parallel Jacobi fixed-point iteration over blocks of patches.

A layer maps h → y with y_t = τ(h_t; θ(h_{<t})), so its inverse is the triangular system h_t = τ⁻¹(y_t; θ(h_{<t}))
in the layer's own order. Every strategy here takes y (B, N, c) in that order and, optionally, a prefix (B, Np, c)
of already known inputs h that precede y (a prompt, for a left-to-right layer), and returns h (B, N, c) with its
statistics. The coupling (`couplings.py`) inverts the patches given their features; the conditioner
(`transformer.py`) computes the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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

    def __init__(self, conditioner: CausalConditioner, y: torch.Tensor, prefix: torch.Tensor | None):
        self.conditioner, self.batch_size = conditioner, y.shape[0]
        self.cache = _new_cache(conditioner, y, prefix)
        self.previous = _prefill(conditioner, prefix, self.cache)
        self.position = 0 if prefix is None else prefix.shape[1]

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

    def next(self) -> torch.Tensor:
        sequence = torch.cat([*self.known, self.unread], dim=1).to(_network_dtype(self.conditioner))
        return self.conditioner(sequence)[:, -1:]

    def observe(self, patch: torch.Tensor) -> None:
        self.known.append(patch)


@dataclass(frozen=True)
class SequentialDecoding:
    """The exact inverse: one patch after another, each with one transformer step (`use_cache`: the keys and values
    of the earlier patches are kept in a preallocated `KVCache`) or a full transformer pass over all earlier patches
    (no cache: O(N²), the reference the cached path is tested against)."""

    use_cache: bool = True

    def invert(self, conditioner: CausalConditioner, coupling, y: torch.Tensor,
               prefix: torch.Tensor | None = None) -> LayerInversion:
        features = (_CachedFeatures if self.use_cache else _RecomputedFeatures)(conditioner, y, prefix)
        patches, iterations = [], 0
        for t in range(y.shape[1]):
            patch, used = coupling.inverse(y[:, t:t + 1], features.next())
            features.observe(patch)
            patches.append(patch)
            iterations = max(iterations, used)
        return LayerInversion(torch.cat(patches, dim=1).to(y.dtype), iterations, [])


@dataclass(frozen=True)
class JacobiDecoding:
    r"""Parallel fixed-point decoding (Jacobi iteration, as STARFlow samples images; Gauss–Seidel across blocks).

    Patches are taken in blocks of `block_size`. Within a block every patch is updated at once from the current
    guess of the ones before it, h^{k+1}_t = τ⁻¹(y_t; θ(h^k_{<t})) — one transformer pass and one batched coupling
    inverse per iteration — until max |h^{k+1} − h^k| ≤ `tolerance` or `max_iterations` (default `block_size`).
    The first k patches of a block are exact after k iterations, so with `max_iterations = block_size` and
    tolerance 0 this is the exact inverse; with a tolerance it stops early, trading a small drift from the
    sequential sample for fewer sequential steps. Finished blocks fill the cache for the next.
    """

    block_size: int = 16
    max_iterations: int | None = None
    tolerance: float = 1e-4

    def invert(self, conditioner: CausalConditioner, coupling, y: torch.Tensor,
               prefix: torch.Tensor | None = None) -> LayerInversion:
        cache = _new_cache(conditioner, y, prefix)
        previous = _prefill(conditioner, prefix, cache)
        offset = 0 if prefix is None else prefix.shape[1]
        blocks, root_iterations, block_iterations = [], 0, []
        for start in range(0, y.shape[1], self.block_size):
            h, iterations, used = self._solve_block(conditioner, coupling, y[:, start:start + self.block_size],
                                                    previous, offset + start, cache)
            blocks.append(h)
            previous = h[:, -1:]
            root_iterations, block_iterations = max(root_iterations, used), block_iterations + [iterations]
        return LayerInversion(torch.cat(blocks, dim=1).to(y.dtype), root_iterations, block_iterations)

    def _solve_block(self, conditioner, coupling, y, previous, position, cache):
        """Fixed-point iteration for one block at `position`; the initial guess is h = y (the identity map)."""
        h, root_iterations = y, 0
        first = previous if previous is not None else y.new_zeros(y.shape[0], 1, y.shape[-1])
        max_iterations = self.max_iterations or y.shape[1]
        for iteration in range(1, max_iterations + 1):
            shifted = torch.cat([first, h[:, :-1]], dim=1).to(_network_dtype(conditioner))
            features = conditioner.step(shifted, position, cache, y.shape[0])
            h_next, used = coupling.inverse(y, features)
            root_iterations = max(root_iterations, used)
            change = (h_next - h).abs().max()
            h = h_next.to(y.dtype)
            if iteration == y.shape[1] or bool(change <= self.tolerance):
                break
        return h, iteration, root_iterations


SEQUENTIAL = SequentialDecoding()

__all__ = ["LayerInversion", "SequentialDecoding", "JacobiDecoding", "SEQUENTIAL"]
