"""The last step of sampling: token ids x_t drawn from the tied decoder p(x_t | z_t) (§3.1) once the whole latent sequence z is
known, with the `transformers` controls that act on that draw (temperature, top-k, top-p, min-p, end of sequence).

Every position's distribution is fixed by its own z_t, so each control acts position by position: temperature and
the truncations reshape softmax(logits_t); `min_new_tokens` forbids EOS at the first positions; after the first EOS
of a row the positions hold `pad_token_id`, as `transformers` pads a finished sequence.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def draw_tokens(logits: torch.Tensor, config, min_new_tokens: int = 0,
                generator: torch.Generator | None = None) -> torch.LongTensor:
    """Ids (B, T) from decoder logits (B, T, V) under a `TarFlowGenerationConfig`'s final-draw settings."""
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError("sampling produced a non-finite latent or decoder logit (NaN or inf): the model's "
                                 "weights are probably not finite (check torch.isfinite on model.parameters())")
    eos_ids = end_of_sequence_ids(config, logits.shape[-1])
    if eos_ids and min_new_tokens:
        logits = logits.clone()
        logits[:, :min_new_tokens, eos_ids] = float("-inf")
    sampling = bool(config.do_sample) and config.temperature != 0
    ids = sample_ids(logits, sampling, generator, final_draw_warpers(config) if sampling else None)
    if not eos_ids:
        return ids
    return pad_after_end_of_sequence(ids, eos_ids, eos_ids[0] if config.pad_token_id is None else config.pad_token_id)


def sample_ids(logits: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None,
                  warpers: LogitsProcessorList | None = None) -> torch.LongTensor:
    """x_t ~ softmax(warped logits_t) drawn in float64 (float32 draws truncate the tails and bias entropy), or the
    argmax."""
    if not do_sample:
        return logits.argmax(-1)
    scores = logits.double().flatten(0, -2)
    if warpers:
        scores = warpers(None, scores)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


def final_draw_warpers(config) -> LogitsProcessorList:
    """transformers' own warpers, in the order `generate` applies them: temperature, top-k, top-p, min-p."""
    warpers = LogitsProcessorList()
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    if config.min_p:
        warpers.append(MinPLogitsWarper(config.min_p))
    return warpers


def end_of_sequence_ids(config, vocab_size: int) -> list[int]:
    """`eos_token_id` as a list (empty when unset), with it and `pad_token_id` checked against the vocabulary."""
    eos = config.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad = [config.pad_token_id] if eos_ids and config.pad_token_id is not None else []
    for name, ids in (("eos_token_id", eos_ids), ("pad_token_id", pad)):
        if any(not 0 <= i < vocab_size for i in ids):
            raise ValueError(f"{name} {getattr(config, name)!r} is outside the vocabulary [0, {vocab_size})")
    return eos_ids


def pad_after_end_of_sequence(ids: torch.LongTensor, eos_ids: list[int], pad_id: int) -> torch.LongTensor:
    """Each row kept up to and including its first EOS, then `pad_id`."""
    is_eos = torch.isin(ids, torch.tensor(eos_ids, device=ids.device)).long()
    after_first_eos = (is_eos.cumsum(-1) - is_eos) > 0
    return ids.masked_fill(after_first_eos, pad_id)


__all__ = ["draw_tokens", "sample_ids", "final_draw_warpers", "end_of_sequence_ids", "pad_after_end_of_sequence"]
