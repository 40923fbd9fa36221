r"""Sampling controls where TarFlowLM decides its tokens: on the next-token distribution of a tied Mix-d first layer
(Prop. 4), with `transformers`' own warpers, processors, stopping criteria and streamers.

A tied Mix-d layer f^(0) (§3.2.2) models z_t | z_<t as Σ_k π_{t,k} N(μ_k, σ_k² I) over the V codebook components,
so its weights π_t are the next-token distribution p(x_t | z_<t) of an autoregressive LM over tokens (Prop. 4).
It is inverted last, left to right, patch by patch: when its inverse of patch t is done, the tokens of that patch
are final. `NextTokenControls` holds what acts there, and `TokenDecider` applies it while that layer is inverted:

1. before z_t is drawn, log π_t passes through, in `generate`'s order, the EOS ban of `min_new_tokens`, the
   caller's `logits_processor`, then temperature, top-k, top-p and min-p (`TemperatureLogitsWarper`, ...;
   temperature 0 keeps the argmax, a greedy decode). The layer's inverse then draws z_t from the truncated,
   renormalised mixture Σ_k π'_{t,k} N(μ_k, σ_k² I);
2. after it, x_t ~ p(x_t | z_t) (the tied decoder) restricted to the tokens π'_t kept, so a token a control
   removed is never emitted; a row ends at its first EOS or when a stopping criterion says so (later positions
   hold the pad id, the sequence keeps its length); the patch goes to the streamer; once every row has ended no
   further patch is inverted.

Processors see the ids before the patch (the prompt included): the P tokens of a patch are drawn together, being
conditionally independent given the history (§3.2.2). τ, the scale of the base noise u ~ N(0, τ²I), is a separate
setting (`noise_temperature`). In other stacks (an affine or Mix-1 first layer, a right-to-left or untied Mix-d
one) there is no next-token distribution: temperature, top-k, top-p and min-p reshape the final draw from
p(x_t | z_t) position by position (with a warning that says so) and `logits_processor` is refused. Where tokens are
final only after the whole inversion (a right-to-left first layer; a prompt with right-to-left layers, sampled by
importance resampling and Metropolis–Hastings), streaming and stopping act on the finished tokens patch by patch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from transformers import (LogitsProcessorList, MaxTimeCriteria, StopStringCriteria, StoppingCriteriaList,
                          TopKLogitsWarper)

from .couplings import MixtureRosenblattCoupling
from .token_draw import end_of_sequence_ids, final_draw_warpers, sample_ids

_NO_DENSITY_FOR_THE_CORRECTION = (
    "with a prompt and right-to-left layers, the continuation is sampled by importance resampling and "
    "Metropolis–Hastings (prompting.py), which correct proposals toward the model's own conditional p(z_>m | c); a "
    "truncated or processed next-token distribution has no density that correction can weigh, so the samples would "
    "be wrong. Sample the continuation without it (or with a model whose flow layers all read left to right, where "
    "prompted sampling is exact ancestral sampling and these controls apply)")


def next_token_layer_refusal(model) -> str | None:
    """None when the first flow layer is a tied, left-to-right Mix-d layer (its π_t is p(x_t | z_<t), Prop. 4),
    else why this stack has no next-token distribution."""
    layer = model.flow.layers[0]
    if not isinstance(layer.coupling, MixtureRosenblattCoupling):
        return f"its first flow layer is {type(layer.coupling).__name__}, not Mix-d (Prop. 4)"
    if layer.coupling.components is not model.codebook:
        return "its first flow layer is a Mix-d layer with its own components, not tied to the token codebook"
    if not layer.order.keeps_prefix_first:
        return "its first flow layer reads right to left, so it decides the last token first"
    return None


@dataclass
class NextTokenControls:
    """What acts where tokens are decided. `warpers`: temperature, top-k, top-p, min-p (on log π_t when `on_pi`,
    else on the final draw); `processors`: the caller's `logits_processor` (on log π_t only); `stopping`: the
    caller's criteria, `max_time` and `stop_strings`; `live`: tokens are decided while the first layer is inverted
    (else after the whole inversion); `sampling`: x_t ~ p(x_t | z_t) (else its argmax)."""

    on_pi: bool
    live: bool
    warpers: LogitsProcessorList = field(default_factory=LogitsProcessorList)
    processors: LogitsProcessorList = field(default_factory=LogitsProcessorList)
    stopping: StoppingCriteriaList = field(default_factory=StoppingCriteriaList)
    streamer: object = None
    eos_ids: list[int] = field(default_factory=list)
    pad_id: int | None = None
    min_new_tokens: int = 0
    sampling: bool = True

    @property
    def changes_pi(self) -> bool:
        """Whether log π_t is changed (else the layer is inverted exactly as without controls)."""
        return self.on_pi and bool(self.warpers or self.processors or (self.eos_ids and self.min_new_tokens))

    @property
    def decides_by_patch(self) -> bool:
        """Whether tokens are decided patch by patch (else drawn at once after the inversion, `draw_tokens`)."""
        return self.changes_pi or bool(self.stopping or self.streamer is not None or self.eos_ids)


def resolve_controls(model, config, min_new_tokens: int, prompted: bool, logits_processor=None,
                     stopping_criteria=None, streamer=None, tokenizer=None) -> NextTokenControls:
    """The controls of one `generate` call, refused with the reason where they cannot act as they say."""
    refusal = next_token_layer_refusal(model)
    mcmc = prompted and model.flow.has_right_to_left
    processors = LogitsProcessorList(_checked_list(logits_processor, "logits_processor"))
    if processors and refusal:
        raise ValueError(f"logits_processor needs a next-token distribution, and this model has none: {refusal}")
    on_pi = refusal is None and not mcmc
    warpers = pi_warpers(config) if refusal is None else final_draw_warpers(config) if _samples(config) else []
    if refusal is None and mcmc and (warpers or processors):
        raise ValueError(f"temperature, top_k, top_p, min_p and logits_processor are not supported here: "
                         f"{_NO_DENSITY_FOR_THE_CORRECTION}")
    if refusal is not None and warpers:
        warnings.warn(f"temperature, top_k, top_p and min_p act on the final draw x_t ~ p(x_t | z_t), position by "
                      f"position, not on a next-token distribution: this model has none ({refusal})", stacklevel=4)
    eos_ids = end_of_sequence_ids(config, model.config.vocab_size)
    controls = NextTokenControls(
        on_pi=on_pi, live=model.flow.layers[0].order.keeps_prefix_first and not mcmc,
        warpers=LogitsProcessorList(warpers), processors=processors,
        stopping=_stopping_criteria(config, stopping_criteria, tokenizer), streamer=streamer, eos_ids=eos_ids,
        pad_id=config.pad_token_id if config.pad_token_id is not None else (eos_ids or [None])[0],
        min_new_tokens=min_new_tokens, sampling=bool(config.do_sample) and (on_pi or _samples(config)))
    if controls.stopping and controls.pad_id is None:
        raise ValueError("stopping criteria end rows early, and the positions after a row's end hold pad_token_id: "
                         "set pad_token_id (or eos_token_id)")
    return controls


def pi_warpers(config) -> list:
    """transformers' warpers for log π_t, in `generate`'s order; temperature 0 keeps the most probable token only."""
    if not _samples(config):
        return [TopKLogitsWarper(1)]
    return list(final_draw_warpers(config))


def _samples(config) -> bool:
    return config.temperature is None or config.temperature != 0


def _checked_list(items, name: str) -> list:
    if items is None:
        return []
    if not isinstance(items, (list, tuple)) or not all(callable(item) for item in items):
        raise TypeError(f"{name} must be a list of callables (a transformers {name.title().replace('_', '')}List), "
                        f"got {type(items).__name__}")
    return list(items)


def _stopping_criteria(config, stopping_criteria, tokenizer) -> StoppingCriteriaList:
    criteria = StoppingCriteriaList(_checked_list(stopping_criteria, "stopping_criteria"))
    if config.max_time is not None:
        criteria.append(MaxTimeCriteria(config.max_time))
    if config.stop_strings is not None:
        if tokenizer is None:
            raise ValueError("stop_strings needs the tokenizer: generate(..., stop_strings=[...], tokenizer=tokenizer)")
        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=config.stop_strings))
    return criteria


class TokenDecider:
    r"""Decides the tokens of one `generate` call patch by patch (module docstring): `warp_log_pi` is the Mix-d
    layer's hook on log π_t, `decide` takes the patch's z_t once inverted; `ids` grows from the prompt."""

    def __init__(self, model, controls: NextTokenControls, prompt: torch.Tensor | None, batch: int,
                 generator: torch.Generator | None = None):
        self.model, self.controls, self.generator = model, controls, generator
        device = model.device
        self.ids = prompt if prompt is not None else torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.prompt_length = self.ids.shape[1]
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.eos = torch.tensor(controls.eos_ids, dtype=torch.long, device=device)
        self.support = None
        self.patches = 0
        if controls.streamer is not None:
            controls.streamer.put(self.ids.cpu())

    @property
    def new_tokens(self) -> int:
        return self.ids.shape[1] - self.prompt_length

    def warp_log_pi(self, log_pi: torch.Tensor) -> torch.Tensor:
        """log π (B, 1, P, K) of the next patch → the normalised log π' its tokens are drawn from."""
        if log_pi.shape[1] != 1:
            raise ValueError(f"next-token controls act on one patch at a time, got {log_pi.shape[1]}")
        warped = torch.stack([self._warp_position(log_pi[:, 0, p], p) for p in range(log_pi.shape[2])], dim=1)
        self.support = torch.isfinite(warped)                                     # (B, P, K)
        return torch.log_softmax(warped, dim=-1).unsqueeze(1)

    def _warp_position(self, scores: torch.Tensor, offset: int) -> torch.Tensor:
        scores = self._ban_early_eos(scores.clone(), self.new_tokens + offset)
        scores = self.controls.processors(self.ids, scores)
        return self.controls.warpers(self.ids, scores)

    def _ban_early_eos(self, scores: torch.Tensor, position: int) -> torch.Tensor:
        if self.controls.eos_ids and position < self.controls.min_new_tokens:
            scores[..., self.eos] = float("-inf")
        return scores

    def decide(self, z_patch: torch.Tensor) -> bool:
        """The tokens of the patch whose latents z_patch (B, 1, P·d) were just inverted; True once every row ended."""
        z = z_patch.reshape(z_patch.shape[0], -1, self.model.config.latent_dim)
        logits = self.model.decode(z)                                               # (B, P, V)
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError("sampling produced a non-finite latent or decoder logit (NaN or inf)")
        if self.support is not None:
            logits = logits.masked_fill(~self.support, float("-inf"))
            self.support = None
        for offset in range(logits.shape[1]):
            logits[:, offset] = self._ban_early_eos(logits[:, offset], self.new_tokens + offset)
        warpers = None if self.controls.on_pi else self.controls.warpers
        tokens = sample_ids(logits, self.controls.sampling, self.generator, warpers)
        start = self.ids.shape[1]
        for offset in range(tokens.shape[1]):
            self._append(tokens[:, offset], logits[:, offset])
        self.patches += 1
        if self.controls.streamer is not None:
            self.controls.streamer.put(self.ids[:, start:].cpu())
        return bool(self.finished.all())

    def _append(self, token: torch.Tensor, scores: torch.Tensor) -> None:
        """One position: the token, or the pad id in a row that has ended; then the EOS and stopping rules."""
        if self.controls.pad_id is not None:
            token = token.masked_fill(self.finished, self.controls.pad_id)
        self.ids = torch.cat([self.ids, token.unsqueeze(-1)], dim=1)
        if self.controls.eos_ids:
            self.finished |= torch.isin(token, self.eos)
        if self.controls.stopping:
            self.finished |= self.controls.stopping(self.ids, scores).to(self.finished.device)

    def decide_all(self, z: torch.Tensor, patch_size: int) -> None:
        """After the inversion: the patches of z (B, n, d) in order, until every row ended."""
        for start in range(0, z.shape[1], patch_size):
            if self.decide(z[:, start:start + patch_size].flatten(1).unsqueeze(1)):
                break

    def finish(self, length: int) -> torch.LongTensor:
        """The new ids (B, length): the decided ones, then the pad id where no patch was decided; ends the stream."""
        rest = length - self.new_tokens
        if rest:
            self.ids = torch.cat([self.ids, self.ids.new_full((self.ids.shape[0], rest), self.controls.pad_id)], 1)
        if self.controls.streamer is not None:
            self.controls.streamer.end()
        return self.ids[:, self.prompt_length:]


__all__ = ["NextTokenControls", "TokenDecider", "resolve_controls", "next_token_layer_refusal", "pi_warpers"]
