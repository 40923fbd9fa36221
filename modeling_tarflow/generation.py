"""Sampling from TarFlowLM (Fig. 1, blue arrow): u ~ N(0, τ²I) → the inverse flows z = f⁻¹(u) (§3.3; patch by
patch, KV-cached, or Jacobi: `inversion.py`) → x_t ~ p(x_t | z_t), the tied decoder (§3.1; `token_draw.py`),
optionally continuing a prompt (`prompting.py`). With a tied Mix-d first layer, temperature, top-k/p, min-p and
logits processors act on its π_t, the next-token distribution, while it is inverted; tokens are then decided patch
by patch, streamed, and stopped early (`next_token_controls.py`, `deciding_inversion.py`).
`TarFlowGenerationConfig` holds every sampling setting."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from .deciding_inversion import DecidingInversion
from .flow import FlowInversion
from .inversion import JacobiInversion, SequentialInversion
from .next_token_controls import TokenDecider, resolve_controls
from .precision import working_dtype
from .prompting import PromptedSample, sample_continuation
from .root_finding import RootFinding
from .token_draw import draw_tokens
from .input_checks import as_token_ids, check_length, check_noise, check_unpadded, is_integer

DECODINGS = ("auto", "sequential", "jacobi")

# The `GenerationConfig` fields this sampler honours (TarFlowLM's own fields come on top); any other field set to a
# value other than its "off" value is refused with the reason below, never accepted and ignored.
HONOURED_FIELDS = frozenset({
    "max_new_tokens", "max_length", "min_new_tokens", "min_length", "num_return_sequences", "do_sample",
    "temperature", "top_k", "top_p", "min_p", "eos_token_id", "pad_token_id", "bos_token_id", "use_cache",
    "stop_strings", "max_time", "output_hidden_states", "return_dict_in_generate", "transformers_version"})
_AFTER_THE_LATENTS = ("TarFlowLM draws every token x_t from p(x_t | z_t) after the whole latent sequence z is sampled, "
                      "so no token can be conditioned on the tokens drawn before it")
_NO_PARTIAL_SEQUENCES = ("beam search ranks partial sequences token by token; TarFlowLM samples the latents of all "
                         "positions together, so there are none to rank (draw several with num_return_sequences)")
_REFUSAL_REASONS = {
    **dict.fromkeys(("num_beams", "num_beam_groups", "diversity_penalty", "length_penalty", "early_stopping",
                     "constraints", "force_words_ids"), _NO_PARTIAL_SEQUENCES),
    **dict.fromkeys(("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                     "encoder_no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "penalty_alpha"),
                    _AFTER_THE_LATENTS),
}


class TarFlowGenerationConfig(GenerationConfig):
    r"""Generation settings of TarFlowLM (saved as `generation_config.json` next to the weights).

    Args:
        max_new_tokens (`int`, *optional*): tokens to sample after the prompt, a multiple of `patch_size`.
        max_length (`int`, *optional*): the total length, prompt included, when `max_new_tokens` is not given (as
            in `transformers`); a model's default is its context, so `generate()` fills the context.
        min_new_tokens (`int`, *optional*), min_length (`int`, *optional*: total): with `eos_token_id`, EOS cannot be
            drawn at the first new positions (banned in π_t with a Mix-d first layer, and in the final draw), so
            every row keeps at least this many tokens before its padding. Without EOS every row has exactly the
            requested length, which may not be below this minimum.
        num_return_sequences (`int`): samples per prompt (per call without a prompt), ≥ 1.
        noise_temperature (`float`, *optional*): τ, the scale of the base noise u ~ N(0, τ²I) (1 samples the model,
            0 gives its mode map). Unset: 1 with a tied Mix-d first layer (where `temperature` acts on π_t), else
            `temperature` (one knob cools both random steps of sampling).
        temperature (`float`), top_k (`int`), top_p (`float`), min_p (`float`): with a tied Mix-d first layer, act
            on its mixture weights π_t, the next-token distribution p(x_t | z_<t) (Prop. 4), as on GPT-2's logits,
            with `transformers`' own warpers in `generate`'s order (temperature 0, or `top_k=1`: the most probable
            token at every position, a greedy decode); see `next_token_controls.py`. In other stacks they reshape
            the final draw x_t ~ p(x_t | z_t) per position (with a warning), and `temperature` is also τ unless
            `noise_temperature` is set. Unset means no truncation (not transformers' global default top_k = 50).
        do_sample (`bool`): draw x_t ~ p(x_t|z_t) (categorical, in float64) instead of taking its argmax (with a
            Mix-d first layer, within the tokens π_t kept). It is not greedy decoding: z is still random.
        stop_strings (`str | list[str]`, *optional*; needs `generate(tokenizer=...)`), max_time (`float`, *optional*:
            seconds): stopping criteria, as `generate`'s `stopping_criteria`; a row that stops holds `pad_token_id`
            after its last token (the sequence keeps its length), and once every row has stopped no further patch
            is inverted.
        eos_token_id (`int | list[int]`, *optional*), pad_token_id (`int`, *optional*): the positions after a row's
            first EOS among the new tokens hold `pad_token_id` (EOS itself when unset), as `transformers` pads.
        use_cache (`bool`): sequential decoding keeps each layer's keys and values in a preallocated KV cache
            (default); False recomputes the transformer over all earlier patches (slow; a reference).
        decoding (`str`): `"sequential"` (the exact inverse), `"jacobi"` (parallel fixed-point iteration per block
            of patches, stopping at `jacobi_tolerance`; see `inversion.JacobiInversion`) or `"auto"` (default): Jacobi
            when at most `jacobi_max_batch_size` sequences are sampled at once — where per-step overhead dominates
            and Jacobi is the faster — and sequential otherwise, where the transformer's arithmetic dominates and
            Jacobi's extra work per patch makes it the slower (docs/generation.md has the measurements).
        jacobi_max_batch_size (`int`): the most sequences (batch · num_return_sequences) for which `"auto"`
            chooses Jacobi (0: never).
        compile_backend (`str`, *optional*): a `torch.compile` backend (`"inductor"`) to compile each flow layer's
            per-patch coupling inverse with (the root finder's branch-free mode; a patch it leaves unconverged is
            solved again eagerly, so samples stay exact). Compiling takes a while once per model and shape; it pays
            where per-operation overhead dominates (batch 1). None (default): eager.
        jacobi_block_size (`int`), jacobi_max_iterations (`int`, *optional*: default the block size, which makes
            the iteration exact), jacobi_tolerance (`float`: max change of a latent between iterations),
            jacobi_fallback_fraction (`float`: a layer whose block needs more iterations than this fraction of its
            size finishes patch by patch).
        root_tolerance (`float`, *optional*), root_max_iterations (`int`, *optional*): the stopping rule of the
            inverse-CDF root finder of the mixture layers (|Φ⁻¹(F(z)) − u| in probit units, and its iteration cap).
            Unset: the values an older config.json carries, else 1e-6 and 100 (`RootFinding.for_model`).
        prompt_proposals (`int`), prompt_mcmc_steps (`int`): with a prompt and right-to-left layers, the
            candidates of the importance-resampled start (drawn in parallel) and the Metropolis–Hastings moves after
            it (each one more sequential inversion); see `prompting.py`. Unused otherwise.
        seed (`int`, *optional*): seeds a private generator, so samples are reproducible without touching the
            global RNG.
        output_hidden_states (`bool`), return_dict_in_generate (`bool`): return a `TarFlowGenerateOutput` (with
            the latent after every inverse flow layer when `output_hidden_states`) instead of the ids.

    Every other `GenerationConfig` field (`num_beams`, `repetition_penalty`, `bad_words_ids`, ...) is refused with
    the reason when set; `bos_token_id` is accepted and unused (sampling without a prompt needs no start token).
    """

    # TarFlowLM's own fields and their defaults, set before `GenerationConfig.__init__` (which validates).
    own_defaults = {
        "noise_temperature": None, "seed": None, "decoding": "auto", "jacobi_max_batch_size": 1,
        "compile_backend": None, "jacobi_block_size": 32, "jacobi_max_iterations": None, "jacobi_tolerance": 1e-4,
        "jacobi_fallback_fraction": 0.5, "root_tolerance": None, "root_max_iterations": None,
        "prompt_proposals": 8, "prompt_mcmc_steps": 4,
    }

    def __init__(self, **kwargs):
        for name, default in self.own_defaults.items():
            setattr(self, name, kwargs.pop(name, default))
        super().__init__(**{"do_sample": True, "use_cache": True, **kwargs})

    def validate(self, strict=False, **kwargs):
        """Every field this sampler honours is checked here, and every other field is refused unless it holds its
        "off" value; `GenerationConfig.validate` is not called, since its rules are those of a token-by-token
        sampler (an argmax final draw cannot return several sequences; temperature acts on logits only)."""
        self._check_counts_and_scales()
        self._check_unsupported_fields()
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {self.decoding!r}")
        if self.compile_backend is not None and not isinstance(self.compile_backend, str):
            raise ValueError(f"compile_backend must be a torch.compile backend name or None, got "
                             f"{self.compile_backend!r}")
        for name in ("jacobi_tolerance", "jacobi_fallback_fraction"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)!r}")

    def _check_counts_and_scales(self) -> None:
        """Integer fields are integers (4.0 is not a token count) in range; scales are real numbers in range."""
        for name, least in (("max_new_tokens", 1), ("max_length", 1), ("min_new_tokens", 0), ("min_length", 0),
                            ("num_return_sequences", 1), ("top_k", 0), ("jacobi_block_size", 1),
                            ("jacobi_max_iterations", 1), ("jacobi_max_batch_size", 0), ("prompt_proposals", 1),
                            ("prompt_mcmc_steps", 0), ("root_max_iterations", 1)):
            value = getattr(self, name)
            if value is not None and (not is_integer(value) or value < least):
                raise ValueError(f"{name} must be an integer ≥ {least}, got {value!r}")
        if self.seed is not None and not is_integer(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for name, valid, allowed in (
                ("temperature", lambda t: t >= 0, "≥ 0 (0 is the argmax; unless noise_temperature is set it also "
                                                  "scales the base noise u)"),
                ("noise_temperature", lambda t: t >= 0, "≥ 0 (it scales the base noise u; 0 is the mode map)"),
                ("top_p", lambda p: 0 < p <= 1, "in (0, 1]"), ("min_p", lambda p: 0 <= p <= 1, "in [0, 1]"),
                ("max_time", lambda t: t >= 0, "≥ 0 (seconds)"),
                ("root_tolerance", lambda t: t > 0, "> 0")):
            value = getattr(self, name)
            if value is not None and not (_is_real(value) and valid(value)):
                raise ValueError(f"{name} must be {allowed}, got {value!r}")

    def _check_unsupported_fields(self) -> None:
        off_values = GenerationConfig._get_default_generation_params()
        for name in vars(GenerationConfig()):
            if name.startswith("_") or name in HONOURED_FIELDS:
                continue
            value = getattr(self, name, None)
            if value is not None and not (name in off_values and value == off_values[name]):
                reason = _REFUSAL_REASONS.get(name, "TarFlowLM's sampler has no counterpart for it (it honours "
                                              f"{sorted(HONOURED_FIELDS - {'transformers_version'})})")
                raise ValueError(f"{name}={value!r} is not supported by TarFlowLM's generate: {reason}")

    @property
    def base_noise_scale(self) -> float:
        """τ in a stack without a next-token layer: `noise_temperature`, else `temperature`, else 1."""
        for value in (self.noise_temperature, self.temperature):
            if value is not None:
                return value
        return 1.0

    def noise_scale(self, temperature_on_pi: bool) -> float:
        """τ: `noise_temperature`, else 1 where `temperature` acts on π_t, else `base_noise_scale`."""
        if temperature_on_pi:
            return 1.0 if self.noise_temperature is None else self.noise_temperature
        return self.base_noise_scale

    def resolved_decoding(self, batch_size: int) -> str:
        """`"sequential"` or `"jacobi"`: `decoding`, with `"auto"` decided by the sequences sampled at once."""
        if self.decoding != "auto":
            return self.decoding
        return "jacobi" if batch_size <= self.jacobi_max_batch_size else "sequential"

    def layer_inversion(self, batch_size: int = 1, model_config=None) -> SequentialInversion | JacobiInversion:
        """The strategy that inverts each flow layer over its patches, for `batch_size` sequences at once, with the
        root finder's settings (unset ones from `model_config`, see `RootFinding.for_model`)."""
        fallback = RootFinding.for_model(model_config)
        root = RootFinding(self.root_tolerance or fallback.tolerance, self.root_max_iterations or fallback.max_iterations)
        if self.resolved_decoding(batch_size) == "jacobi":
            return JacobiInversion(self.jacobi_block_size, self.jacobi_max_iterations, self.jacobi_tolerance,
                                   self.jacobi_fallback_fraction, self.compile_backend, root)
        return SequentialInversion(self.use_cache is not False, self.compile_backend, root)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TarFlowGenerateOutput(ModelOutput):
    r"""What `generate` returns with `return_dict_in_generate` or `output_hidden_states`.

    Args:
        sequences (`torch.LongTensor` of shape `(batch, prompt_length + max_new_tokens)`): the prompt, reproduced
            exactly, then the sampled tokens.
        hidden_states (`tuple`, *optional*): with `output_hidden_states`, the latent after every inverse flow layer,
            [h^(L) = u, h^(L−1), .., h^(0) = z], each `(batch, length, latent_dim)` (the paper's intermediate
            decoding, App. G; see `evaluation/inspection.py`). With a prompt they cover the whole sequence, from a forward pass
            of the final z.
        root_iterations (`list[int]`): root-finder iterations of each inverse layer's slowest entry (layer L first).
        fixed_point_iterations (`tuple[list[int], ...]`): Jacobi iterations per block, per layer (layer L first).
        prompt_effective_sample_size (`torch.FloatTensor` of shape `(batch,)`, *optional*): of the importance
            weights of the prompt sampler's start, out of `prompt_proposals` (prompts with right-to-left layers).
        prompt_acceptance (`torch.FloatTensor` of shape `(batch,)`, *optional*): the fraction of accepted
            Metropolis–Hastings moves per sequence (prompts with right-to-left layers and `prompt_mcmc_steps` > 0).
        decoding (`str`): how the flow layers were inverted, `"sequential"` or `"jacobi"` (what `"auto"` chose).
        decided_patches (`int`, *optional*): with tokens decided patch by patch (sampling controls, a streamer,
            stopping criteria or EOS; `next_token_controls.py`), the patches decided before every row ended (fewer
            than the sequence's when generation stopped early; the first layer's latents after them are NaN).
    """

    sequences: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    root_iterations: list[int] | None = None
    fixed_point_iterations: tuple[list[int], ...] | None = None
    prompt_effective_sample_size: torch.FloatTensor | None = None
    prompt_acceptance: torch.FloatTensor | None = None
    decoding: str | None = None
    decided_patches: int | None = None


@torch.no_grad()
def generate_tokens(model, input_ids: torch.LongTensor | None, config: TarFlowGenerationConfig,
                    noise: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                    **controls) -> torch.LongTensor | TarFlowGenerateOutput:
    """Sample from `model` (a `TarFlowForCausalFlowLM`): see `TarFlowForCausalFlowLM.generate`. `controls`:
    `logits_processor`, `stopping_criteria`, `streamer`, `tokenizer` (see `next_token_controls.resolve_controls`)."""
    prompt = _checked_prompt(input_ids, attention_mask, model.config)
    prompt_length = 0 if prompt is None else prompt.shape[1]
    length = _new_token_count(config, prompt_length, model.config)
    min_new_tokens = _min_new_token_count(config, prompt_length, length)
    decisions = resolve_controls(model, config, min_new_tokens, prompt is not None, **controls)
    repeats = config.num_return_sequences or 1
    batch = repeats * (1 if prompt is None else prompt.shape[0])
    generator = torch.Generator(device=model.device).manual_seed(config.seed) if config.seed is not None else None
    tau = config.noise_scale(decisions.on_pi)
    u = tau * _base_noise(noise, (batch, length, model.config.latent_dim), model, generator)
    if prompt is not None:
        prompt = prompt.repeat_interleave(repeats, dim=0)
    decider = TokenDecider(model, decisions, prompt, batch, generator) if decisions.decides_by_patch else None
    z_new, inversion, hidden_states, sample = _sample_latents(model, prompt, u, config, generator, decider, tau)
    if decider is None:
        new_ids = draw_tokens(model.decode(z_new), config, min_new_tokens, generator)
    else:
        if not decisions.live:
            decider.decide_all(z_new, model.config.patch_size)
        new_ids = decider.finish(length)
    sequences = new_ids if prompt is None else torch.cat([prompt, new_ids], dim=1)
    if not (config.return_dict_in_generate or config.output_hidden_states):
        return sequences
    return _output(sequences, config.resolved_decoding(batch), inversion, hidden_states, sample, decider)


def _sample_latents(model, prompt: torch.Tensor | None, u: torch.Tensor, config: TarFlowGenerationConfig,
                    generator, decider: TokenDecider | None, tau: float
                    ) -> tuple[torch.Tensor, FlowInversion, list | None, PromptedSample | None]:
    """(z of the new positions, the inversion, the levels [u .. z] if asked for, the prompted sample if any)."""
    inversion = config.layer_inversion(len(u), model.config)
    if decider is not None and decider.controls.live:
        inversion = DecidingInversion(inversion, model.flow.layers[0].coupling, decider)
    if prompt is None:
        inverted = model.flow.inverse(u, inversion=inversion)
        return inverted.z, inverted, inverted.hidden_states if config.output_hidden_states else None, None
    prompt_z = model.codebook.sample(prompt, _standard_normal(prompt.shape + (model.config.latent_dim,), u, generator))
    sample = sample_continuation(model.flow, prompt_z.to(u.dtype), u, inversion, tau,
                                 config.prompt_proposals, config.prompt_mcmc_steps, generator)
    hidden_states = model.flow(sample.z, check_finite=False).hidden_states[::-1] if config.output_hidden_states else None
    return sample.z[:, prompt.shape[1]:], sample.inversion, hidden_states, sample


def _output(sequences, decoding: str, inversion: FlowInversion, hidden_states, sample: PromptedSample | None,
            decider: TokenDecider | None) -> TarFlowGenerateOutput:
    return TarFlowGenerateOutput(
        sequences=sequences, decoding=decoding, hidden_states=None if hidden_states is None else tuple(hidden_states),
        decided_patches=None if decider is None else decider.patches,
        root_iterations=list(inversion.root_iterations), fixed_point_iterations=inversion.fixed_point_iterations,
        prompt_effective_sample_size=None if sample is None else sample.effective_sample_size,
        prompt_acceptance=None if sample is None else sample.acceptance)


def _checked_prompt(input_ids, attention_mask, model_config) -> torch.LongTensor | None:
    """The prompt (batch, m) as int64, or None; errors name what is wrong with it."""
    if input_ids is None:
        if attention_mask is not None:
            raise ValueError("attention_mask was given without input_ids: it describes a prompt")
        return None
    patch_size = model_config.patch_size
    if torch.is_tensor(input_ids) and input_ids.dim() == 2 and input_ids.shape[1] % patch_size:
        raise ValueError(f"prompt length {input_ids.shape[1]} is not a multiple of patch_size {patch_size}: the "
                         f"flows condition on whole patches; trim the prompt to a multiple of {patch_size} tokens")
    prompt = as_token_ids(input_ids, model_config.vocab_size, patch_size, model_config.max_position_embeddings,
                          "input_ids (the prompt)")
    check_unpadded(attention_mask, prompt, "prompts", "batch prompts of equal token length only (e.g. one "
                   "generate call per group of equal-length prompts), or call generate once per prompt")
    return prompt


def _new_token_count(config: TarFlowGenerationConfig, prompt_length: int, model_config) -> int:
    """`max_new_tokens`, else `max_length` minus the prompt, else the rest of the context."""
    context = model_config.max_position_embeddings
    if config.max_new_tokens is not None:
        length = config.max_new_tokens
    elif config.max_length is not None:
        length = config.max_length - prompt_length
        if length < 1:
            raise ValueError(f"max_length ({config.max_length}) leaves no room after the prompt ({prompt_length} "
                             f"tokens): max_length counts the prompt too; use max_new_tokens")
    else:
        length = context - prompt_length
    if length < 1:
        raise ValueError(f"the prompt ({prompt_length} tokens) fills the context ({context}): nothing to generate")
    check_length(length, model_config.patch_size, context, "max_new_tokens")
    if prompt_length + length > context:
        raise ValueError(f"prompt ({prompt_length} tokens) + max_new_tokens ({length}) exceeds the context "
                         f"max_position_embeddings={context}; use max_new_tokens ≤ {context - prompt_length}")
    return length


def _min_new_token_count(config: TarFlowGenerationConfig, prompt_length: int, length: int) -> int:
    """`min_new_tokens`, else `min_length` minus the prompt, else 0; at most the tokens to generate."""
    if config.min_new_tokens is not None:
        least = config.min_new_tokens
    else:
        least = max(0, (config.min_length or 0) - prompt_length)
    if least > length:
        raise ValueError(f"min_new_tokens ({least}, from min_new_tokens or min_length) exceeds the {length} new "
                         "tokens to generate")
    return least


def _base_noise(noise: torch.Tensor | None, shape: tuple, model, generator) -> torch.Tensor:
    """u ~ N(0, I) of `shape` in the sampling dtype (≥ float32), or the caller's `noise` after checks."""
    dtype = working_dtype(model.dtype)
    if noise is None:
        return torch.randn(shape, device=model.device, dtype=dtype, generator=generator)
    check_noise(noise, shape, "(batch · num_return_sequences, max_new_tokens, latent_dim)")
    return noise.to(device=model.device, dtype=working_dtype(noise, dtype))


def _standard_normal(shape: tuple, like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(shape, device=like.device, dtype=like.dtype, generator=generator)


__all__ = ["TarFlowGenerationConfig", "TarFlowGenerateOutput", "generate_tokens", "DECODINGS",
           "HONOURED_FIELDS"]
