"""The 1-D mixture math: probit from log space, Mixture-CDF flow, its inverse by root finding."""

import math

import pytest
import torch

from modeling_tarflow.mixtures import (
    log_cdf_pair,
    lower_log_ndtri,
    mixture_cdf_transform,
    mixture_inverse_cdf,
    mixture_log_cdf,
    mixture_log_prob,
    probit_from_log_cdf,
)
from modeling_tarflow.root_finding import solve_increasing


def random_mixture(shape, num_mixtures, spread=3.0, dtype=torch.float32):
    log_w = torch.log_softmax(2 * torch.randn(*shape, num_mixtures, dtype=dtype), -1)
    mean = spread * torch.randn(*shape, num_mixtures, dtype=dtype)
    log_scale = torch.randn(*shape, num_mixtures, dtype=dtype).clamp(-3, 2)
    return log_w, mean, log_scale


def test_log_ndtri_inverts_log_ndtr_in_float32_deep_tails():
    # |u| up to ~37: far beyond where exp(log Φ(u)) underflows in float32 (|u| ≈ 13)
    u = torch.linspace(-37.0, 0.0, 2001)
    log_p = torch.special.log_ndtr(u.double()).float()
    recovered = lower_log_ndtri(log_p)
    assert torch.allclose(recovered, u, rtol=1e-5, atol=2e-5)


def test_probit_round_trips_both_tails_to_30():
    u = torch.linspace(-30.0, 30.0, 601, dtype=torch.float64)
    log_cdf, log_sf = torch.special.log_ndtr(u), torch.special.log_ndtr(-u)
    recovered = probit_from_log_cdf(log_cdf.float(), log_sf.float())
    assert torch.allclose(recovered.double(), u, atol=5e-5)


def log_space_pair(standardized, log_w):
    return (torch.logsumexp(log_w + torch.special.log_ndtr(standardized), -1),
            torch.logsumexp(log_w + torch.special.log_ndtr(-standardized), -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_space_cdf_pair_matches_log_space_sums_to_float_precision_in_both_tails(dtype):
    torch.manual_seed(0)
    log_w, _, _ = random_mixture((4000,), 7, dtype=dtype)
    # from the middle out to |s| = 60 (F ≈ exp(−1800)): deep tails take the log-space sums
    standardized = (torch.randn(4000, 7, dtype=dtype) * torch.logspace(-1, math.log10(60), 4000, dtype=dtype)[:, None])
    standardized.requires_grad_(True)
    got, expected = log_cdf_pair(standardized, log_w), log_space_pair(standardized.double(), log_w.double())
    eps = torch.finfo(dtype).eps
    for value, reference in zip(got, expected):
        assert torch.isfinite(value).all()
        assert torch.allclose(value.double(), reference, rtol=64 * eps, atol=64 * eps)
    for value, reference in zip(got, expected):   # each tail on its own: their sum's gradient cancels
        grad, = torch.autograd.grad(value.sum(), standardized, retain_graph=True)
        grad_expected, = torch.autograd.grad(reference.sum(), standardized, retain_graph=True)
        assert torch.isfinite(grad).all()
        assert torch.allclose(grad.double(), grad_expected.double(), rtol=256 * eps, atol=1e-20)


def test_log_ndtri_gradient_is_implicit_function_derivative():
    log_p = torch.tensor([-400.0, -20.0, -1.0, math.log(0.5)], dtype=torch.float64, requires_grad=True)
    u = lower_log_ndtri(log_p)
    (grad,) = torch.autograd.grad(u.sum(), log_p)
    # du/dlog p = Φ(u)/φ(u)
    expected = torch.exp(log_p - (-0.5 * u.detach() ** 2 - 0.5 * math.log(2 * math.pi)))
    assert torch.allclose(grad, expected, rtol=1e-8)


def test_mixture_density_integrates_to_one_and_cdf_matches_quadrature():
    log_w, mean, log_scale = random_mixture((), 5, spread=2.0, dtype=torch.float64)
    grid = torch.linspace(-60, 60, 400_001, dtype=torch.float64)
    density = torch.exp(mixture_log_prob(grid, log_w, mean, log_scale))
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-8)
    cumulative = torch.cumulative_trapezoid(density, grid)
    log_cdf, log_sf = mixture_log_cdf(grid[1:], log_w, mean, log_scale)
    assert torch.allclose(cumulative, log_cdf.exp(), atol=1e-8)
    assert torch.allclose(log_cdf.exp() + log_sf.exp(), torch.ones_like(log_sf), atol=1e-12)


def test_flow_density_N_of_u_times_jacobian_integrates_to_one():
    log_w, mean, log_scale = random_mixture((), 4, dtype=torch.float64)
    grid = torch.linspace(-80, 80, 400_001, dtype=torch.float64)
    u, log_det = mixture_cdf_transform(grid, log_w, mean, log_scale)
    density = torch.exp(-0.5 * u ** 2 - 0.5 * math.log(2 * math.pi) + log_det)
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-8)


def test_mixture_cdf_transform_log_det_matches_autograd():
    log_w, mean, log_scale = random_mixture((64,), 6, dtype=torch.float64)
    z = (4 * torch.randn(64, dtype=torch.float64)).requires_grad_()
    u, log_det = mixture_cdf_transform(z, log_w, mean, log_scale)
    (du_dz,) = torch.autograd.grad(u.sum(), z)
    assert torch.allclose(log_det, du_dz.log(), atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_cdf_round_trip(dtype):
    log_w, mean, log_scale = random_mixture((4096,), 8, spread=1.5, dtype=dtype)
    z = 2 * torch.randn(4096, dtype=dtype)
    u, _ = mixture_cdf_transform(z, log_w, mean, log_scale)
    root_tolerance, round_trip_tolerance = (1e-6, 1e-4) if dtype == torch.float32 else (1e-10, 1e-8)
    result = mixture_inverse_cdf(u, log_w, mean, log_scale, tolerance=root_tolerance)
    assert (result.z - z).abs().max().item() <= round_trip_tolerance * z.abs().max().item()
    assert 0 < result.iterations < 100


def adversarial_mixtures(n, means, dtype):
    """Far-apart components, tiny scales (e^-7, the log-scale bound), weights from 1 down to ~e^-30."""
    generator = torch.Generator().manual_seed(3)
    log_w = torch.log_softmax(8 * torch.randn(n, 6, generator=generator, dtype=dtype), -1)
    mean = torch.tensor(means, dtype=dtype).expand(n, 6).clone()
    log_scale = torch.tensor([-7.0, 0.0, -7.0, -6.0, -7.0, 2.0], dtype=dtype).expand(n, 6).clone()
    return log_w, mean, log_scale


@pytest.mark.parametrize("dtype, means", [
    # float32 resolves z to ~1e-7·|z|, so its steep components sit near 0 (a component of scale e^-7 at |z| = 3
    # spans only ~4000 float32 values: no float32 z has |F(z) − Φ(u)| < 1e-5 there); float64 takes them far apart.
    (torch.float32, [-0.01, -30.0, 0.001, 0.0, 0.01, 30.0]),
    (torch.float64, [-200.0, -50.0, -0.01, 0.0, 0.01, 200.0]),
])
def test_root_finder_residual_below_1e_5_on_adversarial_mixtures_and_extreme_u(dtype, means):
    n = 2001
    log_w, mean, log_scale = adversarial_mixtures(n, means, dtype)
    u = torch.linspace(-30, 30, n, dtype=dtype)
    result = mixture_inverse_cdf(u, log_w, mean, log_scale)
    log_cdf, _ = mixture_log_cdf(result.z.double(), log_w.double(), mean.double(), log_scale.double())
    residual = (log_cdf.exp() - torch.special.ndtr(u.double())).abs()
    assert residual.max().item() < 1e-5
    assert result.iterations < 100


def max_residual(result) -> float:
    """The largest |g| at the root finder's last evaluation (a device sync, so the package never computes it)."""
    return float(result.residual.abs().max()) if result.residual.numel() else 0.0


def test_root_finder_freezes_converged_entries_and_reports_iterations():
    # g(z) = z − target: Newton converges in one step for every entry; nothing moves afterwards.
    target = torch.linspace(-3, 3, 7)
    calls = []

    def residual_and_slope(z):
        calls.append(z.clone())
        return z - target, torch.ones_like(z)

    result = solve_increasing(residual_and_slope, target - 10, target + 10, torch.zeros(7), 1e-9, 50)
    assert torch.allclose(result.z, target)
    assert result.iterations == 2 and len(calls) == 2
    assert max_residual(result) == 0.0
