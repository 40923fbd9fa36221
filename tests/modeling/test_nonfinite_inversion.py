"""Corrupted weights never give plausible text: NaN or inf in any layer type's parameters (the conditioner's and the
coupling's), or conditioner features that overflow at run time, stop every inversion path (sequential with and
without a KV cache, Jacobi, "auto", compiled, prompted) with a `NonFiniteInversionError` naming the layer.

The root finder's bracketing turns non-finite mixture parameters into finite latents, so without these checks a
Mix-d layer with a NaN start vector samples ordinary-looking ids."""

import copy
import re

import pytest
import torch
from tests.helpers.modeling import randomize_, tiny_config

from modeling_tarflow import TarFlowForCausalFlowLM
from modeling_tarflow.inversion import JacobiInversion, NonFiniteInversionError, SequentialInversion

pytestmark = pytest.mark.usefixtures("single_thread")

LAYER_NAMES = [re.escape(name) for name in
               ["flow layer 0 (mixture_rosenblatt)", "flow layer 1 (mixture_cdf)", "flow layer 2 (affine)"]]
PARTS = ["conditioner.start", "conditioner.blocks.0.mlp.fc.weight", "coupling"]  # the coupling's first parameter


@pytest.fixture(scope="module")
def healthy():
    return randomize_(TarFlowForCausalFlowLM(tiny_config(patch_size=2))).eval()


def corrupted(model, layer: int, part: str, value: float):
    broken = copy.deepcopy(model)
    parameters = dict(broken.flow.layers[layer].named_parameters())
    name = part if part in parameters else next(name for name in parameters if name.startswith(part))
    with torch.no_grad():
        parameters[name].view(-1)[0] = value
    return broken


@pytest.mark.parametrize("decoding", ["sequential", "jacobi", "auto"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("layer", range(3), ids=["mixd", "mix1", "affine"])
def test_non_finite_parameters_stop_generation_naming_the_layer(healthy, layer, part, bad, decoding):
    broken = corrupted(healthy, layer, part, bad)
    with pytest.raises(NonFiniteInversionError, match=rf"{LAYER_NAMES[layer]}.*parameters hold NaN or inf"):
        broken.generate(max_new_tokens=8, num_return_sequences=2, seed=0, decoding=decoding, do_sample=False)


@pytest.mark.parametrize("layer", range(3), ids=["mixd", "mix1", "affine"])
def test_non_finite_parameters_stop_sampled_and_prompted_generation(healthy, layer):
    broken = corrupted(healthy, layer, "conditioner.start", float("nan"))
    with pytest.raises(NonFiniteInversionError, match=LAYER_NAMES[layer]):
        broken.generate(max_new_tokens=6, seed=0, do_sample=True)
    with pytest.raises(FloatingPointError, match=LAYER_NAMES[layer]):
        broken.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=4, seed=0, prompt_proposals=2,
                        prompt_mcmc_steps=1)


def overflowing(model, layer: int):
    """Finite parameters whose conditioner features overflow to inf / NaN at run time."""
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.flow.layers[layer].conditioner.proj_in.weight.fill_(3e38)
        broken.flow.layers[layer].conditioner.start.fill_(3e38)
    return broken


@pytest.mark.parametrize("inversion", [SequentialInversion(), SequentialInversion(use_cache=False),
                                       JacobiInversion(block_size=2)], ids=["cached", "uncached", "jacobi"])
@pytest.mark.parametrize("layer", range(3), ids=["mixd", "mix1", "affine"])
def test_overflowing_conditioner_features_stop_every_inversion_strategy(healthy, layer, inversion):
    broken = overflowing(healthy, layer)
    with pytest.raises(NonFiniteInversionError, match=rf"{LAYER_NAMES[layer]}: non-finite conditioner features"):
        broken.flow.inverse(torch.randn(2, 8, 3), inversion=inversion)


def test_overflowing_features_stop_the_compiled_inverse(healthy):
    """The "eager" backend runs TorchDynamo's capture without code generation (seconds)."""
    broken = overflowing(healthy, 2)
    with pytest.raises(NonFiniteInversionError, match=LAYER_NAMES[2]):
        broken.generate(max_new_tokens=4, seed=0, decoding="sequential", compile_backend="eager")


def test_healthy_model_still_generates(healthy):
    assert healthy.generate(max_new_tokens=8, num_return_sequences=2, seed=0).shape == (2, 8)
