"""Input checks with errors that name the problem (never a silent wrong answer)."""

from __future__ import annotations

import torch


class TokenIdDtypeError(TypeError, ValueError):
    """Token ids given in a non-integer dtype: a wrong dtype (TypeError) and non-integer ids (ValueError)."""


def check_input_ids(input_ids, vocab_size: int, patch_size: int, max_length: int, name: str = "input_ids") -> None:
    """Raise if `input_ids` is not a non-empty (batch, length) integer tensor of ids in [0, vocab_size) whose
    length is a multiple of `patch_size` and at most `max_length`."""
    if not torch.is_tensor(input_ids):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TokenIdDtypeError(f"{name} must hold integer token ids (e.g. torch.long), got dtype {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, length), got {tuple(input_ids.shape)}")
    if input_ids.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(input_ids.shape)}")
    check_length(input_ids.shape[1], patch_size, max_length, name)
    low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one device sync, not two
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} contains id {bad}, outside [0, vocab_size={vocab_size})")


def check_length(length: int, patch_size: int, max_length: int, name: str = "sequence") -> None:
    if length % patch_size:
        raise ValueError(f"{name} length {length} is not divisible by patch_size {patch_size}")
    if length > max_length:
        raise ValueError(f"{name} length {length} exceeds max_position_embeddings {max_length}")


__all__ = ["TokenIdDtypeError", "check_input_ids", "check_length"]
