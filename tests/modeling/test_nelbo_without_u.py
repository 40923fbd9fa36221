"""The NELBO without u: the last layer's log N(u; 0, I) + log|det J_L| is its own density of its input (Eq. 9), so
`forward(..., output_u=False)` gives the same loss and gradients without the last layer's u."""

import pytest
import torch
from tests.helpers.modeling import randomize_, tiny_config

from modeling_tarflow import TarFlowForCausalFlowLM

LAST_LAYERS = {
    "mixd_tied": {"coupling": "mixture_rosenblatt", "num_layers": 1},
    "mixd_own": {"coupling": "mixture_rosenblatt", "num_layers": 1, "num_mixtures": 4, "tie_codebook": False},
    "mix1_maf": {"coupling": "mixture_cdf", "num_mixtures": 3, "num_layers": 1},
    "mix1": {"coupling": "mixture_cdf", "num_mixtures": 3, "num_layers": 1, "autoregressive_dims": False},
    "affine": {"coupling": "affine", "num_layers": 1},
}


def loss_and_gradients(model, ids, noise, **kwargs):
    model.zero_grad()
    out = model(ids, noise=noise, **kwargs)
    out.loss.backward()
    return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_same_nelbo_and_gradients(model, ids, noise, **kwargs):
    through_u, grads_through_u = loss_and_gradients(model, ids, noise, **kwargs)
    without_u, grads_without_u = loss_and_gradients(model, ids, noise, output_u=False, **kwargs)
    assert without_u.u is None and without_u.flow_log_dets is None
    assert torch.allclose(without_u.nelbo, through_u.nelbo, rtol=0, atol=1e-9)
    assert torch.allclose(without_u.log_p_z, through_u.log_p_z, rtol=0, atol=1e-9)
    assert len(grads_without_u) == len(grads_through_u)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-8) for a, b in zip(grads_without_u, grads_through_u))


@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("last", sorted(LAST_LAYERS))
def test_nelbo_without_u_equals_the_nelbo_through_u(last, patch_size):
    layers = [{"coupling": "mixture_rosenblatt", "num_layers": 1}, {**LAST_LAYERS[last], "direction": "r2l"}]
    model = randomize_(TarFlowForCausalFlowLM(tiny_config(patch_size=patch_size, flow_layers=layers)), 0.3).double()
    ids, noise = torch.randint(0, 11, (2, 8)), torch.randn(2, 8, 3, dtype=torch.float64)
    assert_same_nelbo_and_gradients(model, ids, noise)


@pytest.mark.parametrize("num_frozen", [0, 1])
def test_progressive_stages_without_u_equal_those_through_u(num_frozen):
    """Stage 1 (the tied Mix-d layer alone) and stage 2 (Mix-1 on top of it, frozen or not)."""
    model = randomize_(TarFlowForCausalFlowLM(tiny_config(patch_size=2)), 0.3).double()
    ids, noise = torch.randint(0, 11, (2, 8)), torch.randn(2, 8, 3, dtype=torch.float64)
    assert_same_nelbo_and_gradients(model, ids, noise, num_flow_layers=1 + num_frozen,
                                    num_frozen_flow_layers=num_frozen)


def test_mixd_density_with_expanded_distances_equals_the_rosenblatt_nelbo():
    """K·d past the codebook's direct-distance limit: ‖z‖² − 2 z·μ + ‖μ‖² (a GPT-2-size head's form)."""
    config = tiny_config(vocab_size=4200, latent_dim=16, flow_layers=[LAST_LAYERS["mixd_tied"]],
                         max_position_embeddings=4)
    model = randomize_(TarFlowForCausalFlowLM(config), 0.3).double()
    ids, noise = torch.randint(0, 4200, (1, 4)), torch.randn(1, 4, 16, dtype=torch.float64)
    assert_same_nelbo_and_gradients(model, ids, noise)


def test_hidden_states_still_give_u():
    model = randomize_(TarFlowForCausalFlowLM(tiny_config()))
    out = model(torch.randint(0, 11, (1, 4)), output_u=False, output_hidden_states=True)
    assert out.u is not None and torch.equal(out.hidden_states[-1], out.u)
