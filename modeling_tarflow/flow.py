"""Transformer autoregressive flow layers over patches, channel mixing, and the stack z → u.

Shapes: z, u are (B, T, d) per token; inside the stack they are patches (B, N, c) with N = T/P, c = P·d.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .codebook import GaussianCodebook
from .couplings import build_coupling
from .decoding import SEQUENTIAL, JacobiDecoding, LayerInversion, SequentialDecoding
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
        u, log_det = self._forward_in_own_order(h)
        return self._oriented(u), log_det.sum(1)

    def forward_per_patch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, N, c) → (u (B, N, c), log_det (B, N)): the log-determinant of every patch, in sequence order."""
        u, log_det = self._forward_in_own_order(h)
        return self._oriented(u), self._oriented(log_det)

    def _forward_in_own_order(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._oriented(h)
        return self.coupling(x, self.conditioner(x))

    def log_density(self, h: torch.Tensor) -> torch.Tensor:
        """log p^(ℓ)(h) = log N(f(h); 0, I) + log|det J_f(h)| per sequence, (B,), without computing f(h) where the
        coupling knows its density directly."""
        x = self._oriented(h)
        return self.coupling.log_density(x, self.conditioner(x)).sum(1)

    @torch.no_grad()
    def inverse(self, u: torch.Tensor, prefix: torch.Tensor | None = None,
                decoding: SequentialDecoding | JacobiDecoding = SEQUENTIAL) -> LayerInversion:
        """u (B, N, c) → `LayerInversion` with h (B, N, c), solved in this layer's order by `decoding`.

        `prefix` (B, Np, c): known inputs of Np patches that precede u in the sequence (a prompt). A left-to-right
        layer conditions on them (they fill its KV cache); a right-to-left layer reads them only after u, so they
        do not enter u's inverse at all.
        """
        inversion = decoding.invert(self.conditioner, self.coupling, self._oriented(u),
                                    None if self.reverse else prefix)
        return inversion._replace(h=self._oriented(inversion.h))


class FlowInversion(NamedTuple):
    """Result of inverting the stack: z, the latents [h^(L) = u, .., h^(0) = z] after every inverse layer, the
    root-finder iterations each layer used (from layer L down to 1) and, for Jacobi decoding, each layer's
    fixed-point iterations per block."""

    z: torch.Tensor
    hidden_states: list[torch.Tensor]
    iterations: list[int]
    fixed_point_iterations: tuple[list[int], ...] = ()


class LayerwiseForward(NamedTuple):
    """Result of `FlowStack.forward_by_patch`: u, every layer's log-determinant per patch (B, L, N), and every
    layer's input patches (B, Np + N, c), prefix included, in the layer's input channel order."""

    u: torch.Tensor
    log_dets: torch.Tensor
    layer_inputs: list[torch.Tensor]


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
        _, log_dets, outputs = self._run(self._patchify(z), self._active(num_layers), num_frozen)
        hidden_states = [z] + [self._unpatchify(h) for h in outputs]
        return hidden_states[-1], torch.stack(log_dets, dim=-1), hidden_states

    def log_prob(self, z: torch.Tensor, num_layers: int | None = None, num_frozen: int = 0) -> torch.Tensor:
        r"""log p(z) (B,) under the first `num_layers` layers (as `forward_layers`), without computing u:

            log p(z) = Σ_{ℓ<L} log|det J_ℓ| + log p^(L)(h^(L−1) | C^(L)),

        since the last layer's log N(u; 0, I) + log|det J_L| is its own density of its input (Eq. 9). For a Mix-d
        last layer (progressive stage 1) that density is a V-way logsumexp, with no Rosenblatt transform."""
        self._check_latents(z, "z")
        layers = self._active(num_layers)
        h, log_dets, _ = self._run(self._patchify(z), layers[:-1], num_frozen)
        last = len(layers) - 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and last >= num_frozen):
            log_p = layers[-1].log_density(self._mixed(h, last))
        return log_p + sum(log_dets)

    def _active(self, num_layers: int | None) -> nn.ModuleList:
        return self.layers[:num_layers] if num_layers is not None else self.layers

    def _mixed(self, h: torch.Tensor, index: int) -> torch.Tensor:
        """The input of layer `index` from the output of the layer before it (ChannelMix between layers)."""
        return self.channel_mix(h) if index > 0 and self.channel_mix is not None else h

    def _run(self, h: torch.Tensor, layers, num_frozen: int) -> tuple[torch.Tensor, list, list]:
        """h through `layers` (the first ones of the stack): (output patches, log-determinants, each layer's
        output patches); the first `num_frozen` under `no_grad`."""
        log_dets, outputs = [], []
        for index, layer in enumerate(layers):
            with torch.set_grad_enabled(torch.is_grad_enabled() and index >= num_frozen):
                h, log_det = layer(self._mixed(h, index))
            log_dets.append(log_det)
            outputs.append(h)
        return h, log_dets, outputs

    def forward_by_patch(self, z: torch.Tensor, prefix_inputs: list[torch.Tensor] | None = None) -> LayerwiseForward:
        """Data → noise keeping every layer's input and per-patch log-determinant (for densities of parts of a
        sequence). With `prefix_inputs` (each layer's input over Np prompt patches), z (B, T, d) is a continuation:
        each layer reads the given prefix before it — the *clamped* forward whose inverse is `inverse_with_details`
        with the same prefix — and returns u and log-determinants of the continuation only."""
        h, inputs, log_dets = self._patchify(z), [], []
        for index, layer in enumerate(self.layers):
            h = self._mixed(h, index)
            x = h if prefix_inputs is None else torch.cat([prefix_inputs[index], h], dim=1)
            out, log_det = layer.forward_per_patch(x)
            known = x.shape[1] - h.shape[1]
            inputs.append(x)
            h = out[:, known:]
            log_dets.append(log_det[:, known:])
        return LayerwiseForward(self._unpatchify(h), torch.stack(log_dets, dim=1), inputs)

    def inverse(self, u: torch.Tensor, decoding: SequentialDecoding | JacobiDecoding = SEQUENTIAL) -> torch.Tensor:
        """Noise → data: u (B, T, d) → z (B, T, d), inverting the layers from L down to 1."""
        return self.inverse_with_details(u, decoding=decoding).z

    @torch.no_grad()
    def inverse_with_details(self, u: torch.Tensor, prefix_inputs: list[torch.Tensor] | None = None,
                             decoding: SequentialDecoding | JacobiDecoding = SEQUENTIAL) -> FlowInversion:
        """`inverse`, also returning every intermediate latent (the paper's intermediate decoding, App. G) and the
        iteration counts per layer.

        `prefix_inputs`: each layer's input over Np prompt patches that precede u (`forward_by_patch(...)
        .layer_inputs` sliced to the prompt); u is then the continuation's noise, each left-to-right layer
        conditions on its prefix, and the result holds the continuation only (see `prompting.py`).
        `decoding`: `SequentialDecoding` (exact, the default) or `JacobiDecoding` (parallel fixed point).
        """
        self._check_latents(u, "u", check_finite=True)
        prefix_length = 0 if prefix_inputs is None else prefix_inputs[0].shape[1] * self.patch_size
        if u.shape[1] + prefix_length > self.max_length:
            raise ValueError(f"prompt ({prefix_length}) + continuation ({u.shape[1]}) tokens exceed "
                             f"max_position_embeddings {self.max_length}")
        h, hidden_states, iterations, fixed_point = self._patchify(u), [u], [], []
        for index in reversed(range(len(self.layers))):
            prefix = None if prefix_inputs is None else prefix_inputs[index]
            h, used, blocks = self.layers[index].inverse(h, prefix, decoding)
            iterations.append(used)
            fixed_point.append(blocks)
            if index > 0 and self.channel_mix is not None:
                h = self.channel_mix.unmix(h)
            hidden_states.append(self._unpatchify(h))
        return FlowInversion(hidden_states[-1], hidden_states, iterations, tuple(fixed_point))

    @property
    def has_right_to_left(self) -> bool:
        """Whether any layer runs right to left (then a prompt cannot simply be clamped: see `prompting.py`)."""
        return any(layer.reverse for layer in self.layers)

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


__all__ = ["ChannelMix", "AutoregressiveFlow", "FlowInversion", "LayerwiseForward", "FlowStack"]
