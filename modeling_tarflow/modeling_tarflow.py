"""TarFlowLM as `transformers` models: the pretrained base class, the NELBO output (Eq. 3, per token Eq. 9), and
the flow language model — codebook encoder/decoder (§3.1) around the flow prior (§3.3)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .codebook import GaussianCodebook
from .configuration_tarflow import TarFlowConfig
from .flow import FlowOutput, FlowStack
from .generation import TarFlowGenerateOutput, TarFlowGenerationConfig, generate_tokens
from .heads import LinearHead, MaskedAutoregressiveHead
from .transformer import CausalConditioner
from .input_checks import (as_token_ids, check_flag, check_latents, check_layer_counts, check_noise,
                           check_unpadded)

try:  # transformers ≥ 5: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers
    from torch.nn import init


@dataclass
class TarFlowOutput(ModelOutput):
    r"""The negative ELBO and its parts (Eq. 3), for one sample z ~ q(z|x) per sequence.

    Args:
        loss (`torch.FloatTensor` of shape `()`): mean NELBO in nats per token — the training objective.
        nelbo (`torch.FloatTensor` of shape `(batch,)`): −(log p(x|z) + log p(z) − log q(z|x)) per sequence, nats.
        log_p_x_given_z (`(batch,)`): log p(x|z) of the tied Bayes decoder.
        log_p_z (`(batch,)`): log p(z) = log N(u; 0, I) + Σ_ℓ log|det J_ℓ| under the flow prior.
        log_q_z (`(batch,)`): log q(z|x) of the Gaussian codebook encoder.
        flow_log_dets (`(batch, num_flow_layers)`): log|det J_ℓ| of every flow layer, data → noise (None with
            `output_u=False`: the last layer's log-determinant needs u).
        z (`(batch, length, latent_dim)`): the latent sample; u: its image under the flows (None with
            `output_u=False`).
        hidden_states (`tuple`, *optional*): h^(0) = z, .., h^(L) = u, with `output_hidden_states=True`.
    """

    loss: torch.FloatTensor | None = None
    nelbo: torch.FloatTensor | None = None
    log_p_x_given_z: torch.FloatTensor | None = None
    log_p_z: torch.FloatTensor | None = None
    log_q_z: torch.FloatTensor | None = None
    flow_log_dets: torch.FloatTensor | None = None
    z: torch.FloatTensor | None = None
    u: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class CheckpointMismatchError(ValueError):
    """Weights that do not fit the model: missing or unexpected tensors, or an edited architecture. `loading_info`
    holds transformers' load report (`missing_keys`, `unexpected_keys`, `mismatched_keys`, `error_msgs`)."""

    def __init__(self, message: str, loading_info: dict):
        super().__init__(message)
        self.loading_info = loading_info


def _check_loading_info(loading_info: dict) -> None:
    problems = {name: sorted(map(str, loading_info.get(name) or ()))
                for name in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    found = "; ".join(f"{name}: {keys}" for name, keys in problems.items() if keys)
    if found:
        raise CheckpointMismatchError(
            f"the checkpoint does not match the model ({found}); a missing tensor would be initialised at random. "
            "To start from a partial checkpoint on purpose, build the model from its config and call "
            "load_state_dict(..., strict=False)", loading_info)


class TarFlowPreTrainedModel(PreTrainedModel):
    config_class = TarFlowConfig
    base_model_prefix = "tarflow"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing weights that do not fit the architecture exactly: a missing
        or unexpected weight (which transformers would only report, initialising the missing one at random), or a
        config whose architecture fields differ from those saved with the weights (see
        `TarFlowConfig.check_architecture_fingerprint`). The load report is on the error as `loading_info`, and
        returned as usual with `output_loading_info=True`."""
        wants_loading_info = kwargs.pop("output_loading_info", False)
        _check_generation_config_file(args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        _check_loading_info(loading_info)
        model.config.check_architecture_fingerprint()
        return (model, loading_info) if wants_loading_info else model

    def save_pretrained(self, *args, **kwargs):
        # One model serves both auto classes: `AutoModel` (as always) and `AutoModelForCausalLM`, which
        # `pipeline("text-generation")` loads. transformers writes only the class's own `_auto_class` entry.
        if self._auto_class is not None:
            location = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                    "AutoModel": location, "AutoModelForCausalLM": location}
        return super().save_pretrained(*args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init for linear/norm layers, plus the flow-specific choices: zero heads (each flow starts as the
        identity; the Mix-d head is drawn like an LM head, see `LinearHead`), small position embeddings, scaled
        residual projections, and the codebook's μ and σ."""
        super()._init_weights(module)
        config, std = self.config, self.config.initializer_range
        if isinstance(module, GaussianCodebook):
            init.normal_(module.mu, mean=0.0, std=config.codebook_init_std)
            init.constant_(module.log_sigma, math.log(config.codebook_init_sigma))
        elif isinstance(module, CausalConditioner):
            init.normal_(module.start, mean=0.0, std=std)
            init.normal_(module.position, mean=0.0, std=0.01)
            residual_std = std / math.sqrt(2 * len(module.blocks))
            for block in module.blocks:
                init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
                init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)
        elif isinstance(module, LinearHead):
            if module.identity_at_init:
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.bias)
        elif isinstance(module, MaskedAutoregressiveHead):
            init.normal_(module.embed_weight, mean=0.0, std=3 ** -0.5)
            init.zeros_(module.embed_bias)
            init.zeros_(module.out_weight)
            init.zeros_(module.out_bias)
            # a non-persistent buffer: rebuilt here because checkpoints do not carry it
            init.copy_(module.mask, module.autoregressive_mask())


class TarFlowForCausalFlowLM(TarFlowPreTrainedModel, GenerationMixin):
    r"""TarFlowLM: tokens → Gaussian codebook latents z → stacked transformer autoregressive flows → u ~ N(0, I),
    with the tied Bayes decoder p(x|z) (Zhang et al., 2025).

    `forward` returns the NELBO; `encode`/`decode` are the codebook's two directions (decode: the logits of
    p(x|z)); `flow` maps z → u (`flow(z)`) and u → z (`flow.inverse(u)`);
    `generate` samples u ~ N(0, τ²I), inverts the flows patch by patch and decodes. Registered for `AutoModel` and
    `AutoModelForCausalLM` (the class `pipeline("text-generation")` loads); it is not a next-token model, so
    `forward` returns the NELBO, not logits.
    """

    def __init__(self, config: TarFlowConfig):
        super().__init__(config)
        self.codebook = GaussianCodebook(config.vocab_size, config.latent_dim,
                                         config.codebook_direct_distance_max_entries)
        self.flow = FlowStack(config, codebook=self.codebook)
        self.post_init()
        # Stated rather than left unset, so that `pipeline("text-generation")` samples as `generate()` does (it fills
        # in its own max_new_tokens=256 and temperature=0.7 for fields a model leaves unset).
        self.generation_config = TarFlowGenerationConfig(max_length=config.max_position_embeddings, temperature=1.0)

    def encode(self, input_ids: torch.LongTensor, noise: torch.Tensor | None = None) -> torch.FloatTensor:
        """A sample z ~ q(z|x) = N(μ_x, σ_x² I): (batch, length) → (batch, length, latent_dim)."""
        input_ids = self._checked_ids(input_ids, noise)
        return self.codebook.sample(input_ids, noise)

    def decode(self, z: torch.Tensor) -> torch.FloatTensor:
        """Logits of the tied decoder p(x_t = k | z_t) = softmax_k log N_k(z_t): (..., latent_dim) → (..., vocab_size)."""
        check_latents(z, self.config.latent_dim)
        return self.codebook.log_prob(z)

    def forward(
        self,
        input_ids: torch.LongTensor,
        noise: torch.Tensor | None = None,
        num_flow_layers: int | None = None,
        num_frozen_flow_layers: int = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_u: bool = True,
    ) -> TarFlowOutput | tuple:
        r"""NELBO of `input_ids` (batch, length) with one reparameterised z ~ q(z|x).

        Args:
            input_ids (`(batch, length)`): token ids of any integer dtype; the length a multiple of `patch_size`.
            noise (`(batch, length, latent_dim)`, *optional*): ε for z = μ_x + σ_x ε (default: fresh N(0, I)).
            num_flow_layers (`int`, *optional*): use only the first layers as the prior (progressive training),
                1 to `config.num_flow_layers`; None uses all.
            num_frozen_flow_layers (`int`): run the codebook and the first layers under `no_grad` (a later
                progressive stage; 0 trains everything), at most the layers in use.
            attention_mask (*optional*): all ones, as `transformers` tokenizers return it; padding is refused,
                since every position of the sequence is a latent of the flow.
            labels (*optional*): if given, must equal `input_ids`: the loss always scores the whole sequence.
            output_u (`bool`): compute u and every layer's log-determinant (default). False computes the same
                NELBO with the last layer's density log p^(L)(h^(L−1)) = log N(u; 0, I) + log|det J_L| directly,
                without u: for a Mix-d last layer (progressive stage 1) a V-way logsumexp instead of the
                Rosenblatt transform's V·d terms per token. `u` and `flow_log_dets` are then None
                (`output_hidden_states` needs u and computes it).
        """
        for flag, name in ((output_u, "output_u"), (output_hidden_states, "output_hidden_states"),
                           (return_dict, "return_dict")):
            check_flag(flag, name)
        input_ids = self._checked_ids(input_ids, noise)
        check_unpadded(attention_mask, input_ids, "inputs", "pass unpadded sequences of equal length (e.g. text "
                       "grouped into fixed-length blocks)")
        _check_labels(labels, input_ids)
        num_flow_layers = check_layer_counts(num_flow_layers, num_frozen_flow_layers, len(self.flow.layers))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_u = output_u or bool(output_hidden_states)
        if not output_u and self._is_tied_stage_one(num_flow_layers):
            z, log_p_x_given_z, log_q_z, prior = self._tied_stage_one(input_ids, noise, num_frozen_flow_layers)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and num_frozen_flow_layers == 0):
                z, log_p_x_given_z, log_q_z = self._encode_and_decode(input_ids, noise)
            prior = self.flow(z, num_flow_layers, num_frozen_flow_layers, output_u=output_u, check_finite=False)
        nelbo = -(log_p_x_given_z + prior.log_prob - log_q_z)
        output = TarFlowOutput(
            loss=nelbo.sum() / input_ids.numel(), nelbo=nelbo, log_p_x_given_z=log_p_x_given_z,
            log_p_z=prior.log_prob, log_q_z=log_q_z, flow_log_dets=prior.layer_log_dets, z=z, u=prior.u,
            hidden_states=prior.hidden_states if output_hidden_states else None)
        return output if return_dict else output.to_tuple()

    def _encode_and_decode(self, input_ids: torch.Tensor, noise: torch.Tensor | None):
        """z ~ q(z|x), log p(x|z) and log q(z|x) per sequence, in at least float32 (outside autocast)."""
        with torch.autocast(input_ids.device.type, enabled=False):
            z = self.codebook.sample(input_ids, noise)
            # The tied decoder and the encoder share the component log-densities log N_k(z_t).
            log_n = self.codebook.log_prob(z)                                     # (B, T, V)
            log_q_token = log_n.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)   # log N_x(z)
            log_p_x_given_z = (log_q_token - torch.logsumexp(log_n, dim=-1)).sum(-1)
        return z, log_p_x_given_z, log_q_token.sum(-1)

    def _is_tied_stage_one(self, num_flow_layers: int) -> bool:
        """Whether the prior is the tied Mix-d first layer alone (progressive stage 1, §3.3)."""
        coupling = self.flow.layers[0].coupling
        return num_flow_layers == 1 and getattr(coupling, "components", None) is self.codebook

    def _tied_stage_one(self, input_ids: torch.Tensor, noise: torch.Tensor | None, num_frozen: int):
        """z, log p(x|z), log q(z|x) and the prior's `FlowOutput` (log p(z) only) when the prior is the tied Mix-d
        layer alone: the decoder's V-way normaliser and log p_mixd(z) share one token-chunked pass over log N_k(z)
        (`tied_mixd_likelihood.py`), and log N_x(z) is computed from z − μ_x directly."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and num_frozen == 0):
            with torch.autocast(input_ids.device.type, enabled=False):
                z = self.codebook.sample(input_ids, noise)
                log_q_z = self.codebook.log_prob_of(z, input_ids).sum(-1)
            log_p_z, log_norm = self.flow.layers[0].log_density_and_normalizer(self.flow.patchify(z))
        return z, log_q_z - log_norm, log_q_z, FlowOutput(log_prob=log_p_z, hidden_states=(z,))

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None,
                 generation_config: TarFlowGenerationConfig | None = None, noise: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, logits_processor=None, stopping_criteria=None,
                 streamer=None, tokenizer=None, **kwargs) -> torch.LongTensor | TarFlowGenerateOutput:
        r"""Sample token ids: u ~ N(0, τ²I) → inverse flows → decode, or continue a prompt.

        Args:
            input_ids (`(batch, prompt_length)`, *optional*): a prompt, a multiple of `patch_size` long; it is
                reproduced exactly at the start of every returned sequence, and the continuation is sampled from
                the model's conditional (exactly with left-to-right layers only, by Metropolis–Hastings otherwise;
                see `prompting.py`). None samples unconditionally.
            generation_config (`GenerationConfig`, *optional*): defaults to `self.generation_config`; keyword
                arguments override its fields (`max_new_tokens`, `max_length`, `num_return_sequences`, `temperature`,
                `noise_temperature`, `top_k`, `top_p`, `eos_token_id`, `do_sample`, `decoding`, `seed`, ...: see
                `TarFlowGenerationConfig`). A field this sampler cannot honour (`num_beams`, `repetition_penalty`,
                ...) is an error, as is an unknown keyword.
            noise (`(batch · num_return_sequences, max_new_tokens, latent_dim)`, *optional*): the standard-normal
                base noise to invert (scaled by τ), instead of a fresh draw.
            attention_mask (*optional*): as a tokenizer returns it for a batch of equal-length prompts (all ones);
                padded prompts are refused.
            logits_processor (`LogitsProcessorList`, *optional*): applied to the Mix-d first layer's log π_t, the
                next-token scores, after the EOS ban of `min_new_tokens` and before the warpers (see
                `next_token_controls.py`); refused for stacks without a next-token distribution.
            stopping_criteria (`StoppingCriteriaList`, *optional*), streamer (`BaseStreamer`, *optional*), tokenizer
                (for `stop_strings`): as in `transformers`; tokens are decided, streamed and stopped patch by patch
                as the first flow layer's inverse produces them.

        Returns:
            `(batch · num_return_sequences, prompt_length + new tokens)` ids, or a `TarFlowGenerateOutput` with
            `return_dict_in_generate=True` or `output_hidden_states=True`.
        """
        base = generation_config if generation_config is not None else self.generation_config
        unknown = set(kwargs) - set(TarFlowGenerationConfig().to_dict())
        if unknown:
            raise ValueError(f"generate() got unknown argument(s) {sorted(unknown)}")
        config = TarFlowGenerationConfig.from_dict({**base.to_dict(), **kwargs})
        return generate_tokens(self, input_ids, config, noise, attention_mask, logits_processor=logits_processor,
                               stopping_criteria=stopping_criteria, streamer=streamer, tokenizer=tokenizer)

    def adjust_generation_fn(self, *args, **kwargs):
        # transformers loads generation_config.json as a plain GenerationConfig: restore TarFlowLM's own class
        super().adjust_generation_fn(*args, **kwargs)
        if not isinstance(self.generation_config, TarFlowGenerationConfig):
            self.generation_config = TarFlowGenerationConfig.from_dict(self.generation_config.to_dict())

    def _checked_ids(self, input_ids: torch.Tensor, noise: torch.Tensor | None) -> torch.LongTensor:
        """`input_ids` as int64 after checks, and the caller's ε checked against them."""
        config = self.config
        input_ids = as_token_ids(input_ids, config.vocab_size, config.patch_size, config.max_position_embeddings)
        if noise is not None:
            check_noise(noise, (*input_ids.shape, config.latent_dim), "(batch, length, latent_dim)")
        return input_ids


def _check_generation_config_file(location) -> None:
    """A local folder's `generation_config.json` must be readable JSON: transformers would log the error and sample
    with default settings instead of the saved ones."""
    if not isinstance(location, (str, os.PathLike)):
        return
    path = Path(location) / "generation_config.json"
    if path.is_file():
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}); fix it, or delete it to sample with the "
                             "defaults") from error


def _check_labels(labels, input_ids: torch.Tensor) -> None:
    """`labels`, when given, must be `input_ids`: the NELBO scores every token of the sequence, so there are no
    shifted targets and no ignored (-100) positions to honour."""
    if labels is None:
        return
    if not torch.is_tensor(labels) or labels.shape != input_ids.shape or not torch.equal(labels.long(), input_ids):
        raise ValueError("labels must equal input_ids (or be left out): TarFlowLM's loss is the NELBO of the whole "
                         "input_ids sequence, so it has no separate targets and no ignore index (-100)")


__all__ = ["CheckpointMismatchError", "TarFlowOutput", "TarFlowPreTrainedModel", "TarFlowForCausalFlowLM"]
