"""Public entry points refuse what they cannot use, with an error that names it: `decode`, the codebook's `sample`
and `log_prob`, `flow(...)`'s layer counts, `forward`'s flags, and a `generation_config.json` that does not parse
(which transformers would replace by defaults)."""

import pytest
import torch

from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM


@pytest.fixture(scope="module")
def model():
    config = TarFlowConfig(vocab_size=30, latent_dim=4, hidden_size=32, num_attention_heads=2,
                           max_position_embeddings=16, flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": 1},
                                                                    {"coupling": "affine", "num_layers": 1}])
    return TarFlowForCausalFlowLM(config).eval()


@pytest.mark.parametrize("z, error, message", [
    ([[0.0] * 4], TypeError, "torch.Tensor"),
    (torch.zeros(1, 2, 4, dtype=torch.long), TypeError, "floating-point"),
    (torch.zeros(1, 2, 5), ValueError, "latent_dim=4"),
    (torch.full((1, 2, 4), float("nan")), ValueError, "NaN"),
])
def test_decode_refuses_latents_it_cannot_decode(model, z, error, message):
    with pytest.raises(error, match=message):
        model.decode(z)


def test_the_codebook_refuses_ids_outside_it_and_integer_latents(model):
    with pytest.raises(ValueError, match=r"outside \[0, 30\)"):
        model.codebook.sample(torch.tensor([[30]]))
    with pytest.raises(TypeError, match="integer token ids"):
        model.codebook.sample(torch.tensor([[1.0]]))
    with pytest.raises(TypeError, match="floating-point"):
        model.codebook.log_prob(torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("counts, message", [({"num_layers": 3}, "num_flow_layers"),
                                             ({"num_frozen": -1}, "num_frozen_flow_layers")])
def test_the_flow_refuses_layer_counts_it_does_not_have(model, counts, message):
    with pytest.raises(ValueError, match=message):
        model.flow(torch.zeros(1, 4, 4), **counts)


@pytest.mark.parametrize("flag", ["output_u", "output_hidden_states", "return_dict"])
def test_forward_flags_must_be_booleans(model, flag):
    with pytest.raises(TypeError, match=flag):
        model(torch.zeros(1, 4, dtype=torch.long), **{flag: "no"})


def test_a_generation_config_that_does_not_parse_is_refused_not_replaced_by_defaults(model, tmp_path):
    model.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json is not valid JSON"):
        TarFlowForCausalFlowLM.from_pretrained(tmp_path)
