"""Sampling from TarFlowLM: u ~ N(0, τ²I) → inverse flows (patch by patch, KV-cached, or Jacobi) → tied decoder,
optionally continuing a prompt (`prompting.py`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from .decoding import JacobiDecoding, SequentialDecoding
from .flow import FlowInversion
from .prompting import PromptedSample, sample_continuation
from .validation import check_input_ids, check_length

DECODINGS = ("sequential", "jacobi")


class TarFlowGenerationConfig(GenerationConfig):
    r"""Generation settings of TarFlowLM (saved as `generation_config.json` next to the weights).

    Args:
        max_new_tokens (`int`, *optional*): tokens to sample after the prompt, a multiple of `patch_size`
            (default: fill the context).
        num_return_sequences (`int`): samples per prompt (per call without a prompt).
        temperature (`float`): τ, the scale of the base noise u ~ N(0, τ²I) (1.0 samples the model, 0 its mode map).
        do_sample (`bool`): draw x_t ~ p(x_t|z_t) (categorical, in float64) instead of taking the argmax.
        use_cache (`bool`): sequential decoding keeps each layer's keys and values in a preallocated KV cache
            (default); False recomputes the transformer over all earlier patches (slow; a reference).
        decoding (`str`): `"sequential"` (exact, default) or `"jacobi"` (parallel fixed-point iteration per block of
            patches, stopping at `jacobi_tolerance`; see `decoding.JacobiDecoding`).
        jacobi_block_size (`int`), jacobi_max_iterations (`int`, *optional*: default the block size, which makes
            the iteration exact), jacobi_tolerance (`float`: max change of a latent between iterations),
            jacobi_fallback_fraction (`float`: a layer whose block needs more iterations than this fraction of its
            size finishes patch by patch).
        prompt_proposals (`int`), prompt_mcmc_steps (`int`): with a prompt and right-to-left layers, the
            candidates of the importance-resampled start (drawn in parallel) and the Metropolis–Hastings moves after
            it (each one more sequential inversion); see `prompting.py`. Unused otherwise.
        seed (`int`, *optional*): seeds a private generator, so samples are reproducible without touching the
            global RNG.
        output_hidden_states (`bool`), return_dict_in_generate (`bool`): return a `TarFlowGenerateOutput` (with
            the latent after every inverse flow layer when `output_hidden_states`) instead of the ids.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("do_sample", True)
        kwargs.setdefault("use_cache", True)
        self.seed = kwargs.pop("seed", None)
        self.decoding = kwargs.pop("decoding", "sequential")
        self.jacobi_block_size = kwargs.pop("jacobi_block_size", 32)
        self.jacobi_max_iterations = kwargs.pop("jacobi_max_iterations", None)
        self.jacobi_tolerance = kwargs.pop("jacobi_tolerance", 1e-4)
        self.jacobi_fallback_fraction = kwargs.pop("jacobi_fallback_fraction", 0.5)
        self.prompt_proposals = kwargs.pop("prompt_proposals", 8)
        self.prompt_mcmc_steps = kwargs.pop("prompt_mcmc_steps", 4)
        super().__init__(**kwargs)

    def validate(self, strict=False, **kwargs):
        # Every draw of u gives a different sequence, so several return sequences are meaningful with an argmax
        # final decode too; τ scales the base noise, not logits; hidden states alone already ask for an output
        # object: hide the three from the base class's checks, which assume an autoregressive token sampler.
        with _hidden(self, "num_return_sequences", "temperature", "output_hidden_states"):
            super().validate(strict, **kwargs)
        if self.temperature is not None and not self.temperature >= 0:
            raise ValueError(f"temperature must be ≥ 0 (it scales the base noise u), got {self.temperature}")
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {self.decoding!r}")
        for name, least in (("jacobi_block_size", 1), ("jacobi_max_iterations", 1), ("prompt_proposals", 1),
                            ("prompt_mcmc_steps", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name} must be an integer ≥ {least}, got {value!r}")
        for name in ("jacobi_tolerance", "jacobi_fallback_fraction"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)!r}")

    def layer_decoding(self) -> SequentialDecoding | JacobiDecoding:
        """The strategy that inverts each flow layer over its patches."""
        if self.decoding == "jacobi":
            return JacobiDecoding(self.jacobi_block_size, self.jacobi_max_iterations, self.jacobi_tolerance,
                                  self.jacobi_fallback_fraction)
        return SequentialDecoding(use_cache=self.use_cache is not False)


@contextlib.contextmanager
def _hidden(config: GenerationConfig, *names: str):
    saved = {name: getattr(config, name) for name in names}
    try:
        for name in names:
            setattr(config, name, None)
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


@dataclass
class TarFlowGenerateOutput(ModelOutput):
    r"""What `generate` returns with `return_dict_in_generate` or `output_hidden_states`.

    Args:
        sequences (`torch.LongTensor` of shape `(batch, prompt_length + max_new_tokens)`): the prompt, reproduced
            exactly, then the sampled tokens.
        hidden_states (`tuple`, *optional*): with `output_hidden_states`, the latent after every inverse flow layer,
            [h^(L) = u, h^(L−1), .., h^(0) = z], each `(batch, length, latent_dim)` (the paper's intermediate
            decoding, App. G; see `inspection.py`). With a prompt they cover the whole sequence, from a forward pass
            of the final z.
        root_iterations (`list[int]`): root-finder iterations of each inverse layer's slowest entry (layer L first).
        fixed_point_iterations (`tuple[list[int], ...]`): Jacobi iterations per block, per layer (layer L first).
        prompt_effective_sample_size (`torch.FloatTensor` of shape `(batch,)`, *optional*): of the importance
            weights of the prompt sampler's start, out of `prompt_proposals` (prompts with right-to-left layers).
        prompt_acceptance (`torch.FloatTensor` of shape `(batch,)`, *optional*): the fraction of accepted
            Metropolis–Hastings moves per sequence (prompts with right-to-left layers and `prompt_mcmc_steps` > 0).
    """

    sequences: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    root_iterations: list[int] | None = None
    fixed_point_iterations: tuple[list[int], ...] | None = None
    prompt_effective_sample_size: torch.FloatTensor | None = None
    prompt_acceptance: torch.FloatTensor | None = None


@torch.no_grad()
def generate_tokens(model, input_ids: torch.LongTensor | None, config: TarFlowGenerationConfig,
                    noise: torch.Tensor | None = None) -> torch.LongTensor | TarFlowGenerateOutput:
    """Sample from `model` (a `TarFlowForCausalFlowLM`): see `TarFlowForCausalFlowLM.generate`."""
    prompt = _checked_prompt(input_ids, model.config)
    length = _new_token_count(config, prompt, model.config)
    repeats = config.num_return_sequences or 1
    batch = repeats * (1 if prompt is None else prompt.shape[0])
    generator = torch.Generator(device=model.device).manual_seed(config.seed) if config.seed is not None else None
    temperature = config.temperature if config.temperature is not None else 1.0
    u = temperature * _base_noise(noise, (batch, length, model.config.latent_dim), model, generator)
    if prompt is None:
        inversion, sample = model.flow.inverse_with_details(u, decoding=config.layer_decoding()), None
        z_new, hidden_states = inversion.z, inversion.hidden_states
    else:
        prompt = prompt.repeat_interleave(repeats, dim=0)
        prompt_z = model.codebook.sample(prompt, _standard_normal(prompt.shape + (model.config.latent_dim,),
                                                                  u, generator))
        sample = sample_continuation(model.flow, prompt_z.to(u.dtype), u, config.layer_decoding(), temperature,
                                     config.prompt_proposals, config.prompt_mcmc_steps, generator)
        inversion, z_new = sample.inversion, sample.z[:, prompt.shape[1]:]
        hidden_states = model.flow.forward_layers(sample.z)[2][::-1] if config.output_hidden_states else None
    new_ids = decode_tokens(model.decode(z_new), bool(config.do_sample), generator)
    sequences = new_ids if prompt is None else torch.cat([prompt, new_ids], dim=1)
    if not (config.return_dict_in_generate or config.output_hidden_states):
        return sequences
    return _output(sequences, inversion, hidden_states if config.output_hidden_states else None, sample)


def _output(sequences, inversion: FlowInversion, hidden_states, sample: PromptedSample | None
            ) -> TarFlowGenerateOutput:
    return TarFlowGenerateOutput(
        sequences=sequences, hidden_states=None if hidden_states is None else tuple(hidden_states),
        root_iterations=list(inversion.iterations), fixed_point_iterations=inversion.fixed_point_iterations,
        prompt_effective_sample_size=None if sample is None else sample.effective_sample_size,
        prompt_acceptance=None if sample is None else sample.acceptance)


def _checked_prompt(input_ids, model_config) -> torch.LongTensor | None:
    """The prompt (batch, m), or None; errors name what is wrong with it."""
    if input_ids is None:
        return None
    patch_size = model_config.patch_size
    if torch.is_tensor(input_ids) and input_ids.dim() == 2 and input_ids.shape[1] % patch_size:
        raise ValueError(f"prompt length {input_ids.shape[1]} is not a multiple of patch_size {patch_size}: the "
                         f"flows condition on whole patches; trim the prompt to a multiple of {patch_size} tokens")
    check_input_ids(input_ids, model_config.vocab_size, patch_size, model_config.max_position_embeddings,
                    "input_ids (the prompt)")
    return input_ids


def _new_token_count(config: TarFlowGenerationConfig, prompt: torch.Tensor | None, model_config) -> int:
    context, prompt_length = model_config.max_position_embeddings, 0 if prompt is None else prompt.shape[1]
    length = config.max_new_tokens if config.max_new_tokens is not None else context - prompt_length
    if length < 1:
        raise ValueError(f"the prompt ({prompt_length} tokens) fills the context ({context}): nothing to generate")
    check_length(length, model_config.patch_size, context, "max_new_tokens")
    if prompt_length + length > context:
        raise ValueError(f"prompt ({prompt_length} tokens) + max_new_tokens ({length}) exceeds the context "
                         f"max_position_embeddings={context}; use max_new_tokens ≤ {context - prompt_length}")
    return length


def _base_noise(noise: torch.Tensor | None, shape: tuple, model, generator) -> torch.Tensor:
    """u ~ N(0, I) of `shape` in the sampling dtype (≥ float32), or the caller's `noise` after checks."""
    dtype = torch.promote_types(model.dtype, torch.float32)
    if noise is None:
        return torch.randn(shape, device=model.device, dtype=dtype, generator=generator)
    if not torch.is_tensor(noise) or not noise.is_floating_point():
        raise TypeError(f"noise must be a floating-point torch.Tensor, got {type(noise).__name__}")
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise must have shape (batch · num_return_sequences, max_new_tokens, latent_dim) = "
                         f"{tuple(shape)}, got {tuple(noise.shape)}")
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("noise contains NaN or infinite values")
    return noise.to(device=model.device, dtype=torch.promote_types(noise.dtype, dtype))


def _standard_normal(shape: tuple, like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(shape, device=like.device, dtype=like.dtype, generator=generator)


def decode_tokens(logits: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.LongTensor:
    """x_t ~ softmax(logits_t) drawn in float64 (float32 draws truncate the tails and bias entropy), or argmax."""
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double(), dim=-1).flatten(0, -2)
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


__all__ = ["TarFlowGenerationConfig", "TarFlowGenerateOutput", "generate_tokens", "decode_tokens", "DECODINGS"]
