"""The evaluation passes τ (the scale of TarFlowLM's base noise, paper §7.1) and the next-token temperature apart."""

import torch

from evaluation.sampling import latent_samples
from modeling_tarflow import TarFlowForCausalFlowLM
from tests.helpers.modeling import tiny_config


def test_tau_and_the_next_token_temperature_reach_generate_separately(monkeypatch):
    model = TarFlowForCausalFlowLM(tiny_config())
    seen = {}

    def generate(**kwargs):
        seen.update(kwargs)
        return torch.zeros(kwargs["num_return_sequences"], kwargs["max_new_tokens"], dtype=torch.long)

    monkeypatch.setattr(model, "generate", generate)
    latent_samples(model, num=2, length=4, noise_temperature=0.7)
    assert seen["noise_temperature"] == 0.7 and seen["temperature"] == 1.0 and "top_p" not in seen
    latent_samples(model, num=2, length=4, temperature=0.8, top_p=0.9)
    assert seen["noise_temperature"] == 1.0 and seen["temperature"] == 0.8 and seen["top_p"] == 0.9
