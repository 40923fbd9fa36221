"""Sampling from TarFlowLM: u ~ N(0, τ²I) → inverse flows (patch by patch, KV-cached) → tied decoder."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from .validation import check_length


class TarFlowGenerationConfig(GenerationConfig):
    r"""Generation settings of TarFlowLM.

    Args:
        max_new_tokens (`int`): tokens to sample (a multiple of `patch_size`; default: the model's context).
        num_return_sequences (`int`): samples per call.
        temperature (`float`): τ, the scale of the base noise u ~ N(0, τ²I) (1.0 samples the model).
        do_sample (`bool`): draw x_t ~ p(x_t|z_t) (categorical, in float64) instead of taking the argmax.
        seed (`int`, *optional*): seeds a private generator, so samples are reproducible without touching the
            global RNG.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("do_sample", True)
        self.seed = kwargs.pop("seed", None)
        super().__init__(**kwargs)

    def validate(self, strict=False, **kwargs):
        # Unlike beam-less greedy decoding of an AR LM, every draw of u gives a different sequence, so several
        # return sequences are meaningful with an argmax final decode too: skip that one check of the base class.
        requested, self.num_return_sequences = self.num_return_sequences, None
        try:
            super().validate(strict, **kwargs)
        finally:
            self.num_return_sequences = requested
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0 (it scales the base noise u), got {self.temperature}")


@torch.no_grad()
def sample_unconditional(model, config: TarFlowGenerationConfig) -> torch.LongTensor:
    """(num_return_sequences, max_new_tokens) token ids sampled from `model` (a `TarFlowForCausalFlowLM`)."""
    length = config.max_new_tokens or model.config.max_position_embeddings
    check_length(length, model.config.patch_size, model.config.max_position_embeddings, "max_new_tokens")
    device = model.device
    generator = torch.Generator(device=device).manual_seed(config.seed) if config.seed is not None else None
    batch = config.num_return_sequences or 1
    dtype = next(model.parameters()).dtype if next(model.parameters()).is_floating_point() else torch.float32
    dtype = torch.promote_types(dtype, torch.float32)
    u = torch.randn(batch, length, model.config.latent_dim, device=device, dtype=dtype, generator=generator)
    z = model.flow.inverse(u * (config.temperature if config.temperature is not None else 1.0))
    return decode_tokens(model.decode(z), config.do_sample, generator)


def decode_tokens(logits: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.LongTensor:
    """x_t ~ softmax(logits_t) drawn in float64 (float32 draws truncate the tails and bias entropy), or argmax."""
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double(), dim=-1).flatten(0, -2)
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


__all__ = ["TarFlowGenerationConfig", "sample_unconditional", "decode_tokens"]
