"""The evaluation's τ is the scale of TarFlowLM's base noise (paper §7.1), not a tempering of the final draw."""

import torch

from evaluation.sampling import latent_samples
from modeling_tarflow import TarFlowForCausalFlowLM
from tests.helpers.modeling import tiny_config


def test_tau_scales_the_base_noise_and_leaves_the_final_draw_at_temperature_one(monkeypatch):
    model = TarFlowForCausalFlowLM(tiny_config())
    seen = {}

    def generate(**kwargs):
        seen.update(kwargs)
        return torch.zeros(kwargs["num_return_sequences"], kwargs["max_new_tokens"], dtype=torch.long)

    monkeypatch.setattr(model, "generate", generate)
    latent_samples(model, num=2, length=4, temperature=0.7)
    assert seen["noise_temperature"] == 0.7 and seen["temperature"] == 1.0
