"""Prompt conditioning: the prompt is reproduced, left-to-right stacks sample the exact conditional, and with
right-to-left layers the Metropolis–Hastings sampler targets the exact conditional p(z_{>m} | z_{≤m})."""

import pytest
import torch
from tests.helpers.modeling import randomize_, tiny_config

from modeling_tarflow import TarFlowForCausalFlowLM
from modeling_tarflow.inversion import SEQUENTIAL, JacobiInversion
from modeling_tarflow.prompting import _chain_state, _proposal_log_prob, sample_continuation

pytestmark = pytest.mark.usefixtures("single_thread")

LEFT_TO_RIGHT = [
    {"coupling": "mixture_rosenblatt", "num_layers": 1},
    {"coupling": "mixture_cdf", "num_mixtures": 3, "num_layers": 1, "direction": "l2r"},
    {"coupling": "affine", "num_layers": 1, "direction": "l2r"},
]
MIXED = [
    {"coupling": "mixture_rosenblatt", "num_layers": 1},
    {"coupling": "mixture_cdf", "num_mixtures": 3, "num_layers": 1},            # right to left
    {"coupling": "affine", "num_layers": 1},
]


def model_with(layers, patch_size=2, **overrides):
    config = tiny_config(patch_size=patch_size, flow_layers=layers, **overrides)
    return randomize_(TarFlowForCausalFlowLM(config)).eval()


@pytest.mark.parametrize("layers", [LEFT_TO_RIGHT, MIXED], ids=["l2r", "mixed"])
@pytest.mark.parametrize("decoding", ["sequential", "jacobi"])
def test_prompt_is_reproduced_exactly(layers, decoding):
    model = model_with(layers)
    prompt = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    out = model.generate(prompt, max_new_tokens=6, num_return_sequences=3, seed=0, decoding=decoding,
                         jacobi_block_size=2, prompt_proposals=3, prompt_mcmc_steps=2, return_dict_in_generate=True)
    assert out.sequences.shape == (6, 10)
    assert torch.equal(out.sequences[:, :4], prompt.repeat_interleave(3, dim=0))
    assert (out.prompt_acceptance is None) == (layers is LEFT_TO_RIGHT)
    if layers is MIXED:
        assert ((1 <= out.prompt_effective_sample_size) & (out.prompt_effective_sample_size <= 3 + 1e-9)).all()


def test_left_to_right_continuation_is_the_joint_inverse_given_the_prompt_noise():
    """Only L2R layers: the prompt's noise u_{≤m} = f(c)_{≤m} depends on c alone, and inverting [u_{≤m}, ε] gives
    back c followed by the continuation — the conditional sample is exact ancestral sampling."""
    model = model_with(LEFT_TO_RIGHT)
    prompt_z = model.encode(torch.randint(0, 11, (3, 6)))
    noise = torch.randn(3, 8, 3)
    sample = sample_continuation(model.flow, prompt_z, noise, SEQUENTIAL)
    prompt_noise = model.flow(prompt_z).u
    joint = model.flow.inverse(torch.cat([prompt_noise, noise], dim=1)).z
    assert torch.allclose(joint[:, :6], prompt_z, atol=1e-4)
    assert torch.allclose(sample.z[:, 6:], joint[:, 6:], atol=1e-4)
    assert torch.equal(sample.z[:, :6], prompt_z)


def test_left_to_right_proposal_is_the_exact_conditional_so_every_move_is_accepted():
    """log p(c, z) − log q_r(z) = log p(c) for every continuation z: the Metropolis–Hastings ratio is 1."""
    model = model_with(LEFT_TO_RIGHT).double()
    prompt_z = model.encode(torch.randint(0, 11, (2, 4)))
    gaps = []
    for _ in range(2):
        continuation = model.flow.inverse(torch.randn(2, 12, 3, dtype=torch.float64)).z[:, :8]
        state = _chain_state(model.flow, prompt_z, continuation, temperature=1.0)
        gaps.append(state.log_joint - _proposal_log_prob(model.flow, continuation, state.prefixes, 1.0))
    assert torch.allclose(gaps[0], gaps[1], atol=1e-8)


def test_metropolis_hastings_samples_the_exact_conditional_with_right_to_left_layers():
    """1-D latents, a one-token prompt c and a one-token continuation: the chains' final states follow
    p(z_2 | z_1 = c) ∝ p(c, z_2), computed on a grid from the flow's exact density (Kolmogorov–Smirnov distance),
    while a single proposal — prefixes guessed, never corrected — does not."""
    layers = [{"coupling": "mixture_cdf", "num_mixtures": 3, "num_layers": 1, "autoregressive_dims": False},
              {"coupling": "mixture_cdf", "num_mixtures": 3, "num_layers": 1, "autoregressive_dims": False},
              {"coupling": "affine", "num_layers": 1}]
    config = tiny_config(latent_dim=1, max_position_embeddings=2, flow_layers=layers)
    model = randomize_(TarFlowForCausalFlowLM(config), scale=0.3, seed=3).double().eval()
    assert model.flow.has_right_to_left
    chains, c = 2000, 0.7
    grid = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    with torch.no_grad():
        u, log_det = model.flow(torch.stack([torch.full_like(grid, c), grid], dim=1).unsqueeze(-1)).to_tuple()[:2]
    cdf = torch.cumulative_trapezoid(torch.exp(-0.5 * u.square().sum((1, 2)) + log_det), grid)
    cdf = torch.cat([cdf.new_zeros(1), cdf]) / cdf[-1]

    def ks_distance(proposals, mcmc_steps):
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(chains, 1, 1, dtype=torch.float64, generator=generator)
        prompt_z = torch.full((chains, 1, 1), c, dtype=torch.float64)
        sample = sample_continuation(model.flow, prompt_z, noise, SEQUENTIAL, proposals=proposals,
                                     mcmc_steps=mcmc_steps, generator=generator)
        draws = sample.z[:, 1, 0].sort().values
        empirical = torch.arange(1, chains + 1, dtype=torch.float64) / chains
        model_cdf = cdf[torch.searchsorted(grid, draws).clamp_max(len(grid) - 1)]   # grid step 1e-3
        return (empirical - model_cdf).abs().max().item(), sample

    distance, sample = ks_distance(proposals=32, mcmc_steps=2)
    assert distance < 0.036              # the KS critical value at 1 % is 1.63/√2000 = 0.036
    assert 0.05 < sample.acceptance.mean().item() < 1.0
    assert 1.0 <= sample.effective_sample_size.min().item() <= 32.0 + 1e-9
    assert ks_distance(proposals=1, mcmc_steps=0)[0] > 0.2


def test_prompted_jacobi_matches_prompted_sequential():
    model = model_with(LEFT_TO_RIGHT, patch_size=1)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    settings = dict(max_new_tokens=8, num_return_sequences=2, seed=3, do_sample=False)
    assert torch.equal(model.generate(prompt, decoding="jacobi", jacobi_block_size=3, jacobi_tolerance=1e-7,
                                      **settings), model.generate(prompt, **settings))


def test_prompt_and_jacobi_noise_are_reproducible_with_a_seed():
    model = model_with(MIXED)
    prompt = torch.tensor([[1, 2]])
    a = model.generate(prompt, max_new_tokens=4, seed=11, prompt_proposals=2, prompt_mcmc_steps=2)
    b = model.generate(prompt, max_new_tokens=4, seed=11, prompt_proposals=2, prompt_mcmc_steps=2)
    assert torch.equal(a, b)


def test_prompted_generation_uses_a_given_decoding_object():
    model = model_with(MIXED)
    prompt_z = model.encode(torch.randint(0, 11, (2, 4)))
    sample = sample_continuation(model.flow, prompt_z, torch.randn(2, 4, 3), JacobiInversion(block_size=2),
                                 proposals=2, mcmc_steps=1)
    assert sample.z.shape == (2, 8, 3) and torch.equal(sample.z[:, :4], prompt_z)
    assert all(len(counts) == 1 for counts in sample.inversion.fixed_point_iterations)
