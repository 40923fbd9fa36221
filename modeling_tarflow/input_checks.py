"""Input checks of the model's entry points — token ids x, noise ε and u, prompts, attention masks, layer counts —
with errors that name the problem (never a silent wrong answer)."""

from __future__ import annotations

import numbers

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


def as_token_ids(input_ids, vocab_size: int, patch_size: int, max_length: int,
                 name: str = "input_ids") -> torch.LongTensor:
    """`input_ids` after `check_input_ids`, widened to int64: any integer dtype is accepted, and uint8 in
    particular must not reach an indexing operation, which would read it as a boolean mask."""
    check_input_ids(input_ids, vocab_size, patch_size, max_length, name)
    return input_ids.long()


def check_length(length: int, patch_size: int, max_length: int, name: str = "sequence") -> None:
    if length % patch_size:
        raise ValueError(f"{name} length {length} is not divisible by patch_size {patch_size}")
    if length > max_length:
        raise ValueError(f"{name} length {length} exceeds max_position_embeddings {max_length}")


def check_noise(noise, shape: tuple, shape_name: str) -> None:
    """Raise unless `noise` is a finite floating-point tensor of `shape` (described as `shape_name`)."""
    if not torch.is_tensor(noise) or not noise.is_floating_point():
        raise TypeError(f"noise must be a floating-point torch.Tensor, got {type(noise).__name__}"
                        + (f" of dtype {noise.dtype}" if torch.is_tensor(noise) else ""))
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise must have shape {shape_name} = {tuple(shape)}, got {tuple(noise.shape)}")
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("noise contains NaN or infinite values")


def check_unpadded(attention_mask, input_ids: torch.Tensor, what: str, how_to_batch: str) -> None:
    """Raise unless `attention_mask` is None or all ones over `input_ids`' shape: TarFlowLM has no padding
    positions (every token is a latent of the flow), so a padded batch cannot be honoured exactly."""
    if attention_mask is None:
        return
    if not torch.is_tensor(attention_mask) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        shape = tuple(attention_mask.shape) if torch.is_tensor(attention_mask) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a tensor shaped like input_ids {tuple(input_ids.shape)}, "
                         f"got {shape}")
    if not bool((attention_mask == 1).all()):
        raise ValueError(f"padded {what} are not supported: attention_mask has zeros, but every position of a "
                         f"TarFlowLM sequence is a latent of the flow, so padding would change the result; "
                         f"{how_to_batch}")


def check_layer_counts(num_flow_layers, num_frozen_flow_layers, total: int) -> int:
    """The number of flow layers a forward pass uses (all `total` for None), after checking both counts."""
    used = total if num_flow_layers is None else num_flow_layers
    if not is_integer(used) or not 1 <= used <= total:
        raise ValueError(f"num_flow_layers must be an integer in [1, {total}] (None uses all {total}), "
                         f"got {num_flow_layers!r}")
    if not is_integer(num_frozen_flow_layers) or not 0 <= num_frozen_flow_layers <= used:
        raise ValueError(f"num_frozen_flow_layers must be an integer in [0, {used}] (at most the layers in use), "
                         f"got {num_frozen_flow_layers!r}")
    return used


def check_latents(z, latent_dim: int, name: str = "z", check_finite: bool = True) -> None:
    """Raise unless `z` is a non-empty floating-point tensor (..., latent_dim) (and, by default, finite)."""
    if not torch.is_tensor(z):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of latents, got dtype {z.dtype}")
    if z.dim() == 0 or z.shape[-1] != latent_dim or z.numel() == 0:
        raise ValueError(f"{name} must have shape (..., latent_dim={latent_dim}), got {tuple(z.shape)}")
    if check_finite and not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_component_ids(ids, num_components: int, name: str = "ids") -> None:
    """Raise unless `ids` is an integer tensor of component (token) ids in [0, num_components)."""
    if not torch.is_tensor(ids):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TokenIdDtypeError(f"{name} must hold integer token ids (e.g. torch.long), got dtype {ids.dtype}")
    if ids.numel() and not bool(((ids >= 0) & (ids < num_components)).all()):
        raise ValueError(f"{name} contains ids outside [0, {num_components})")


def check_flag(value, name: str) -> None:
    """Raise unless `value` is a bool (or None, meaning the default)."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def is_integer(value) -> bool:
    """A Python or NumPy integer, not a bool (True would pass as 1) and not an integral float (4.0)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


__all__ = ["TokenIdDtypeError", "check_input_ids", "as_token_ids", "check_length", "check_noise", "check_unpadded",
           "check_layer_counts", "is_integer"]
