"""Transformer autoregressive flow layers over patches, channel mixing, and the stack z → u.

Shapes: z, u are (B, T, d) per token; inside the stack they are patches (B, N, c) with N = T/P, c = P·d.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .codebook import GaussianCodebook
from .couplings import build_coupling
from .transformer import CausalConditioner


class ChannelMix(nn.Module):
    """Algorithm 2: ChannelMix(X) = concat(X[..., 0::2], X[..., 1::2]) — a permutation for any channel count
    (odd counts included), so log|det| = 0; `unmix` is its exact inverse (first half back to the even slots)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h[..., 0::2], h[..., 1::2]], dim=-1)

    def unmix(self, h: torch.Tensor) -> torch.Tensor:
        num_even = (h.shape[-1] + 1) // 2
        out = torch.empty_like(h)
        out[..., 0::2] = h[..., :num_even]
        out[..., 1::2] = h[..., num_even:]
        return out


class AutoregressiveFlow(nn.Module):
    r"""One flow layer f^(ℓ): in its own direction (left-to-right, or right-to-left by flipping the patch order),
    u_t = τ(h_t; θ(h_{<t})) with θ from a causal transformer, so the Jacobian is block-triangular and
    log|det J| = Σ_t log|det ∂u_t/∂h_t|.
    """

    def __init__(self, config, layer: dict, codebook: GaussianCodebook | None):
        super().__init__()
        self.reverse = layer["direction"] == "r2l"
        self.conditioner = CausalConditioner(
            config.patch_channels, config.hidden_size, config.num_attention_heads, config.intermediate_size,
            layer["num_layers"], config.max_position_embeddings // config.patch_size, config.dropout,
            config.layer_norm_eps)
        self.coupling = build_coupling(layer, config, codebook)

    def _oriented(self, h: torch.Tensor) -> torch.Tensor:
        """Patches in this layer's processing order (an involution)."""
        return h.flip(1) if self.reverse else h

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, N, c) → (u (B, N, c), log_det (B,))."""
        x = self._oriented(h)
        u, log_det = self.coupling(x, self.conditioner(x))
        return self._oriented(u), log_det.sum(1)

    @torch.no_grad()
    def inverse(self, u: torch.Tensor) -> tuple[torch.Tensor, int]:
        """u (B, N, c) → (h, root-finder iterations): sequential over patches, one cached transformer step each."""
        y = self._oriented(u)
        batch, length, _ = y.shape
        param = next(self.conditioner.parameters())
        cache = self.conditioner.new_cache(batch, length, y.device, param.dtype)
        patches, previous, iterations = [], None, 0
        for t in range(length):
            features = self.conditioner.step(previous, t, cache, batch)
            previous, used = self.coupling.inverse(y[:, t:t + 1], features)
            patches.append(previous)
            iterations = max(iterations, used)
        return self._oriented(torch.cat(patches, dim=1).to(u.dtype)), iterations


class FlowInversion(NamedTuple):
    """Result of inverting the stack: z, the latents [h^(L) = u, .., h^(0) = z] after every inverse layer, and the
    root-finder iterations each layer used (from layer L down to 1)."""

    z: torch.Tensor
    hidden_states: list[torch.Tensor]
    iterations: list[int]


class FlowStack(nn.Module):
    r"""The prior p(z) as L stacked flows: h^(0) = z, h^(ℓ) = f^(ℓ)(mix(h^(ℓ−1))), u = h^(L) ~ N(0, I), with
    ChannelMix between consecutive layers and

        log p(z) = log N(u; 0, I) + Σ_ℓ log|det J_{f^(ℓ)}|     (Eq. 1–2).
    """

    def __init__(self, config, codebook: GaussianCodebook | None = None):
        super().__init__()
        self.patch_size, self.latent_dim = config.patch_size, config.latent_dim
        self.max_length = config.max_position_embeddings
        self.layers = nn.ModuleList(AutoregressiveFlow(config, layer, codebook) for layer in config.flow_layers)
        self.channel_mix = ChannelMix() if config.channel_mixing else None

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data → noise through every layer: z (B, T, d) → (u (B, T, d), log_det (B,))."""
        self._check_latents(z, "z", check_finite=True)
        u, layer_log_dets, _ = self.forward_layers(z)
        return u, layer_log_dets.sum(-1)

    def forward_layers(self, z: torch.Tensor, num_layers: int | None = None, num_frozen: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(u, per-layer log-determinants (B, L), hidden states [h^(0) .. h^(L)] each (B, T, d)).

        Progressive training (§5): `num_layers` runs only the first layers (later stages' layers are absent), and
        the first `num_frozen` layers run under `no_grad` (their outputs are fixed inputs of the trained layers).
        """
        self._check_latents(z, "z")
        h = self._patchify(z)
        hidden_states, log_dets = [z], []
        layers = self.layers[:num_layers] if num_layers is not None else self.layers
        for index, layer in enumerate(layers):
            with torch.set_grad_enabled(torch.is_grad_enabled() and index >= num_frozen):
                if index > 0 and self.channel_mix is not None:
                    h = self.channel_mix(h)
                h, log_det = layer(h)
            log_dets.append(log_det)
            hidden_states.append(self._unpatchify(h))
        return hidden_states[-1], torch.stack(log_dets, dim=-1), hidden_states

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """Noise → data: u (B, T, d) → z (B, T, d), inverting the layers from L down to 1."""
        return self.inverse_with_details(u).z

    @torch.no_grad()
    def inverse_with_details(self, u: torch.Tensor) -> FlowInversion:
        """`inverse`, also returning every intermediate latent (the paper's intermediate decoding, App. G) and the
        root-finder iterations per layer."""
        self._check_latents(u, "u", check_finite=True)
        h = self._patchify(u)
        hidden_states, iterations = [u], []
        for index in reversed(range(len(self.layers))):
            h, used = self.layers[index].inverse(h)
            iterations.append(used)
            if index > 0 and self.channel_mix is not None:
                h = self.channel_mix.unmix(h)
            hidden_states.append(self._unpatchify(h))
        return FlowInversion(hidden_states[-1], hidden_states, iterations)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1] // self.patch_size, self.patch_size * self.latent_dim)

    def _unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        return h.reshape(h.shape[0], h.shape[1] * self.patch_size, self.latent_dim)

    def _check_latents(self, x: torch.Tensor, name: str, check_finite: bool = False) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 3 or x.shape[-1] != self.latent_dim:
            raise ValueError(f"{name} must have shape (batch, length, latent_dim={self.latent_dim}), got {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
        if x.shape[1] % self.patch_size:
            raise ValueError(f"{name} length {x.shape[1]} is not divisible by patch_size {self.patch_size}")
        if x.shape[1] > self.max_length:
            raise ValueError(f"{name} length {x.shape[1]} exceeds max_position_embeddings {self.max_length}")
        if check_finite and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")


__all__ = ["ChannelMix", "AutoregressiveFlow", "FlowInversion", "FlowStack"]
