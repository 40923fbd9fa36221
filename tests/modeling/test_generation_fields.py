"""Each `GenerationConfig` field either changes `generate` as documented or is refused with a reason: lengths, the
final draw from p(x|z) (temperature, top-k, top-p), τ on the base noise, and end of sequence."""

import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")


def argmax_samples(model, noise, **kwargs):
    return model.generate(noise=noise, max_new_tokens=noise.shape[1], num_return_sequences=noise.shape[0],
                          do_sample=False, **kwargs)


# Lengths


def test_max_length_is_the_total_length_prompt_included(model):
    prompt = torch.tensor([[1, 2, 3, 4]])
    out = model.generate(prompt, max_length=10, seed=0)
    assert out.shape == (1, 10) and torch.equal(out, model.generate(prompt, max_new_tokens=6, seed=0))


def test_max_new_tokens_takes_precedence_over_max_length(model):
    assert model.generate(torch.tensor([[1, 2]]), max_length=10, max_new_tokens=2, seed=0).shape == (1, 4)


def test_a_max_length_within_the_prompt_is_an_error(model):
    with pytest.raises(ValueError, match=r"max_length \(4\) leaves no room after the prompt \(4 tokens\)"):
        model.generate(torch.tensor([[1, 2, 3, 4]]), max_length=4)


def test_the_default_config_fills_the_context_through_max_length(model):
    assert model.generation_config.max_length == model.config.max_position_embeddings
    assert model.generate(torch.tensor([[1, 2]]), generation_config=model.generation_config, seed=0).shape == (1, 16)


# End of sequence and min_new_tokens


def test_positions_after_the_first_eos_of_a_row_hold_the_pad_token(model):
    noise = torch.randn(3, 8, 3)
    plain = argmax_samples(model, noise)
    eos, pad = int(plain[0, 2]), int(plain[0, 2] + 1) % 11
    out = argmax_samples(model, noise, eos_token_id=eos, pad_token_id=pad)
    expected = plain.clone()
    for row in expected:
        hits = (row == eos).nonzero()
        if len(hits):
            row[hits[0, 0] + 1:] = pad
    assert torch.equal(out, expected) and (out[0, 3:] == pad).all()


def test_without_a_pad_token_eos_pads(model):
    noise = torch.randn(1, 8, 3)
    eos = int(argmax_samples(model, noise)[0, 1])
    out = argmax_samples(model, noise, eos_token_id=[eos])
    assert (out[0, 1:] == eos).all()


def test_min_new_tokens_keeps_eos_out_of_the_first_positions(model):
    noise = torch.randn(4, 8, 3)
    eos = int(argmax_samples(model, noise)[0, 0])
    out = argmax_samples(model, noise, eos_token_id=eos, pad_token_id=eos, min_new_tokens=4)
    assert not (out[:, :4] == eos).any()
    sampled = model.generate(max_new_tokens=8, num_return_sequences=16, eos_token_id=eos, min_new_tokens=6, seed=0)
    assert not (sampled[:, :6] == eos).any()


def test_min_new_tokens_above_the_length_is_an_error(model):
    with pytest.raises(ValueError, match=r"min_new_tokens \(6, from min_new_tokens or min_length\) exceeds the 4"):
        model.generate(max_new_tokens=4, min_new_tokens=6)


def test_an_eos_outside_the_vocabulary_is_an_error(model):
    with pytest.raises(ValueError, match=r"eos_token_id 11 is outside the vocabulary \[0, 11\)"):
        model.generate(max_new_tokens=4, eos_token_id=11)


# The final draw x_t ~ p(x_t | z_t) and τ on the base noise, in a stack without a next-token layer (with a Mix-d
# first layer these controls act on π_t instead: tests/modeling/test_next_token_controls.py)


@pytest.fixture(scope="module")
def final_draw_model():
    """The tiny model's stack with an affine first layer: no next-token distribution, so the controls act on the
    final draw."""
    from modeling_tarflow import TarFlowForCausalFlowLM
    from tests.helpers.modeling import randomize_, tiny_config

    layers = [{"coupling": "affine", "num_layers": 1}, {"coupling": "mixture_cdf", "num_mixtures": 3, "num_layers": 1}]
    return randomize_(TarFlowForCausalFlowLM(tiny_config(patch_size=2, flow_layers=layers))).eval()


@pytest.mark.filterwarnings("ignore:temperature, top_k, top_p and min_p act on the final draw")
@pytest.mark.parametrize("kwargs", [{"top_k": 1}, {"top_p": 1e-9}, {"temperature": 0.0, "noise_temperature": 1.0}],
                         ids=["top_k=1", "top_p→0", "temperature=0"])
def test_draws_narrowed_to_one_token_are_the_argmax(final_draw_model, kwargs):
    model = final_draw_model
    noise = torch.randn(4, 8, 3)
    sampled = model.generate(noise=noise, max_new_tokens=8, num_return_sequences=4, do_sample=True, seed=0, **kwargs)
    assert torch.equal(sampled, argmax_samples(model, noise))


@pytest.mark.filterwarnings("ignore:temperature, top_k, top_p and min_p act on the final draw")
def test_temperature_flattens_the_final_draw(final_draw_model):
    model = final_draw_model
    noise = torch.randn(1, 16, 3).repeat(256, 1, 1)       # one z, many draws of x given z
    mode = argmax_samples(model, noise)

    def agreement(temperature):
        draws = model.generate(noise=noise, max_new_tokens=16, num_return_sequences=256, noise_temperature=1.0,
                               temperature=temperature, seed=0)
        return (draws == mode).float().mean().item()

    assert agreement(1.0) > 0.6 and agreement(100.0) < 0.25   # near uniform over 11 tokens at T = 100


@pytest.mark.filterwarnings("ignore:temperature, top_k, top_p and min_p act on the final draw")
def test_noise_temperature_scales_the_base_noise_and_overrides_temperature_there(final_draw_model):
    model = final_draw_model
    noise = torch.randn(2, 8, 3)
    out = model.generate(noise=noise, max_new_tokens=8, num_return_sequences=2, noise_temperature=0.5,
                         temperature=2.0, do_sample=False, output_hidden_states=True)
    assert torch.equal(out.hidden_states[0], 0.5 * noise)
    alone = model.generate(noise=noise, max_new_tokens=8, num_return_sequences=2, temperature=0.5,
                           do_sample=False, output_hidden_states=True)
    assert torch.equal(alone.hidden_states[0], 0.5 * noise), "unset, τ follows temperature"


def test_the_final_draw_controls_say_where_they_act_in_a_stack_without_a_next_token_layer(final_draw_model):
    with pytest.warns(UserWarning, match="act on the final draw .* not on a next-token distribution: this model has "
                      "none .its first flow layer is AffineCoupling"):
        final_draw_model.generate(max_new_tokens=4, top_p=0.9)


def test_unset_truncations_leave_the_default_draw_unchanged(model):
    assert torch.equal(model.generate(max_new_tokens=8, seed=4),
                       model.generate(max_new_tokens=8, seed=4, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))


# Fields a flow sampler cannot honour


@pytest.mark.parametrize("kwargs, reason", [
    ({"repetition_penalty": 1.3}, "no token can be conditioned on the tokens drawn before it"),
    ({"no_repeat_ngram_size": 2}, "no token can be conditioned on the tokens drawn before it"),
    ({"bad_words_ids": [[1]]}, "no token can be conditioned on the tokens drawn before it"),
    ({"num_beams": 2}, "beam search ranks partial sequences"),
    ({"stop_strings": ["x"]}, "stop_strings needs the tokenizer"),
    ({"typical_p": 0.5}, "has no counterpart"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"noise_temperature": -1.0}, "noise_temperature must be ≥ 0"),
])
def test_fields_without_a_meaning_here_are_refused_with_the_reason(model, kwargs, reason):
    with pytest.raises(ValueError, match=reason):
        model.generate(max_new_tokens=4, **kwargs)


def test_refused_fields_at_their_off_value_are_accepted(model):
    assert torch.equal(model.generate(max_new_tokens=4, seed=2, repetition_penalty=1.0, num_beams=1),
                       model.generate(max_new_tokens=4, seed=2))
