"""One-dimensional Gaussian mixtures in log space: the density p_mix1 (§3.2.1, Eq. 5), its CDF F_mix, the
Mixture-CDF flow u = Φ⁻¹(F_mix(z)) (Prop. 1, App. A) and its inverse z = F_mix⁻¹(Φ(u)) (Table 1).

A 1-D mixture over the last axis of its parameters (K components) is given by
`log_w` (normalised log weights), `mean` and `log_scale`, each of shape (..., K); `z` and `u` have shape (...).
Everything is computed from log F and log(1 − F) so that tails are not cut off where `exp` underflows:
u = Φ⁻¹(F) is exact to |u| ≈ 37 in float32 (where log F ≈ −690) instead of |u| ≈ 5.3 for `ndtri(F)` with F clamped.
The two are summed in linear space wherever that is exact to float precision, and in log space elsewhere
(`log_cdf_pair`).
"""

from __future__ import annotations

import math

import torch
from torch.special import log_ndtr, ndtri

from .fast_paths import uses_linear_cdf_sums
from .root_finding import RootFindResult, solve_increasing

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_SQRT_HALF = math.sqrt(0.5)


# Terms more than this many nats below a sum's largest are raised to it before `exp`: that changes the sum by at
# most K·e^{−70} ≈ 2e-26 of it (K ≤ 50257), while vectorised `exp` is 10× slower on inputs far below its range (the
# log-densities of a codebook's far components reach −10⁴), and e^{−70}/K stays a normal float32.
EXP_FLOOR = -70.0


def log_sum_exp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """logsumexp over `dim` with the terms below the largest by more than −`EXP_FLOOR` nats floored there: exact to
    K·e^{−70} relative, and fast where most terms are far below the largest."""
    peak = x.amax(dim, keepdim=True)
    finite = torch.isfinite(peak)
    shift = torch.where(finite, peak, torch.zeros_like(peak))
    total = (shift + (x - shift).clamp_min_(EXP_FLOOR).exp_().sum(dim, keepdim=True).log())
    return torch.where(finite, total, peak).squeeze(dim)            # all −inf (an empty sum): −inf


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor | float = 0.0,
                    log_scale: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log N(x; mean, exp(log_scale)²), elementwise."""
    scaled = (x - mean) * torch.exp(-log_scale) if torch.is_tensor(log_scale) else (x - mean) / math.exp(log_scale)
    return -0.5 * scaled.square() - log_scale - LOG_SQRT_2PI


def mixture_log_prob(z: torch.Tensor, log_w: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p_mix(z) = logsumexp_k [log w_k + log N(z; m_k, s_k²)]."""
    return torch.logsumexp(log_w + normal_log_prob(z.unsqueeze(-1), mean, log_scale), dim=-1)


def mixture_log_cdf(z: torch.Tensor, log_w: torch.Tensor, mean: torch.Tensor,
                    log_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log F(z), log(1 − F(z))) with F(z) = Σ_k w_k Φ((z − m_k)/s_k), each to float precision (no cancellation):
    see `log_cdf_pair`."""
    return log_cdf_pair((z.unsqueeze(-1) - mean) * torch.exp(-log_scale), log_w)


def log_cdf_pair(standardized: torch.Tensor, log_w: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(log F, log(1 − F)) of F = Σ_k w_k Φ(s_k) over the axis `dim` of the components, from the standardized
    s_k = (z − m_k)/s_k and the normalised log weights.

    Both tails are summed in linear space from one erfc per term, Φ(−|s|) = ½ erfc(|s|/√2) and 1 − Φ(−|s|): every
    term of F = Σ_k w_k Φ(s_k) and of 1 − F = Σ_k w_k Φ(−s_k) is then a positive number with float relative accuracy,
    so both sums are too — except for what underflow flushes, at most K·tiny in all. Where F or 1 − F is below
    K·tiny/eps (|u| ≳ 11 in float32) that could matter, and those entries take the log-space sums,
    logsumexp_k(log w_k + log Φ(±s_k)) with `log_ndtr`. On a CPU `log_ndtr` is a scalar loop (about 10× an erfc),
    so the linear sums make the transform (a Mix-d layer's V·d terms per token) several times cheaper.
    """
    # weights below the smallest normal float are raised to it: their error is of the order of what underflow
    # flushes anyway (below), and `exp` is 40× slower where its result would be subnormal
    weight = torch.exp(log_w.clamp_min(math.log(torch.finfo(log_w.dtype).tiny) + 1e-3))
    lower = 0.5 * torch.erfc(standardized.abs() * _SQRT_HALF) * weight        # w_k Φ(−|s_k|)
    upper = weight - lower                                                     # w_k (1 − Φ(−|s_k|))
    negative = standardized < 0
    cdf = torch.where(negative, lower, upper).sum(dim)
    sf = torch.where(negative, upper, lower).sum(dim)
    tiny, eps = torch.finfo(cdf.dtype).tiny, torch.finfo(cdf.dtype).eps
    resolved = torch.minimum(cdf, sf) > standardized.shape[dim] * tiny / eps
    # F = cdf / (cdf + sf): the weights sum to 1 only up to the rounding of their normalisation (a float32
    # log-softmax over 50257 logits is off by 1e-4 of its sum), which would move the smaller tail by as much
    log_total = torch.log(cdf + sf)
    log_cdf, log_sf = torch.log(cdf.clamp_min(tiny)) - log_total, torch.log(sf.clamp_min(tiny)) - log_total
    # On a CPU the log-space sums are computed only when some entry needs them (a device sync is free there);
    # elsewhere, and under torch.compile, always (no sync, no data-dependent branch).
    if standardized.device.type == "cpu" and not torch.compiler.is_compiling() and bool(resolved.all()):
        return log_cdf, log_sf
    log_space_cdf = torch.logsumexp(log_w + log_ndtr(standardized), dim=dim)
    log_space_sf = torch.logsumexp(log_w + log_ndtr(-standardized), dim=dim)
    log_space_total = torch.logaddexp(log_space_cdf, log_space_sf)
    return (torch.where(resolved, log_cdf, log_space_cdf - log_space_total),
            torch.where(resolved, log_sf, log_space_sf - log_space_total))


@torch.no_grad()
def _lower_log_ndtri_value(log_p: torch.Tensor) -> torch.Tensor:
    """Φ⁻¹(exp(log_p)) for log_p ≤ log ½, by a tail-aware start and Newton steps on log Φ(u) = log_p.

    log Φ is concave and increasing, so after the first Newton step the iterates approach the root monotonically
    from the left: three steps reach float precision from either start below.
    """
    # Middle: ndtri is accurate while exp(log_p) is a normal float; deep tail: −u ≈ x with
    # x²/2 + log x + ½log 2π = −log_p (Mills-ratio asymptotics), solved by two fixed-point steps.
    tiny = torch.finfo(log_p.dtype).tiny
    middle = ndtri(torch.exp(log_p).clamp_min(tiny))
    minus_log_p = (-log_p).clamp_min(1.0)
    x = torch.sqrt(2.0 * minus_log_p)
    for _ in range(2):
        x = torch.sqrt((2.0 * (minus_log_p - torch.log(x) - LOG_SQRT_2PI)).clamp_min(1.0))
    u = torch.where(log_p > math.log(tiny) + 10.0, middle, -x)
    for _ in range(3):
        u = u - (log_ndtr(u) - log_p) * torch.exp(log_ndtr(u) - normal_log_prob(u))
    return u


def lower_log_ndtri(log_p: torch.Tensor) -> torch.Tensor:
    """u = Φ⁻¹(exp(log_p)) for log_p ≤ log ½, differentiable.

    The value is found without autograd; one more Newton step taken inside the graph gives the exact
    implicit-function gradient du/dlog_p = Φ(u)/φ(u).
    """
    u = _lower_log_ndtri_value(log_p)
    inverse_slope = torch.exp(log_ndtr(u) - normal_log_prob(u))
    return u - (log_ndtr(u) - log_p) * inverse_slope


def probit_from_log_cdf(log_cdf: torch.Tensor, log_sf: torch.Tensor) -> torch.Tensor:
    """u = Φ⁻¹(F) from log F and log(1 − F), using the smaller tail so that neither branch ever sees F ≈ 1."""
    lower_tail = log_cdf <= log_sf
    u_lower = lower_log_ndtri(torch.minimum(log_cdf, log_sf))
    return torch.where(lower_tail, u_lower, -u_lower)


def mixture_cdf_transform(z: torch.Tensor, log_w: torch.Tensor, mean: torch.Tensor,
                          log_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Mixture-CDF flow (§3.2.1, Prop. 1, Table 1), elementwise over `z`:

        u = Φ⁻¹(F_mix(z)),   log|du/dz| = log p_mix(z) − log N(u; 0, 1).
    """
    u = probit_from_log_cdf(*mixture_log_cdf(z, log_w, mean, log_scale))
    log_det = mixture_log_prob(z, log_w, mean, log_scale) - normal_log_prob(u)
    return u, log_det


def mixture_inverse_cdf(u: torch.Tensor, log_w: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                        tolerance: float = 1e-6, max_iterations: int = 100,
                        fixed_iterations: int | None = None) -> RootFindResult:
    """z = F_mix⁻¹(Φ(u)), elementwise over `u`, by Newton's method with a safeguarded fallback (`solve_increasing`;
    `fixed_iterations`: its branch-free mode, NaN where unconverged).

    Solved in the lower tail and in log space, where it is well conditioned and needs no Φ⁻¹ per iteration: for
    u > 0 the mirrored mixture (means −m) is solved at −u, since 1 − F(z) = F_mirror(−z). There the residual

        g(z) = log F(z) − log Φ(u),   g'(z) = p_mix(z) / F(z),

    is increasing; its tolerance is `tolerance` in probit units, |Φ⁻¹(F(z)) − u| ≈ |g|·Φ(u)/φ(u). The bracket
    [min_k(m_k − c s_k), max_k(m_k + c s_k)] with c = |u| + 1 always holds the root, because every component puts
    mass ≤ Φ(−c) beyond it. Newton starts from the better of the guesses of `quantile_guesses`.
    """
    mirror = torch.copysign(torch.ones_like(u), -u)                        # −1 where u > 0
    u = -u.abs()
    log_target = log_ndtr(u)
    scale = torch.exp(log_scale)
    starts = quantile_guesses(u, log_target, mirror, log_w, mean, scale, branch_free=fixed_iterations is not None)
    mean = mean * mirror.unsqueeze(-1)
    reach = (1.0 - u).unsqueeze(-1) * scale
    lower, upper = (mean - reach).amin(dim=-1), (mean + reach).amax(dim=-1)
    inverse_scale, log_density_offset = 1.0 / scale, log_w - log_scale - LOG_SQRT_2PI

    many = uses_linear_cdf_sums(mean.shape[-1])

    def residual_and_slope(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        standardized = (z.unsqueeze(-1) - mean) * inverse_scale
        log_density = torch.addcmul(log_density_offset, standardized, standardized, value=-0.5)
        if many:   # one erfc per term instead of a log_ndtr, and far terms floored before exp
            log_cdf, log_pdf = log_cdf_pair(standardized, log_w)[0], log_sum_exp(log_density)
        else:      # few terms: fewer operations (the per-operation overhead dominates)
            log_cdf = torch.logsumexp(log_w + log_ndtr(standardized), dim=-1)
            log_pdf = torch.logsumexp(log_density, dim=-1)
        return log_cdf - log_target, torch.exp(log_pdf - log_cdf)

    # |Δu| ≈ |g|·Φ(u)/φ(u) ≤ |g|/0.79 for u ≤ 0, and g cannot be resolved below the rounding of log F (a few ulps
    # of |log Φ(u)|)
    residual_tolerance = 0.79 * tolerance + 8 * torch.finfo(u.dtype).eps * (1 - 2 * log_target)
    result = solve_increasing(residual_and_slope, lower, upper, starts, tolerance, max_iterations, residual_tolerance,
                              fixed_iterations)
    return RootFindResult(result.z * mirror, result.iterations, result.residual)


@torch.no_grad()
def quantile_guesses(u: torch.Tensor, log_target: torch.Tensor, mirror: torch.Tensor, log_w: torch.Tensor,
                     mean: torch.Tensor, scale: torch.Tensor, branch_free: bool = False) -> torch.Tensor:
    """Guesses (C, ...) for the root of the mirrored problem of `mixture_inverse_cdf`, F'(z') = p with
    p = Φ(u) = exp(log_target) ≤ ½ and F' the mixture with means `mirror`·m:

    - moment-matched, exact for a single Gaussian: mean + std · u;
    - staircase, exact when the components do not overlap (a trained tied codebook: narrow, far apart), for the
      entries whose component means spread wider than their components (Var_w(m) > (Σ_k w_k s_k)²); computed only
      when there are some, unless `branch_free` (no data-dependent branch, for `torch.compile`).
    """
    weight = torch.exp(log_w)
    mix_mean = (weight * mean).sum(-1)
    spread = (weight * mean.square()).sum(-1) - mix_mean.square()              # Var_w(m)
    moment = mirror * mix_mean + (spread + (weight * scale.square()).sum(-1)).clamp_min(0).sqrt() * u
    spread_out = spread > (weight * scale).sum(-1).square()
    if mean.shape[-1] == 1 or not (branch_free or bool(spread_out.any())):
        return moment.unsqueeze(0)
    # NaN (never the closest candidate) where an entry's components overlap: each entry's start, and so its root,
    # does not depend on the other entries of the batch
    staircase = torch.where(spread_out, _staircase_quantile(log_target, mirror, weight, mean, scale), torch.nan)
    return torch.stack([moment, staircase])


def _staircase_quantile(log_target: torch.Tensor, mirror: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                        scale: torch.Tensor) -> torch.Tensor:
    """With components sorted by mean and C_k their cumulative weight, p falls in the step of the component k with
    C_{k−1} ≤ p < C_k: the guess is that component's own quantile m_k + s_k Φ⁻¹((p − C_{k−1}) / w_k). The means
    are sorted in their own shape, so a codebook shared by all entries is sorted once; negating the means of a
    mirrored entry reverses their order."""
    sorted_mean, order = torch.sort(mean, dim=-1)
    mirrored = (mirror < 0).unsqueeze(-1)
    order = torch.where(mirrored, order.flip(-1), order).expand(weight.shape)
    sorted_mean = torch.where(mirrored, -sorted_mean.flip(-1), sorted_mean)
    sorted_weight = weight.gather(-1, order)
    before = torch.cumsum(sorted_weight, dim=-1) - sorted_weight            # C_{k−1}
    target = torch.exp(log_target).unsqueeze(-1)
    k = ((before <= target).sum(-1, keepdim=True) - 1).clamp_min(0)
    inner = ((target - before.gather(-1, k)) / sorted_weight.gather(-1, k)).clamp(1e-30, 1 - 1e-7)
    step_scale = scale.expand(weight.shape).gather(-1, order).gather(-1, k)
    return (sorted_mean.expand(weight.shape).gather(-1, k) + step_scale * ndtri(inner)).squeeze(-1)


__all__ = [
    "EXP_FLOOR",
    "log_sum_exp",
    "normal_log_prob",
    "mixture_log_prob",
    "mixture_log_cdf",
    "log_cdf_pair",
    "lower_log_ndtri",
    "probit_from_log_cdf",
    "mixture_cdf_transform",
    "mixture_inverse_cdf",
    "quantile_guesses",
]
