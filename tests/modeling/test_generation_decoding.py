"""Decoding a flow layer's inverse: the KV cache changes nothing, Jacobi iteration converges to the sequential
sample, and the root finder converges for every entry."""

import math

import pytest
import torch
from tests.helpers.modeling import randomize_, tiny_config

from modeling_tarflow import TarFlowForCausalFlowLM
from modeling_tarflow.inversion import JacobiInversion, SequentialInversion
from modeling_tarflow.mixtures import mixture_inverse_cdf, mixture_log_cdf
from modeling_tarflow.root_finding import solve_increasing
from modeling_tarflow.transformer import KVCache

pytestmark = pytest.mark.usefixtures("single_thread")

MIXED_LAYERS = [
    {"coupling": "mixture_rosenblatt", "num_layers": 1},
    {"coupling": "mixture_cdf", "num_mixtures": 3, "num_layers": 2},              # MAF head, right to left
    {"coupling": "affine", "num_layers": 1, "autoregressive_dims": True},
    {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 1, "autoregressive_dims": False, "direction": "r2l"},
]


def mixed_model(patch_size):
    config = tiny_config(patch_size=patch_size, flow_layers=MIXED_LAYERS)
    return randomize_(TarFlowForCausalFlowLM(config)).eval()


@pytest.mark.parametrize("patch_size", [1, 2])
def test_cached_and_uncached_sequential_decoding_agree(patch_size):
    model = mixed_model(patch_size)
    u = torch.randn(3, 16, 3)
    cached = model.flow.inverse(u, inversion=SequentialInversion(use_cache=True))
    uncached = model.flow.inverse(u, inversion=SequentialInversion(use_cache=False))
    for a, b in zip(cached.hidden_states, uncached.hidden_states):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert cached.root_iterations == uncached.root_iterations
    ids = [model.generate(max_new_tokens=16, num_return_sequences=3, seed=4, use_cache=flag) for flag in (True, False)]
    assert torch.equal(*ids)


def test_kv_cache_is_written_in_place_never_reallocated():
    cache = KVCache(num_layers=1, batch_size=2, num_heads=2, max_length=6, head_dim=4, device="cpu",
                    dtype=torch.float32)
    storage = cache.keys[0].data_ptr()
    for start in range(6):
        keys, _ = cache.update(0, torch.full((2, 2, 1, 4), float(start)), torch.zeros(2, 2, 1, 4), start)
        assert keys.shape[2] == start + 1 and keys.data_ptr() == storage
    assert cache.keys[0][0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="holds 6 positions"):
        cache.update(0, torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4), 6)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_jacobi_with_a_full_budget_and_zero_tolerance_is_the_exact_inverse(patch_size):
    model = mixed_model(patch_size)
    u = torch.randn(2, 16, 3)
    sequential = model.flow.inverse(u).z
    exact = JacobiInversion(block_size=4, tolerance=0.0, fallback_fraction=1.0)
    inversion = model.flow.inverse(u, inversion=exact)
    assert torch.allclose(inversion.z, sequential, atol=1e-5, rtol=0)
    patches = 16 // patch_size
    assert all(counts == [4] * (patches // 4) for counts in inversion.fixed_point_iterations)


def test_jacobi_falls_back_to_patch_by_patch_where_blocks_do_not_contract():
    model = mixed_model(patch_size=1)
    u = torch.randn(2, 16, 3)
    inversion = model.flow.inverse(u, inversion=JacobiInversion(block_size=4, tolerance=0.0))
    assert all(counts == [4, 12] for counts in inversion.fixed_point_iterations)
    assert torch.allclose(inversion.z, model.flow.inverse(u).z, atol=1e-5, rtol=0)


@pytest.mark.parametrize("block_size", [3, 8])
def test_jacobi_converges_to_the_sequential_sample_within_tolerance(block_size):
    model = mixed_model(patch_size=1)
    u = torch.randn(4, 16, 3)
    sequential = model.flow.inverse(u).z
    jacobi = JacobiInversion(block_size, tolerance=1e-6, fallback_fraction=1.0)
    inversion = model.flow.inverse(u, inversion=jacobi)
    assert (inversion.z - sequential).abs().max().item() < 1e-4
    assert all(1 <= count <= block_size for counts in inversion.fixed_point_iterations for count in counts)
    greedy = dict(max_new_tokens=16, num_return_sequences=4, seed=2, do_sample=False)
    assert torch.equal(model.generate(decoding="jacobi", jacobi_block_size=block_size, jacobi_tolerance=1e-6,
                                      **greedy), model.generate(**greedy))


def test_newton_alone_diverges_on_arctan_but_the_solver_converges():
    # Newton on atan(z) − a from |z| > 1.39 overshoots ever further; the bracket and the fallback still converge.
    targets = torch.tensor([-1.4, -0.3, 0.0, 0.7, 1.5])
    start = torch.full_like(targets, 10.0)
    result = solve_increasing(lambda z: (torch.atan(z) - torch.atan(targets), 1 / (1 + z * z)),
                              torch.full_like(targets, -50.0), torch.full_like(targets, 50.0), start, 1e-6, 100)
    assert torch.allclose(result.z, targets, atol=1e-5)
    assert result.iterations < 100


def test_the_better_of_several_starts_is_used():
    target = torch.tensor([2.0, -3.0])
    calls = []

    def residual_and_slope(z):
        calls.append(tuple(z.shape))
        return z - target, torch.ones_like(z)

    starts = torch.stack([target, torch.zeros(2)])              # the first candidate is the root itself
    result = solve_increasing(residual_and_slope, target - 10, target + 10, starts, 1e-9, 50)
    assert torch.equal(result.z, target) and result.iterations == 1 and calls == [(2, 2)]


def test_float32_roots_of_far_apart_tiny_components_are_the_float64_roots_rounded():
    """Extends tests/modeling/test_mixtures.py's adversarial test to the case it leaves out: components of scale e^-7 at
    ±30, where no float32 z reaches |F(z) − Φ(u)| < 1e-5, so the float32 root is checked against the float64 one."""
    generator = torch.Generator().manual_seed(5)
    n = 2001
    log_w = torch.log_softmax(8 * torch.randn(n, 4, generator=generator, dtype=torch.float64), -1)
    mean = torch.tensor([-30.0, -0.5, 1.0, 30.0], dtype=torch.float64).expand(n, 4)
    log_scale = torch.tensor([-7.0, -7.0, 0.0, -7.0], dtype=torch.float64).expand(n, 4)
    u = torch.linspace(-30, 30, n, dtype=torch.float64)
    exact = mixture_inverse_cdf(u, log_w, mean, log_scale, tolerance=1e-12)
    log_cdf, _ = mixture_log_cdf(exact.z, log_w, mean, log_scale)
    assert (log_cdf.exp() - torch.special.ndtr(u)).abs().max().item() < 1e-10
    rounded = mixture_inverse_cdf(u.float(), log_w.float(), mean.float(), log_scale.float())
    ulp = torch.finfo(torch.float32).eps * exact.z.abs().clamp_min(1.0)
    assert ((rounded.z.double() - exact.z).abs() <= 4 * ulp + 1e-6 * exact.z.abs().clamp_min(1.0)).all()
    assert rounded.iterations < 100


def test_root_finder_needs_few_iterations_when_a_start_is_exact():
    # Non-overlapping narrow components: the staircase start is the root. One Gaussian: the moment start is.
    u = torch.linspace(-3, 3, 101)
    separated = mixture_inverse_cdf(u, torch.log(torch.tensor([0.3, 0.7])).expand(101, 2),
                                    torch.tensor([-5.0, 5.0]), torch.tensor([-6.0, -6.0]))
    single = mixture_inverse_cdf(u, torch.zeros(101, 1), torch.full((101, 1), 2.0), torch.full((101, 1), math.log(3)))
    assert separated.iterations <= 2 and single.iterations <= 2
    assert torch.allclose(single.z, 2.0 + 3 * u, atol=1e-5)
