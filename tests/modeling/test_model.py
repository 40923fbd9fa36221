"""The language model: NELBO bookkeeping, Proposition 4, gradients, save/load and the remote-code load."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from tests.helpers.modeling import randomize_, tiny_config
from transformers import AutoConfig, AutoModel

from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM


@pytest.fixture
def model():
    return randomize_(TarFlowForCausalFlowLM(tiny_config(patch_size=2))).eval()


def test_nelbo_parts_sum_exactly(model):
    out = model(torch.randint(0, 11, (4, 16)))
    assert torch.equal(out.nelbo, -(out.log_p_x_given_z + out.log_p_z - out.log_q_z))
    assert out.loss.item() == pytest.approx(out.nelbo.sum().item() / (4 * 16), rel=1e-6)
    assert out.flow_log_dets.shape == (4, 3)
    log_p_u = -0.5 * out.u.square().sum((1, 2)) - 0.5 * out.u[0].numel() * torch.log(torch.tensor(2 * torch.pi))
    assert torch.allclose(out.log_p_z, log_p_u + out.flow_log_dets.sum(-1), atol=1e-4)


def test_decoder_term_is_minus_logsumexp_of_component_densities(model):
    ids = torch.randint(0, 11, (2, 8))
    noise = torch.randn(2, 8, 3)
    out = model(ids, noise=noise)
    log_n = model.decode(model.encode(ids, noise))
    # log p(x|z) − log q(z|x) = −log Σ_j N_j(z)   (tied decoder, §2.3)
    assert torch.allclose(out.log_p_x_given_z - out.log_q_z, -torch.logsumexp(log_n, -1).sum(-1), atol=1e-4)


def test_backward_gives_finite_gradients_for_every_parameter(model):
    model.train()
    model(torch.randint(0, 11, (2, 16))).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"


def test_loss_at_initialisation_is_near_uniform_over_vocabulary():
    model = TarFlowForCausalFlowLM(tiny_config())
    loss = model(torch.randint(0, 11, (8, 16))).loss.item()
    assert abs(loss - torch.log(torch.tensor(11.0)).item()) < 1.0


@pytest.mark.parametrize("patch_size", [1, 2])
def test_proposition_4_mixd_with_vanishing_sigma_is_discrete_ar_cross_entropy(patch_size):
    """Only a tied Mix-d layer and σ → 0: the NELBO per token equals the cross-entropy of the AR model whose
    logits are the mixture weights π_t, fed the embeddings μ_{x_<t} (App. F)."""
    config = tiny_config(patch_size=patch_size, flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": 2}])
    model = randomize_(TarFlowForCausalFlowLM(config), scale=0.3).double().eval()
    with torch.no_grad():
        model.codebook.log_sigma.fill_(-12.0)
    ids = torch.randint(0, 11, (4, 16))
    nelbo_per_token = model(ids).loss
    layer = model.flow.layers[0]
    h = model.flow.patchify(model.codebook.mu[ids])            # z = μ_x exactly
    logits = layer.coupling.mixture_logits(layer.conditioner(h))  # (B, n, P, V)
    cross_entropy = F.cross_entropy(logits.reshape(-1, 11), ids.reshape(-1))
    assert nelbo_per_token.item() == pytest.approx(cross_entropy.item(), abs=1e-3)


def test_generate_returns_valid_ids_and_is_seed_reproducible(model):
    a = model.generate(max_new_tokens=8, num_return_sequences=3, seed=7)
    b = model.generate(max_new_tokens=8, num_return_sequences=3, seed=7)
    assert a.shape == (3, 8) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 11
    assert torch.equal(a, b)
    greedy = model.generate(max_new_tokens=8, num_return_sequences=3, seed=7, do_sample=False)
    assert greedy.shape == (3, 8)


def test_save_and_load_in_process_gives_identical_loss_and_samples(model, tmp_path):
    ids, noise = torch.randint(0, 11, (2, 16)), torch.randn(2, 16, 3)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"] == "modeling_tarflow.TarFlowForCausalFlowLM"
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "modeling_tarflow.py").exists()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, TarFlowForCausalFlowLM)
    assert torch.equal(loaded(ids, noise=noise).loss, model(ids, noise=noise).loss)
    assert torch.equal(loaded.generate(max_new_tokens=8, seed=3), model.generate(max_new_tokens=8, seed=3))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), TarFlowConfig)


REMOTE_LOAD_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["modeling_tarflow"] = None  # the package must not be importable: only the copied files may serve
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    inputs = torch.load(sys.argv[2])
    loss = model(inputs["ids"], noise=inputs["noise"]).loss
    sample = model.generate(max_new_tokens=8, seed=3)
    torch.save({"loss": loss, "sample": sample}, sys.argv[3])
""")


def test_trust_remote_code_load_in_fresh_process_without_the_package(model, tmp_path):
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    copy = tmp_path / "copy-of-model"
    shutil.copytree(saved, copy)
    ids, noise = torch.randint(0, 11, (2, 16)), torch.randn(2, 16, 3)
    torch.save({"ids": ids, "noise": noise}, tmp_path / "inputs.pt")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD_SCRIPT, str(copy), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    assert torch.equal(remote["loss"], model(ids, noise=noise).loss)
    assert torch.equal(remote["sample"], model.generate(max_new_tokens=8, seed=3))


def test_frozen_layers_get_no_gradient_and_do_not_change_the_nelbo(model):
    ids, noise = torch.randint(0, 11, (2, 16)), torch.randn(2, 16, 3)
    model.train()
    frozen = model(ids, noise=noise, num_frozen_flow_layers=2)
    full = model(ids, noise=noise)
    assert torch.allclose(frozen.nelbo, full.nelbo)
    frozen.loss.backward()
    assert model.codebook.mu.grad is None
    assert all(p.grad is None for p in model.flow.layers[:2].parameters())
    assert all(p.grad is not None for p in model.flow.layers[2].parameters())


def test_prefix_of_the_stack_is_a_smaller_model(model):
    out = model(torch.randint(0, 11, (2, 16)), num_flow_layers=1)
    assert out.flow_log_dets.shape == (2, 1)


def test_mixd_head_starts_random_so_its_transformer_learns_from_the_first_step():
    """A zero Mix-d head would give the conditioner no gradient (∂L/∂f = Wᵀ ∂L/∂θ = 0); Mix-1 and affine heads
    stay zero so that those layers start as the identity."""
    model = TarFlowForCausalFlowLM(tiny_config())
    mixd, mix1, affine = (layer.coupling for layer in model.flow.layers)
    assert mixd.head.weight.abs().sum() > 0 and not mixd.head.bias.any()
    assert not mix1.head.out_weight.any() and not affine.head.weight.any()
    model(torch.randint(0, 11, (2, 16)), num_flow_layers=1).loss.backward()
    conditioner_grad = model.flow.layers[0].conditioner.blocks[0].mlp.fc.weight.grad
    assert conditioner_grad.abs().sum() > 0
