"""Sampling controls act where a tied Mix-d first layer decides the tokens: on π_t, the next-token distribution
p(x_t | z_<t) (Prop. 4), while that layer is inverted; without any control the samples are those of the sampler
before the controls existed."""

import pytest
import torch
from tests.helpers.modeling import tiny_config
from transformers import LogitsProcessor, LogitsProcessorList

from evaluation.entropy import sample_entropies
from modeling_tarflow import TarFlowForCausalFlowLM

pytestmark = pytest.mark.usefixtures("single_thread")

L2R = [{"coupling": "mixture_rosenblatt", "num_layers": 1, "direction": "l2r"},
       {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 1, "direction": "l2r"}]
R2L = [{"coupling": "mixture_rosenblatt", "num_layers": 1},
       {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 1}]
LAYERS = {"l2r": L2R, "r2l": R2L}
PROMPT = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])

# Sampled by the sampler before the sampling controls (same seeds and settings as `reference_sample`).
REFERENCE_IDS = {
    "l2r unprompted": [[8, 1, 3, 5, 10, 6, 9, 8], [4, 4, 3, 0, 1, 6, 8, 2]],
    "l2r prompted": [[1, 2, 3, 4, 5, 7, 0, 8, 6, 10, 8, 8], [5, 6, 7, 8, 4, 4, 3, 5, 2, 4, 1, 2]],
    "l2r argmax": [[0, 5, 10, 5, 6, 8, 9, 6], [4, 4, 5, 5, 2, 6, 8, 5]],
    "r2l unprompted": [[8, 1, 3, 5, 10, 6, 9, 8], [4, 4, 2, 0, 1, 6, 0, 2]],
    "r2l prompted": [[1, 2, 3, 4, 7, 2, 9, 4, 5, 5, 1, 7], [5, 6, 7, 8, 8, 1, 6, 3, 7, 5, 6, 10]],
    "r2l argmax": [[0, 5, 10, 5, 6, 6, 10, 8], [4, 4, 5, 2, 2, 6, 8, 5]],
}


def seeded_model(layers: str) -> TarFlowForCausalFlowLM:
    """Every parameter drawn from a seeded N(0, 0.3²): π_t depends on the context, no flow is the identity."""
    model = TarFlowForCausalFlowLM(tiny_config(patch_size=2, flow_layers=LAYERS[layers])).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def unigram_model() -> TarFlowForCausalFlowLM:
    """π_t fixed at p_k ∝ exp(−0.3 k) over 11 tokens (an informative next-token distribution by construction), and
    a codebook of narrow, far-apart components, so that each latent decodes to its own component."""
    model = seeded_model("l2r")
    coupling = model.flow.layers[0].coupling
    with torch.no_grad():
        coupling.head.weight.zero_()
        coupling.head.bias.copy_(-0.3 * torch.arange(11.0).repeat(2))
        model.codebook.mu.mul_(10.0)
        model.codebook.log_sigma.fill_(-2.0)
    return model


def reference_sample(model, case: str, **controls):
    settings = dict(max_new_tokens=8, seed=3, **controls)
    if case == "prompted":
        return model.generate(PROMPT, prompt_proposals=3, prompt_mcmc_steps=2, **settings)
    return model.generate(num_return_sequences=2, do_sample=case != "argmax", **settings)


def argmax_pi(model, z: torch.Tensor) -> torch.Tensor:
    """The most probable token under π_t given z_<t at every position, from a forward pass of the first layer."""
    layer = model.flow.layers[0]
    patches = z.reshape(z.shape[0], -1, model.config.patch_size * model.config.latent_dim)
    return layer.coupling.mixture_logits(layer.conditioner(patches)).argmax(-1).flatten(1)


@pytest.mark.parametrize("name", sorted(REFERENCE_IDS))
def test_without_controls_the_samples_are_those_before_the_controls(name):
    layers, case = name.split()
    assert reference_sample(seeded_model(layers), case).tolist() == REFERENCE_IDS[name]


@pytest.mark.parametrize("greedy", [{"top_k": 1}, {"temperature": 0.0}], ids=["top_k=1", "temperature=0"])
def test_greedy_decoding_emits_the_most_probable_next_token_at_every_position(greedy):
    model = seeded_model("l2r")
    out = model.generate(max_new_tokens=16, num_return_sequences=3, seed=0, output_hidden_states=True, **greedy)
    assert torch.equal(out.sequences, argmax_pi(model, out.hidden_states[-1]))
    plain = model.generate(max_new_tokens=16, num_return_sequences=3, seed=0)
    assert not torch.equal(plain, out.sequences), "the controls change the sample"


def test_greedy_continuation_of_a_prompt_is_exact_ancestral_decoding_given_the_prompt_latents():
    model = seeded_model("l2r")
    out = model.generate(PROMPT, max_new_tokens=8, top_k=1, seed=1, output_hidden_states=True)
    assert torch.equal(out.sequences[:, :4], PROMPT)
    assert torch.equal(out.sequences[:, 4:], argmax_pi(model, out.hidden_states[-1])[:, 4:])


def test_temperature_acts_on_pi_and_leaves_the_base_noise_at_tau_one():
    model = seeded_model("l2r")
    noise = torch.randn(2, 8, 3)
    out = model.generate(noise=noise, max_new_tokens=8, num_return_sequences=2, temperature=0.5, seed=0,
                         output_hidden_states=True)
    assert torch.equal(out.hidden_states[0], noise)
    cooled = model.generate(noise=noise, max_new_tokens=8, num_return_sequences=2, noise_temperature=0.5,
                            output_hidden_states=True, seed=0)
    assert torch.equal(cooled.hidden_states[0], 0.5 * noise)


def test_entropy_falls_monotonically_as_top_p_narrows_the_next_token_distribution():
    model = unigram_model()

    def entropy(top_p):
        ids = model.generate(max_new_tokens=16, num_return_sequences=32, seed=0, top_p=top_p)
        return sum(sample_entropies(ids)) / len(ids)

    entropies = [entropy(top_p) for top_p in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)]
    assert all(later <= earlier for earlier, later in zip(entropies, entropies[1:])), entropies
    assert entropies[-1] < entropies[0] - 0.5, entropies


class BanToken(LogitsProcessor):
    """Bans one token id, recording the ids it was shown."""

    def __init__(self, token: int):
        self.token, self.seen = token, []

    def __call__(self, input_ids, scores):
        self.seen.append(input_ids.clone())
        return scores.masked_fill(torch.arange(scores.shape[-1]) == self.token, float("-inf"))


def test_a_logits_processor_that_bans_a_token_is_obeyed_and_sees_the_ids_so_far():
    model = unigram_model()
    assert (model.generate(max_new_tokens=16, num_return_sequences=8, seed=0) == 0).float().mean() > 0.15
    ban = BanToken(0)
    out = model.generate(PROMPT, max_new_tokens=8, seed=0, logits_processor=LogitsProcessorList([ban]))
    assert not (out[:, 4:] == 0).any()
    assert torch.equal(ban.seen[0], PROMPT), "the first patch sees the prompt"
    assert torch.equal(ban.seen[-1], out[:, :-2]), "the last patch sees every id before it (P = 2)"


def test_truncation_with_a_prompt_and_right_to_left_layers_is_refused_with_the_reason():
    model = seeded_model("r2l")
    for controls in ({"top_p": 0.9}, {"logits_processor": LogitsProcessorList([BanToken(0)])}):
        with pytest.raises(ValueError, match="importance resampling and Metropolis–Hastings .* no density"):
            model.generate(PROMPT, max_new_tokens=8, **controls)
    assert model.generate(max_new_tokens=8, top_p=0.9, seed=0).shape == (1, 8), "unprompted it applies"


def test_a_logits_processor_is_refused_where_there_is_no_next_token_distribution():
    layers = [{"coupling": "affine", "num_layers": 1}, {"coupling": "mixture_rosenblatt", "num_layers": 1}]
    model = TarFlowForCausalFlowLM(tiny_config(patch_size=2, flow_layers=layers)).eval()
    with pytest.raises(ValueError, match="logits_processor needs a next-token distribution.*AffineCoupling"):
        model.generate(max_new_tokens=4, logits_processor=LogitsProcessorList([BanToken(0)]))
