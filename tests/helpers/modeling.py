"""A tiny TarFlowConfig and a way to move a model off its initialisation, shared by the model tests."""

import torch


def tiny_config(**overrides):
    """A small TarFlowConfig for tests: V = 11 tokens, d = 3, width 32."""
    from modeling_tarflow import TarFlowConfig

    settings = dict(vocab_size=11, latent_dim=3, patch_size=1, hidden_size=32, num_attention_heads=2,
                    max_position_embeddings=16, maf_hidden_size=16,
                    flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": 1},
                                 {"coupling": "mixture_cdf", "num_mixtures": 3, "num_layers": 1},
                                 {"coupling": "affine", "num_layers": 1}])
    settings.update(overrides)
    return TarFlowConfig(**settings)


def randomize_(model, scale=0.1, seed=1):
    """Move every parameter off its initialisation (zero heads included) so no flow is the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model
