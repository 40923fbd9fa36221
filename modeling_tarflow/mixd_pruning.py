r"""Certified pruning of a Mix-d layer's components in its inverse (App. B): dimension i of token t solves the 1-D
mixture equation Σ_k α_k^(i) Φ((z_i − μ_{k,i})/σ_k) = Φ(u_i) (Lemma 1), and most of the K = V posterior weights α^(i)
are negligible once z_{<i} is known.

Keeping only the components with α_k ≥ ε·Φ(−|u_i|)/K bounds what is discarded: every discarded weight is below that,
so their total D < ε·Φ(−|u_i|). Solving the kept mixture (weights renormalised) then changes F(z) by at most 2D in
either tail, i.e. by at most 2ε of the smaller tail Φ(−|u_i|) at the root: with ε = 1e-7 far below the root finder's
own tolerance. D is computed exactly (a log-sum-exp of the discarded weights) and checked against the bound; where
the check fails, or where pruning would keep more than half of the components (no gain), the full mixture is solved.

Dimension 1's weights are the next-token distribution π_t (Prop. 4): it prunes only as far as π_t is peaked.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.special import log_ndtr

from .mixtures import log_sum_exp

# ε: the discarded posterior mass, relative to the smaller tail Φ(−|u|) of the equation being solved.
PRUNING_TOLERANCE = 1e-7


class PrunedMixture(NamedTuple):
    """The kept components of every entry (..., k): renormalised log weights, means and log scales, and the log of
    the discarded mass log D (...)."""

    log_w: torch.Tensor
    mean: torch.Tensor
    log_scale: torch.Tensor
    log_discarded: torch.Tensor


def pruning_log_threshold(u: torch.Tensor, num_components: int,
                          tolerance: float = PRUNING_TOLERANCE) -> torch.Tensor:
    """log(ε·Φ(−|u|)/K): the smallest posterior weight kept for the equation F(z) = Φ(u)."""
    return math.log(tolerance) + log_ndtr(-u.abs()) - math.log(num_components)


def prune_mixture(u: torch.Tensor, log_alpha: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                  tolerance: float = PRUNING_TOLERANCE, max_kept: int | None = None) -> PrunedMixture | None:
    """The components of the mixtures (log_alpha (..., K), normalised; mean and log_scale (K,) shared by all
    entries) that the equations F(z) = Φ(u) need, u (...), or None where the full mixtures must be solved: when
    more than K/2 components would be kept, or when the discarded mass of some entry exceeds ε·Φ(−|u|) (possible
    only when `max_kept` caps the kept count). All entries keep the same number of components, the most that any
    of them needs."""
    num_components = log_alpha.shape[-1]
    log_threshold = pruning_log_threshold(u, num_components, tolerance)
    kept = int((log_alpha >= log_threshold.unsqueeze(-1)).sum(-1).max())
    if kept > num_components // 2:
        return None
    top = log_alpha.topk(max(min(kept, max_kept or kept), 1), dim=-1)
    log_discarded = log_sum_exp(log_alpha.scatter(-1, top.indices, -math.inf))
    if not bool((log_discarded <= log_threshold + math.log(num_components)).all()):
        return None
    return PrunedMixture(torch.log_softmax(top.values, dim=-1), mean[top.indices], log_scale[top.indices],
                         log_discarded)


__all__ = ["PRUNING_TOLERANCE", "PrunedMixture", "pruning_log_threshold", "prune_mixture"]
