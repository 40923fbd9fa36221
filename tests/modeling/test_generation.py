"""`generate`: the GPT-2-like API, its config saved with the model, and clear errors for bad input."""

import pytest
import torch
from transformers import AutoModel

from modeling_tarflow import TarFlowGenerationConfig
from modeling_tarflow.generation import TarFlowGenerateOutput

pytestmark = pytest.mark.usefixtures("single_thread")


def test_argmax_decode_is_the_decoder_mode_of_the_inverted_scaled_noise(model):
    noise = torch.randn(2, 8, 3)
    ids = model.generate(noise=noise, max_new_tokens=8, num_return_sequences=2, noise_temperature=0.5,
                         do_sample=False)
    z = model.flow.inverse(0.5 * noise).z
    assert torch.equal(ids, model.decode(z).argmax(-1))


def test_return_dict_gives_sequences_and_iteration_counts(model):
    out = model.generate(max_new_tokens=8, num_return_sequences=2, seed=0, return_dict_in_generate=True)
    assert isinstance(out, TarFlowGenerateOutput)
    assert out.sequences.shape == (2, 8) and out.hidden_states is None
    assert len(out.root_iterations) == 3 and out.root_iterations[0] == 0, "layer 3 is affine: closed form"
    assert torch.equal(out.sequences, model.generate(max_new_tokens=8, num_return_sequences=2, seed=0))


def test_default_length_fills_the_context(model):
    assert model.generate(seed=0).shape == (1, 16)
    assert model.generate(torch.tensor([[1, 2, 3, 4]]), seed=0).shape == (1, 16)


def test_generation_config_is_saved_and_loaded_as_its_own_class(model, tmp_path):
    model.generation_config = TarFlowGenerationConfig(decoding="jacobi", jacobi_block_size=4, seed=5,
                                                      max_new_tokens=8)
    try:
        model.save_pretrained(tmp_path)
        loaded = AutoModel.from_pretrained(tmp_path).eval()
    finally:
        model.generation_config = TarFlowGenerationConfig()
    config = loaded.generation_config
    assert isinstance(config, TarFlowGenerationConfig)
    assert (config.decoding, config.jacobi_block_size, config.seed, config.max_new_tokens) == ("jacobi", 4, 5, 8)
    assert torch.equal(loaded.generate(), model.generate(decoding="jacobi", jacobi_block_size=4, seed=5,
                                                         max_new_tokens=8))


def test_keyword_arguments_override_a_given_config(model):
    config = TarFlowGenerationConfig(max_new_tokens=4, num_return_sequences=3)
    assert model.generate(generation_config=config, seed=1).shape == (3, 4)
    assert model.generate(generation_config=config, max_new_tokens=6, seed=1).shape == (3, 6)


@pytest.mark.parametrize("prompt, kwargs, error, message", [
    (torch.zeros(1, 0, dtype=torch.long), {}, ValueError, "input_ids \\(the prompt\\) is empty"),
    (torch.tensor([[1, 11]]), {}, ValueError, r"id 11, outside \[0, vocab_size=11\)"),
    (torch.tensor([[-1, 2]]), {}, ValueError, r"id -1, outside"),
    (torch.zeros(1, 18, dtype=torch.long), {}, ValueError, "exceeds max_position_embeddings 16"),
    (torch.zeros(1, 3, dtype=torch.long), {}, ValueError, "prompt length 3 is not a multiple of patch_size 2"),
    (torch.zeros(1, 4, dtype=torch.long), {"max_new_tokens": 14}, ValueError, r"prompt \(4 tokens\) \+ max_new"),
    (torch.zeros(1, 16, dtype=torch.long), {}, ValueError, "fills the context"),
    (torch.ones(1, 4), {}, TypeError, "integer token ids"),
    (None, {"max_new_tokens": 5}, ValueError, "max_new_tokens length 5 is not divisible by patch_size 2"),
    (None, {"max_new_tokens": 18}, ValueError, "max_new_tokens length 18 exceeds"),
    (None, {"temperature": -1.0}, ValueError, "temperature must be ≥ 0"),
    (None, {"decoding": "beam"}, ValueError, "decoding must be one of"),
    (None, {"jacobi_block_size": 0}, ValueError, "jacobi_block_size must be an integer ≥ 1"),
    (None, {"prompt_mcmc_steps": -1}, ValueError, "prompt_mcmc_steps must be an integer ≥ 0"),
    (None, {"top_kk": 3}, ValueError, r"unknown argument\(s\) \['top_kk'\]"),
])
def test_bad_input_is_a_clear_error(model, prompt, kwargs, error, message):
    with pytest.raises(error, match=message):
        model.generate(prompt, **kwargs)


def test_nan_in_supplied_noise_is_an_error(model):
    noise = torch.randn(1, 8, 3)
    noise[0, 5, 1] = float("nan")
    with pytest.raises(ValueError, match="noise contains NaN"):
        model.generate(noise=noise, max_new_tokens=8)


def test_noise_of_the_wrong_shape_is_an_error(model):
    with pytest.raises(ValueError, match=r"noise must have shape .* = \(2, 8, 3\), got \(1, 8, 3\)"):
        model.generate(noise=torch.randn(1, 8, 3), max_new_tokens=8, num_return_sequences=2)


def test_padded_prompt_is_an_error(model):
    prompt = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="padded prompts are not supported"):
        model.generate(prompt, attention_mask=torch.tensor([[0, 1, 1, 1]]))
    assert model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=2).shape == (1, 6)
