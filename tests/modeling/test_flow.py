"""Flow layers and the stack: exact inverses, exact log-determinants, Algorithm 1 and Algorithm 2."""

import math

import pytest
import torch
from tests.helpers.modeling import randomize_, tiny_config

from modeling_tarflow import TarFlowForCausalFlowLM
from modeling_tarflow.flow import ChannelMix

LAYER_KINDS = {
    "affine": {"coupling": "affine", "num_layers": 1},
    "affine_maf": {"coupling": "affine", "num_layers": 1, "autoregressive_dims": True},
    "mix1": {"coupling": "mixture_cdf", "num_mixtures": 4, "num_layers": 1, "autoregressive_dims": False},
    "mix1_maf": {"coupling": "mixture_cdf", "num_mixtures": 4, "num_layers": 1},
    "mixd_tied": {"coupling": "mixture_rosenblatt", "num_layers": 1, "tie_codebook": True},
    "mixd_own": {"coupling": "mixture_rosenblatt", "num_layers": 1, "num_mixtures": 5, "tie_codebook": False},
}


def single_layer_model(kind, direction, patch_size, dtype=torch.float32):
    layer = {**LAYER_KINDS[kind], "direction": direction}
    config = tiny_config(patch_size=patch_size, flow_layers=[layer])
    return randomize_(TarFlowForCausalFlowLM(config)).to(dtype).eval()


@pytest.mark.parametrize("patch_size", [1, 2, 4])
@pytest.mark.parametrize("direction", ["l2r", "r2l"])
@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_inverse_of_forward_is_identity_float32(kind, direction, patch_size):
    model = single_layer_model(kind, direction, patch_size)
    # z typical under the model's own prior: with random weights, an own-component Mix-d layer puts encoder
    # latents in near-empty regions where du/dz ≈ 1e-2, and float32 rounding of u then grows through the
    # conditioning of later patches; a trained model sees its latents where it has mass.
    z = model.flow.inverse(torch.randn(3, 16, 3)).z
    u = model.flow(z).u
    assert not torch.allclose(u, z, atol=1e-3), "random weights must make the flow non-trivial"
    error = (model.flow.inverse(u).z - z).abs().max() / z.abs().max()
    assert error.item() < 1e-4


@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_whole_stack_round_trip_with_channel_mixing(patch_size):
    config = tiny_config(patch_size=patch_size, flow_layers=[
        LAYER_KINDS["mixd_tied"], LAYER_KINDS["mix1_maf"], LAYER_KINDS["affine"], LAYER_KINDS["mix1"]])
    model = randomize_(TarFlowForCausalFlowLM(config)).eval()
    z = model.encode(torch.randint(0, 11, (2, 16)))
    u = model.flow(z).u
    inversion = model.flow.inverse(u)
    assert (inversion.z - z).abs().max().item() < 1e-4 * z.abs().max().item()
    assert len(inversion.hidden_states) == 5 and len(inversion.root_iterations) == 4
    assert inversion.root_iterations[1] == 0, "the affine layer (third of four) inverts in closed form"


def jacobian_log_det(flow, z):
    """log|det ∂u/∂z| of the flattened map, from autograd."""
    jacobian = torch.autograd.functional.jacobian(lambda x: flow(x)[0].flatten(), z).reshape(z.numel(), z.numel())
    return torch.linalg.slogdet(jacobian).logabsdet


@pytest.mark.parametrize("direction", ["l2r", "r2l"])
@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_coupling_log_det_equals_autograd_jacobian(kind, direction):
    model = single_layer_model(kind, direction, patch_size=2, dtype=torch.float64)
    z = model.encode(torch.randint(0, 11, (1, 4)))
    log_det = model.flow(z).log_det
    assert log_det.item() == pytest.approx(jacobian_log_det(model.flow, z).item(), abs=1e-6)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_stack_log_det_equals_autograd_jacobian(patch_size):
    config = tiny_config(patch_size=patch_size, flow_layers=[
        LAYER_KINDS["mixd_tied"], LAYER_KINDS["mix1_maf"], LAYER_KINDS["affine_maf"], LAYER_KINDS["mixd_own"]])
    model = randomize_(TarFlowForCausalFlowLM(config)).double().eval()
    z = model.encode(torch.randint(0, 11, (1, 4)))
    log_det = model.flow(z).log_det
    assert log_det.item() == pytest.approx(jacobian_log_det(model.flow, z).item(), abs=1e-6)


def test_flow_layers_are_identity_at_initialisation():
    config = tiny_config(flow_layers=[LAYER_KINDS["affine"], LAYER_KINDS["mix1_maf"], LAYER_KINDS["mix1"]],
                         channel_mixing=False)
    model = TarFlowForCausalFlowLM(config)
    z = model.encode(torch.randint(0, 11, (2, 8)))
    u, log_det = model.flow(z).to_tuple()[:2]
    assert torch.allclose(u, z, atol=1e-5)
    assert torch.allclose(log_det, torch.zeros_like(log_det), atol=1e-4)


def mixd_algorithm_1(z, pi, mu, sigma):
    """Algorithm 1 of the paper, literally: sequential over dims, Bayes-updating α in probability space."""
    normal = torch.distributions.Normal(0.0, 1.0)
    alpha, us, log_det = pi, [], 0.0
    for i in range(z.shape[-1]):
        density = torch.exp(normal.log_prob((z[i] - mu[:, i]) / sigma)) / sigma
        p_i = (alpha * density).sum()
        f_i = (alpha * normal.cdf((z[i] - mu[:, i]) / sigma)).sum()
        u_i = normal.icdf(f_i)
        us.append(u_i)
        log_det = log_det + torch.log(p_i) - normal.log_prob(u_i)
        alpha = alpha * density / p_i
    return torch.stack(us), log_det


def test_mixd_forward_equals_sequential_algorithm_1():
    model = single_layer_model("mixd_tied", "l2r", patch_size=2, dtype=torch.float64)
    layer = model.flow.layers[0]
    z = model.encode(torch.randint(0, 11, (1, 4)))
    h = model.flow.patchify(z)
    features = layer.conditioner(h)
    u, log_det = layer.coupling(h, features)
    pi = torch.softmax(layer.coupling.mixture_logits(features), -1)      # (1, n, P, K)
    mu, sigma = model.codebook.mu, model.codebook.log_sigma.exp()
    tokens = z.view(-1, 3)
    expected = [mixd_algorithm_1(tokens[t], pi.reshape(-1, 11)[t], mu, sigma) for t in range(4)]
    assert torch.allclose(u.view(-1, 3), torch.stack([e[0] for e in expected]), atol=1e-9)
    assert log_det.sum().item() == pytest.approx(sum(e[1] for e in expected).item(), abs=1e-9)


@pytest.mark.parametrize("channels", [1, 2, 5, 8, 15])
def test_channel_mix_is_algorithm_2_and_a_permutation(channels):
    mix = ChannelMix()
    x = torch.arange(channels).float().view(1, 1, -1)
    mixed = mix(x)
    assert mixed.flatten().tolist() == list(range(0, channels, 2)) + list(range(1, channels, 2))
    assert sorted(mixed.flatten().tolist()) == list(range(channels))
    assert torch.equal(mix.inverse(mixed), x)


def test_rosenblatt_codebook_is_shared_with_encoder():
    model = TarFlowForCausalFlowLM(tiny_config())
    assert model.flow.layers[0].coupling.components is model.codebook
    names = [name for name, _ in model.named_parameters()]
    assert sum("mu" in name for name in names) == 1, "a tied codebook is one tensor, saved once"


def test_mix1_density_of_flow_integrates_to_one_in_one_dimension():
    config = tiny_config(latent_dim=1, flow_layers=[LAYER_KINDS["mix1"]], max_position_embeddings=4)
    model = randomize_(TarFlowForCausalFlowLM(config), scale=0.5).double()
    grid = torch.linspace(-60, 60, 200_001, dtype=torch.float64).view(-1, 1, 1)
    u, log_det = model.flow(grid).to_tuple()[:2]
    density = torch.exp(-0.5 * u.flatten() ** 2 - 0.5 * math.log(2 * math.pi) + log_det)
    assert torch.trapezoid(density, grid.flatten()).item() == pytest.approx(1.0, abs=1e-6)


def test_rosenblatt_in_checkpointed_chunks_equals_one_pass_with_identical_gradients():
    """Large vocabularies run Mix-d over chunks of positions (recomputed in backward): same values, same grads."""
    model = single_layer_model("mixd_tied", "l2r", patch_size=2, dtype=torch.float64)
    ids, noise = torch.randint(0, 11, (2, 16)), torch.randn(2, 16, 3, dtype=torch.float64)
    coupling = model.flow.layers[0].coupling

    def loss_and_grads():
        model.zero_grad()
        out = model(ids, noise=noise)
        out.loss.backward()
        return out.u.detach(), out.loss.detach(), [p.grad.clone() for p in model.parameters()]

    whole = loss_and_grads()
    coupling.max_chunk_elements = 2 * 2 * 11 * 3 * 3   # three patch positions per chunk (of eight)
    chunked = loss_and_grads()
    assert torch.allclose(whole[0], chunked[0], atol=1e-12) and torch.allclose(whole[1], chunked[1], atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(whole[2], chunked[2]))
