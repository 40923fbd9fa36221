"""Bad input gets a clear error naming the problem — never a silent wrong answer."""

import pytest
import torch
from tests.helpers.modeling import tiny_config

from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM, TokenIdDtypeError


@pytest.fixture(scope="module")
def model():
    return TarFlowForCausalFlowLM(tiny_config(patch_size=2)).eval()


def test_float_ids_are_a_dtype_error(model):
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.ones(2, 8))


def test_non_integer_ids_are_also_a_value_error(model):
    with pytest.raises(ValueError, match="dtype torch.float32"):
        model(torch.full((2, 8), 1.5))
    assert issubclass(TokenIdDtypeError, TypeError) and issubclass(TokenIdDtypeError, ValueError)


def test_ids_not_a_tensor(model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1, 2, 3, 4]])


def test_id_at_or_above_vocab_size(model):
    with pytest.raises(ValueError, match=r"id 11, outside \[0, vocab_size=11\)"):
        model(torch.full((2, 8), 11))


def test_negative_id(model):
    with pytest.raises(ValueError, match=r"id -1, outside"):
        model(torch.full((2, 8), -1))


def test_length_not_divisible_by_patch_size(model):
    with pytest.raises(ValueError, match="length 7 is not divisible by patch_size 2"):
        model(torch.zeros(2, 7, dtype=torch.long))


def test_length_longer_than_context(model):
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 16"):
        model(torch.zeros(2, 18, dtype=torch.long))


def test_empty_batch(model):
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(0, 8, dtype=torch.long))


def test_ids_with_wrong_rank(model):
    with pytest.raises(ValueError, match=r"shape \(batch, length\)"):
        model(torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latents_given_to_flow(model, bad):
    z = torch.randn(2, 8, 3)
    z[1, 3, 0] = bad
    with pytest.raises(ValueError, match="z contains NaN or infinite"):
        model.flow(z)


def test_nan_noise_given_to_flow_inverse(model):
    u = torch.randn(2, 8, 3)
    u[0, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="u contains NaN or infinite"):
        model.flow.inverse(u)


def test_latents_with_wrong_channel_count(model):
    with pytest.raises(ValueError, match="latent_dim=3"):
        model.flow(torch.randn(2, 8, 4))


def test_integer_latents(model):
    with pytest.raises(TypeError, match="floating-point"):
        model.flow(torch.zeros(2, 8, 3, dtype=torch.long))


def test_generate_length_not_a_multiple_of_patch_size(model):
    with pytest.raises(ValueError, match="max_new_tokens length 5 is not divisible by patch_size 2"):
        model.generate(max_new_tokens=5)


@pytest.mark.parametrize("field, value, message", [
    ("vocab_size", 0, "vocab_size must be a positive integer"),
    ("latent_dim", 2.5, "latent_dim must be a positive integer"),
    ("patch_size", 3, r"max_position_embeddings \(256\) must be a multiple of patch_size \(3\)"),
    ("num_attention_heads", 3, "divisible by num_attention_heads"),
    ("dropout", 1.5, "dropout must be in"),
    ("log_scale_bound", -1.0, "log_scale_bound must be a positive finite number"),
])
def test_config_rejects_bad_scalar(field, value, message):
    with pytest.raises(ValueError, match=message):
        TarFlowConfig(**{field: value})


@pytest.mark.parametrize("layers, message", [
    ([], "non-empty list"),
    ([{"coupling": "spline"}], r"flow_layers\[0\]\['coupling'\] must be one of"),
    ([{"coupling": "affine", "num_mixtures": 4}], r"unknown key\(s\) \['num_mixtures'\]"),
    ([{"coupling": "mixture_cdf", "num_layers": 0}], r"flow_layers\[0\]\['num_layers'\] must be a positive integer"),
    ([{"coupling": "affine", "direction": "up"}], r"\['direction'\] must be one of"),
    ([{"coupling": "mixture_rosenblatt", "num_mixtures": 5}], "must equal vocab_size"),
    ([{"coupling": "mixture_cdf", "autoregressive_dims": "yes"}], r"\['autoregressive_dims'\] must be a bool"),
])
def test_config_rejects_bad_flow_layers(layers, message):
    with pytest.raises(ValueError, match=message):
        TarFlowConfig(flow_layers=layers)


def test_config_writes_defaults_and_alternates_directions():
    config = TarFlowConfig(flow_layers=[{"coupling": "mixture_rosenblatt"}, {"coupling": "mixture_cdf"},
                                        {"coupling": "affine", "direction": "r2l"}])
    assert [layer["direction"] for layer in config.flow_layers] == ["l2r", "r2l", "r2l"]
    assert config.flow_layers[0] == {"coupling": "mixture_rosenblatt", "num_layers": 2, "direction": "l2r",
                                     "tie_codebook": True, "num_mixtures": 27}
    assert config.flow_layers[1]["num_mixtures"] == 64 and config.flow_layers[1]["autoregressive_dims"] is True
    assert TarFlowConfig.from_dict(config.to_dict()).flow_layers == config.flow_layers
