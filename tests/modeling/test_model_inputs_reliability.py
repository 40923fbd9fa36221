"""No silent wrong answer from the model: non-finite sampling, mismatched checkpoints, out-of-range layer counts,
narrow id dtypes, bad generation counts, NaN noise and misspelt config keys are errors naming the problem."""

import json

import pytest
import torch
from tests.helpers.modeling import randomize_, tiny_config
from transformers import AutoModel

from modeling_tarflow import CheckpointMismatchError, TarFlowConfig, TarFlowForCausalFlowLM


@pytest.fixture(scope="module")
def model():
    return randomize_(TarFlowForCausalFlowLM(tiny_config(patch_size=2))).eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    model.save_pretrained(folder)
    return folder


# Generation with non-finite weights


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("do_sample", [False, True])
def test_generation_with_non_finite_weights_is_an_error(bad, do_sample):
    broken = TarFlowForCausalFlowLM(tiny_config(patch_size=2)).eval()
    with torch.no_grad():
        broken.flow.layers[-1].coupling.head.bias.fill_(bad)
    with pytest.raises(FloatingPointError, match=r"flow layer 2 \(affine\).*coupling.head.bias"):
        broken.generate(max_new_tokens=8, do_sample=do_sample, seed=0)


# Loading: every weight present and no other, the architecture as saved


def _edit_saved_file(source, target, edit):
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    config = json.loads((target / "config.json").read_text())
    edit(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


def _save_with_state_dict(model, folder, state_dict):
    model.save_pretrained(folder, state_dict=state_dict)
    return folder


def test_a_missing_weight_is_an_error_that_carries_the_load_report(model, tmp_path):
    weights = {k: v for k, v in model.state_dict().items() if k != "flow.layers.1.coupling.head.out_bias"}
    folder = _save_with_state_dict(model, tmp_path, weights)
    with pytest.raises(CheckpointMismatchError, match=r"missing_keys: \['flow.layers.1.coupling.head.out_bias'\]") as info:
        AutoModel.from_pretrained(folder)
    assert info.value.loading_info["missing_keys"] == {"flow.layers.1.coupling.head.out_bias"}


def test_an_unexpected_weight_is_an_error(model, tmp_path):
    weights = {**model.state_dict(), "flow.layers.3.extra": torch.zeros(2)}
    folder = _save_with_state_dict(model, tmp_path, weights)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected_keys: \['flow.layers.3.extra'\]"):
        TarFlowForCausalFlowLM.from_pretrained(folder)


def test_a_complete_checkpoint_still_returns_its_load_report(saved):
    loaded, report = TarFlowForCausalFlowLM.from_pretrained(saved, output_loading_info=True)
    assert isinstance(loaded, TarFlowForCausalFlowLM) and not report["missing_keys"] and not report["unexpected_keys"]


@pytest.mark.parametrize("edit", [
    lambda c: c["flow_layers"][1].update(direction="l2r"),
    lambda c: c.update(channel_mixing=False),
    lambda c: c.update(log_scale_bound=3.0),
], ids=["direction", "channel_mixing", "log_scale_bound"])
def test_a_shape_preserving_config_edit_is_refused_at_load(saved, tmp_path, edit):
    folder = _edit_saved_file(saved, tmp_path, edit)
    with pytest.raises(ValueError, match="architecture_fingerprint .* does not match its fields"):
        AutoModel.from_pretrained(folder)


def test_a_shape_preserving_override_at_load_is_refused(saved):
    with pytest.raises(ValueError, match="architecture_fingerprint"):
        TarFlowForCausalFlowLM.from_pretrained(saved, channel_mixing=False)


def test_solver_settings_are_not_architecture_and_may_be_edited(saved, tmp_path):
    folder = _edit_saved_file(saved, tmp_path, lambda c: c.update(root_tolerance=1e-5, dropout=0.1))
    assert AutoModel.from_pretrained(folder).config.root_tolerance == 1e-5


# forward(num_flow_layers=..., num_frozen_flow_layers=...)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_flow_layers": -1}, r"num_flow_layers must be an integer in \[1, 3\] .* got -1"),
    ({"num_flow_layers": 0}, r"num_flow_layers must be an integer in \[1, 3\] .* got 0"),
    ({"num_flow_layers": 4}, r"num_flow_layers must be an integer in \[1, 3\] .* got 4"),
    ({"num_flow_layers": 2.0}, r"num_flow_layers must be an integer"),
    ({"num_frozen_flow_layers": -1}, r"num_frozen_flow_layers must be an integer in \[0, 3\] .* got -1"),
    ({"num_flow_layers": 2, "num_frozen_flow_layers": 3}, r"num_frozen_flow_layers .* \[0, 2\] .* got 3"),
])
def test_layer_counts_outside_their_range_are_errors(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(1, 8, dtype=torch.long), **kwargs)


# Token ids of any integer dtype


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_narrow_integer_ids_give_the_same_nelbo_as_int64(model, dtype):
    ids, noise = torch.randint(0, 11, (2, 8)), torch.randn(2, 8, 3)
    assert torch.equal(model(ids.to(dtype), noise=noise).nelbo, model(ids, noise=noise).nelbo)
    prompt = ids[:1, :4]
    assert torch.equal(model.generate(prompt.to(dtype), max_new_tokens=4, seed=0),
                       model.generate(prompt, max_new_tokens=4, seed=0))


def test_float_ids_are_a_type_error(model):
    with pytest.raises(TypeError, match="integer token ids"):
        model.generate(torch.ones(1, 4), max_new_tokens=4)


# Generation counts


@pytest.mark.parametrize("kwargs, message", [
    ({"num_return_sequences": -1}, "num_return_sequences must be an integer ≥ 1, got -1"),
    ({"num_return_sequences": 0}, "num_return_sequences must be an integer ≥ 1, got 0"),
    ({"max_new_tokens": 4.0}, "max_new_tokens must be an integer ≥ 1, got 4.0"),
    ({"max_new_tokens": -2}, "max_new_tokens must be an integer ≥ 1, got -2"),
    ({"max_length": 6.5}, "max_length must be an integer ≥ 1, got 6.5"),
])
def test_bad_generation_counts_are_errors(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(**kwargs)


# The reparameterisation noise given to forward


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_forward_noise_is_an_error(model, bad):
    noise = torch.randn(2, 8, 3)
    noise[1, 2, 0] = bad
    with pytest.raises(ValueError, match="noise contains NaN or infinite"):
        model(torch.zeros(2, 8, dtype=torch.long), noise=noise)


def test_forward_noise_of_another_shape_is_an_error_not_a_broadcast(model):
    with pytest.raises(ValueError, match=r"noise must have shape \(batch, length, latent_dim\) = \(2, 8, 3\)"):
        model(torch.zeros(2, 8, dtype=torch.long), noise=torch.randn(1, 8, 3))


# TarFlowConfig keywords


def test_a_misspelt_config_keyword_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['hiden_size'\].*'hidden_size'"):
        TarFlowConfig(hiden_size=64)


def test_transformers_own_config_keywords_are_accepted_and_round_trip(tmp_path):
    config = TarFlowConfig(
        architectures=["TarFlowForCausalFlowLM"], auto_map={"AutoConfig": "configuration_tarflow.TarFlowConfig"},
        torch_dtype="float32", transformers_version="5.0.0", model_type="tarflow", _name_or_path="somewhere",
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3, return_dict=False,
        output_hidden_states=True, dtype="float32")
    config.save_pretrained(tmp_path)
    loaded = TarFlowConfig.from_pretrained(tmp_path)
    assert (loaded.eos_token_id, loaded.return_dict, loaded.output_hidden_states) == (2, False, True)
    assert TarFlowConfig.from_dict(loaded.to_dict()).to_dict() == loaded.to_dict()
