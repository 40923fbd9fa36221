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

from .fast_paths import ieee_float32_matmul
from .mixtures import EXP_FLOOR, LOG_SQRT_2PI, log_cdf_pair, log_sum_exp, probit_from_log_cdf

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
                  order: torch.Tensor | None = None, tolerance: float = PRUNING_TOLERANCE,
                  max_kept: int | None = None) -> PrunedMixture | None:
    """The components of the mixtures (log_alpha (..., K), normalised; mean and log_scale (K,) shared by all
    entries) that the equations F(z) = Φ(u) need, u (...), or None where the full mixtures must be solved: when
    more than K/2 components would be kept, or when the discarded mass of some entry exceeds ε·Φ(−|u|) (possible
    only when `max_kept` caps the kept count). All entries share the kept components (those any of them needs), in
    the order `order` (an argsort of `mean`: the root finder's staircase guess then sorts them fast)."""
    num_components = log_alpha.shape[-1]
    log_threshold = pruning_log_threshold(u, num_components, tolerance)
    needed = (log_alpha >= log_threshold.unsqueeze(-1)).reshape(-1, num_components).any(0)
    index = (order[needed[order]] if order is not None else needed.nonzero().squeeze(-1))[:max_kept]
    if index.numel() > num_components // 2:
        return None
    discarded = torch.ones_like(needed).index_fill_(0, index, False)
    log_discarded = log_sum_exp(log_alpha.masked_fill(~discarded, -math.inf))
    if index.numel() == 0 or not bool((log_discarded <= log_threshold + math.log(num_components)).all()):
        return None
    return PrunedMixture(torch.log_softmax(log_alpha[..., index], dim=-1), mean[index], log_scale[index],
                         log_discarded)


__all__ = ["PRUNING_TOLERANCE", "PrunedMixture", "pruning_log_threshold", "prune_mixture"]


# The frozen forward transform (progressive stages 2–3, Alg. 1) prunes the same way, before the tails are known: a
# row (token, dimension) keeps the components within log(ε·T/K) of its largest weight, which certifies every row
# whose smaller tail min(F, 1 − F) is at least T; the tokens with a row below (|u| ≳ 4.3) are recomputed with all
# components.
FORWARD_MIN_TAIL = 1e-5
# Above this fraction of kept (token, dimension, component) terms the dense transform is cheaper.
DENSE_FRACTION = 0.2


def prefix_log_weights(z: torch.Tensor, log_pi: torch.Tensor, mu: torch.Tensor,
                       log_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Estimates of log π_k + Σ_{i'<i} log N(z_{i'}; μ_{k,i'}, σ_k²) (Lemma 1's unnormalised log α_k^(i)) for the
    dimensions i ≥ 2, (d − 1, N, K), by one float32 matmul of centred factors (the per-(k, i) constants ride along
    through one-hot columns), and a bound on their error per token (1, N, 1): only pruning decisions are taken
    from them."""
    rows, dim = z.shape
    centre = mu.mean(0)
    centred_z, centred_mu = z - centre, mu - centre
    precision = torch.exp(-2 * log_sigma)
    eye = torch.eye(dim - 1, dtype=z.dtype, device=z.device)
    before = torch.ones(dim, dim, dtype=z.dtype, device=z.device).tril(-1)[1:]       # [i' < i], i ≥ 2
    masked = centred_z * before[:, None, :]                                          # (d − 1, N, d)
    latents = torch.cat([masked, masked.square().sum(-1, keepdim=True), eye[:, None, :].expand(-1, rows, -1)], -1)
    offsets = (-0.5 * precision[:, None] * (centred_mu.square() @ before.T)
               - torch.arange(1, dim, device=z.device) * (log_sigma[:, None] + LOG_SQRT_2PI))  # (K, d − 1)
    codebook = torch.cat([centred_mu * precision[:, None], -0.5 * precision[:, None], offsets], -1)
    with ieee_float32_matmul():
        estimate = (latents.reshape((dim - 1) * rows, -1) @ codebook.T).view(dim - 1, rows, -1)
    estimate += log_pi
    # rounding of a length-(2d) dot product and one addition: (2d + 1)·eps times the magnitudes summed
    magnitude = (precision.max() * (centred_z.square().sum(-1) + centred_mu.square().sum(-1).max())
                 + offsets.abs().max() + log_pi.abs().amax(-1))
    error = (2 * dim + 1) * torch.finfo(z.dtype).eps * magnitude + 1e-4
    return estimate, error.view(1, rows, 1)


def pruned_rosenblatt_u(z: torch.Tensor, log_pi: torch.Tensor, mu: torch.Tensor,
                        log_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """u (N, d) of the Rosenblatt transform (Alg. 1) of rows z (N, d) under the mixtures π (log, (N, K)) of the
    components (μ, σ), and which entries it certifies (N, d): dimension 1 (α = π) from all components, the others
    from the certified-kept ones; None when pruning would keep more than `DENSE_FRACTION` of their terms."""
    if _kept_fraction(z[:1], log_pi[:1], mu, log_sigma) > DENSE_FRACTION:              # a one-token probe first
        return None
    kept, peak = _kept_components(z, log_pi, mu, log_sigma)
    if int(kept.sum()) > DENSE_FRACTION * kept.numel():
        return None
    dimension, token, component = kept.nonzero(as_tuple=True)                       # grouped by dimension
    dimension = dimension + 1
    standardized, log_w = _kept_terms(z, log_pi, mu, log_sigma, dimension, token, component)
    row = (dimension - 1) * z.shape[0] + token
    weight = torch.exp((log_w - peak.view(-1)[row]).clamp_min(EXP_FLOOR))
    cdf, sf = _row_tails(standardized, weight, row, peak.numel())
    # every discarded weight is below ε·T/K of the row's largest (kept) one, whatever the estimates' errors
    certified = torch.minimum(cdf, sf) >= FORWARD_MIN_TAIL * (cdf + sf)
    tiny = torch.finfo(torch.float64).tiny
    u_rest = probit_from_log_cdf(torch.log(cdf.clamp_min(tiny) / (cdf + sf)),
                                 torch.log(sf.clamp_min(tiny) / (cdf + sf))).to(z.dtype)
    first = (z[:, :1] - mu[:, 0]) * torch.exp(-log_sigma)                            # (N, K), α^(1) = π
    u_first = probit_from_log_cdf(*log_cdf_pair(first, log_pi))
    u = torch.cat([u_first[:, None], u_rest.view(z.shape[1] - 1, -1).T], 1)
    return u, torch.cat([torch.ones_like(certified[:z.shape[0], None]), certified.view(z.shape[1] - 1, -1).T], 1)


def _kept_components(z, log_pi, mu, log_sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """Which components each row (dimension i ≥ 2, token) keeps, (d − 1, N, K), and each row's largest estimated
    log weight (d − 1, N, 1): those within log(ε·T/K) of it, widened by twice the estimates' error bound."""
    estimate, error = prefix_log_weights(z, log_pi, mu, log_sigma)
    peak = estimate.amax(-1, keepdim=True)
    return estimate >= peak + (math.log(PRUNING_TOLERANCE * FORWARD_MIN_TAIL / mu.shape[0]) - 2 * error), peak


def _kept_fraction(z, log_pi, mu, log_sigma) -> float:
    kept, _ = _kept_components(z, log_pi, mu, log_sigma)
    return float(kept.float().mean())


def _row_tails(standardized: torch.Tensor, weight: torch.Tensor, row: torch.Tensor,
               rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ w Φ(s), Σ w Φ(−s)) per row from its kept terms, both tails from one erfc per term (`log_cdf_pair`),
    summed in float64: a row may add up thousands of terms one after another."""
    lower = 0.5 * torch.erfc(standardized.abs() * math.sqrt(0.5)) * weight
    negative = standardized < 0
    cdf = weight.new_zeros(rows, dtype=torch.float64).index_add_(0, row, torch.where(negative, lower, weight - lower).double())
    sf = torch.zeros_like(cdf).index_add_(0, row, torch.where(negative, weight - lower, lower).double())
    return cdf, sf


def _kept_terms(z, log_pi, mu, log_sigma, dimension, token, component) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly, for each kept (dimension i, token, component k), grouped by i: s = (z_i − μ_{k,i})/σ_k and
    log π_k + Σ_{i'<i} log N(z_{i'}; μ_{k,i'}, σ_k²), from the differences z − μ_k (i of them for dimension i)."""
    inverse_scale = torch.exp(-log_sigma[component])
    standardized = (z[token, dimension] - mu[component, dimension]) * inverse_scale
    prefix = torch.empty_like(standardized)
    bounds = torch.searchsorted(dimension, torch.arange(z.shape[1] + 1, device=z.device)).tolist()
    for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        pairs = slice(start, stop)
        scaled = (z[token[pairs], :i] - mu[component[pairs], :i]) * inverse_scale[pairs, None]
        prefix[pairs] = -0.5 * scaled.square().sum(-1)
    prefix = prefix - dimension * (log_sigma[component] + LOG_SQRT_2PI)
    return standardized, log_pi[token, component] + prefix


__all__ += ["FORWARD_MIN_TAIL", "DENSE_FRACTION", "prefix_log_weights", "pruned_rosenblatt_u"]
