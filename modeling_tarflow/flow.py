r"""The flow prior p(z) (§3.3): L transformer autoregressive flows over patches, stacked z = h^(0) → .. → h^(L) = u.

Each layer f^(ℓ) is an `AutoregressiveFlow` with two injected permutations (log|det| = 0): `mix`, applied to its
input (ChannelMix, Alg. 2, between consecutive layers), and `order`, the direction it reads the patches in
(left-to-right, or right-to-left by reversing them and restoring the order of its output). `FlowStack` walks the
layers once in each direction: `forward(z) -> FlowOutput` and `inverse(u) -> FlowInversion`, either of them, given
a `FlowPrompt`, on a continuation after known prompt latents.

Shapes: z, u, h^(ℓ) are (B, T, d) per token; inside a layer they are patches (B, N, c) with N = T/P, c = P·d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .codebook import GaussianCodebook
from .couplings import build_coupling
from .input_checks import check_layer_counts
from .inversion import SEQUENTIAL, JacobiInversion, LayerInversion, SequentialInversion, check_finite_parameters
from .mixtures import normal_log_prob
from .root_finding import RootFinding
from .transformer import CausalConditioner

Inversion = SequentialInversion | JacobiInversion


class Permutation(nn.Module):
    """An invertible reordering with log|det| = 0; this base class is the identity."""

    #: whether known patches before the input stay before it (the layer conditions on them)
    keeps_prefix_first = True

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return h


class PatchReversal(Permutation):
    """The patch order reversed (an involution): a right-to-left layer (Fig. 1b)."""

    keeps_prefix_first = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flip(1)

    inverse = forward


class ChannelMix(Permutation):
    """Alg. 2: ChannelMix(X) = concat(X[..., 0::2], X[..., 1::2]) — a permutation for any channel count (odd counts
    included); `inverse` is ChannelUnmix (the first half back to the even slots)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h[..., 0::2], h[..., 1::2]], dim=-1)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        num_even = (h.shape[-1] + 1) // 2
        out = torch.empty_like(h)
        out[..., 0::2] = h[..., :num_even]
        out[..., 1::2] = h[..., num_even:]
        return out


class AutoregressiveFlow(nn.Module):
    r"""One flow layer f^(ℓ): x = order(mix(h)), then y_t = τ(x_t; θ(x_{<t})) with θ from a causal transformer, so
    the Jacobian is block-triangular and log|det J| = Σ_t log|det ∂y_t/∂x_t|; u = order⁻¹(y) in sequence order.

    A prefix (B, Np, c) holds known inputs of Np patches before h in the sequence (a prompt): a layer whose order
    keeps it first conditions on it (it fills the KV cache); a reversed layer reads it only after h, so it does not
    enter h's transform at all. `name` says which layer it is in errors (``flow layer 2 (affine)``).
    """

    def __init__(self, conditioner: CausalConditioner, coupling: nn.Module, order: Permutation, mix: Permutation,
                 name: str = "a flow layer"):
        super().__init__()
        self.conditioner, self.coupling, self.order, self.mix = conditioner, coupling, order, mix
        self.name = name

    def forward(self, h: torch.Tensor, prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, N, c) → (u (B, N, c), log_det (B,)), reading `prefix` first when given."""
        known = 0 if prefix is None else prefix.shape[1]
        x = self.order(self.mix(h if prefix is None else torch.cat([prefix, h], dim=1)))
        y, log_det = self.coupling(x, self.conditioner(x))
        u = self.order.inverse(y)[:, known:]
        return u, (self.order.inverse(log_det)[:, known:] if known else log_det).sum(1)

    def log_density(self, h: torch.Tensor) -> torch.Tensor:
        """log p^(ℓ)(h) = log N(f(h); 0, I) + log|det J_f(h)| per sequence, (B,), without computing f(h) where the
        coupling knows its density directly (Eq. 9)."""
        x = self.order(self.mix(h))
        return self.coupling.log_density(x, self.conditioner(x)).sum(1)

    def log_density_and_normalizer(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p^(ℓ)(h), Σ_t LSE_k log N_k(z_t)) per sequence, (B,) each, for a Mix-d layer: its density and the
        normaliser of the decoder tied to its components, sharing log N_k(z) (progressive stage 1, §3.3)."""
        x = self.order(self.mix(h))
        log_p, log_norm = self.coupling.log_density_and_normalizer(x, self.conditioner(x))
        return log_p.sum(1), log_norm.sum(1)

    @torch.no_grad()
    def inverse(self, u: torch.Tensor, prefix: torch.Tensor | None = None,
                inversion: Inversion = SEQUENTIAL) -> LayerInversion:
        """u (B, N, c) → `LayerInversion` with h (B, N, c), solved in this layer's order by `inversion`, after
        the conditioner has read `prefix` (when this layer's order keeps it first). Non-finite parameters, features
        or recovered patches are a `NonFiniteInversionError` naming the layer, never finite-looking latents."""
        check_finite_parameters(self, self.name)
        y = self.order(u)
        known = self.mix(prefix) if prefix is not None and self.order.keeps_prefix_first else None
        context = self.conditioner.prefill(known, y, inversion.use_cache)
        inverted = inversion.invert(self.conditioner, self.coupling, y, context, self.name)
        return inverted._replace(h=self.mix.inverse(self.order.inverse(inverted.h)))


def build_layer(config, index: int, layer: dict, codebook: GaussianCodebook | None) -> AutoregressiveFlow:
    """Flow layer `index` of `config.flow_layers` (one normalised entry `layer`)."""
    conditioner = CausalConditioner(
        config.patch_channels, config.hidden_size, config.num_attention_heads, config.intermediate_size,
        layer["num_layers"], config.max_position_embeddings // config.patch_size, config.dropout,
        config.layer_norm_eps)
    order = PatchReversal() if layer["direction"] == "r2l" else Permutation()
    mix = ChannelMix() if config.channel_mixing and index > 0 else Permutation()
    return AutoregressiveFlow(conditioner, build_coupling(layer, config, codebook), order, mix,
                              f"flow layer {index} ({layer['coupling']})")


@dataclass
class FlowPrompt:
    """Known latents before a sequence, as every layer's input over them: `levels[ℓ]` = h^(ℓ) over the prompt's
    tokens, (B, m, d), for ℓ = 0 .. L−1 (`hidden_states` of a forward pass, cut to the prompt). Given to
    `FlowStack.forward` / `inverse`, each layer reads its level before the continuation."""

    levels: tuple[torch.Tensor, ...]

    @classmethod
    def from_hidden_states(cls, hidden_states, length: int) -> "FlowPrompt":
        """The first `length` tokens of the levels h^(0) .. h^(L−1) of a forward pass."""
        return cls(tuple(h[:, :length] for h in hidden_states[:-1]))

    @property
    def length(self) -> int:
        return self.levels[0].shape[1]

    def map(self, function) -> "FlowPrompt":
        """The prompt with `function` applied to every level (repeat, index, select by batch row)."""
        return FlowPrompt(tuple(function(level) for level in self.levels))


@dataclass
class FlowOutput(ModelOutput):
    r"""Data → noise through the stack.

    Args:
        u (`(batch, length, latent_dim)`): h^(L) (None with `output_u=False`).
        log_det (`(batch,)`): Σ_ℓ log|det J_ℓ| (None with `output_u=False`).
        log_prob (`(batch,)`): log p(z) = log N(u; 0, I) + Σ_ℓ log|det J_ℓ| (Eq. 1–2); with `output_u=False`,
            Σ_{ℓ<L} log|det J_ℓ| + log p^(L)(h^(L−1)), the same density without u (Eq. 9).
        layer_log_dets (`(batch, num_layers)`): log|det J_ℓ| of every layer run (None with `output_u=False`).
        hidden_states (`tuple`): the levels [h^(0) = z, .., h^(L) = u] computed (without u when not computed).
    With a `FlowPrompt` every field covers the continuation only.
    """

    u: torch.FloatTensor | None = None
    log_det: torch.FloatTensor | None = None
    log_prob: torch.FloatTensor | None = None
    layer_log_dets: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class FlowInversion(ModelOutput):
    r"""Noise → data through the stack.

    Args:
        z (`(batch, length, latent_dim)`): h^(0).
        hidden_states (`tuple`): the latent after every inverse layer, [h^(L) = u, .., h^(0) = z].
        root_iterations (`list[int]`): root-finder iterations of each inverse layer's slowest entry (layer L first).
        fixed_point_iterations (`tuple[list[int], ...]`): Jacobi iterations per block, per layer (layer L first;
            empty lists for sequential inversion).
    """

    z: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    root_iterations: list[int] | None = None
    fixed_point_iterations: tuple[list[int], ...] | None = None


class FlowStack(nn.Module):
    r"""The prior p(z) as L stacked flows: h^(0) = z, h^(ℓ) = f^(ℓ)(h^(ℓ−1)), u = h^(L) ~ N(0, I), and

        log p(z) = log N(u; 0, I) + Σ_ℓ log|det J_{f^(ℓ)}|     (Eq. 1–2, §3.3).
    """

    def __init__(self, config, codebook: GaussianCodebook | None = None):
        super().__init__()
        self.patch_size, self.latent_dim = config.patch_size, config.latent_dim
        self.max_length = config.max_position_embeddings
        self.root = RootFinding.for_model(config)
        self.layers = nn.ModuleList(build_layer(config, index, layer, codebook)
                                    for index, layer in enumerate(config.flow_layers))

    def forward(self, z: torch.Tensor, num_layers: int | None = None, num_frozen: int = 0,
                prompt: FlowPrompt | None = None, output_u: bool = True, check_finite: bool = True) -> FlowOutput:
        """Data → noise: z (B, T, d) through the first `num_layers` layers (all for None) → `FlowOutput`.

        Progressive training (§3.3): later stages' layers are absent (`num_layers`), and the first `num_frozen`
        layers run under `no_grad` (their outputs are fixed inputs of the trained layers). `prompt`: z is a
        continuation and each layer reads its level of the prompt first — the *clamped* forward, whose inverse is
        `inverse` with the same prompt. `output_u=False`: log p(z) without computing u (`FlowOutput.log_prob`); for
        a Mix-d last layer that is a V-way logsumexp instead of the Rosenblatt transform. `check_finite`: also
        refuse NaN or infinite latents (a device sync; the model skips it for its own samples).
        """
        self._check_latents(z, "z", 0 if prompt is None else prompt.length, check_finite)
        num_layers = check_layer_counts(num_layers, num_frozen, len(self.layers))
        layers = self.layers[:num_layers]
        h, levels, log_dets = self.patchify(z), [z], []
        for index, layer in enumerate(layers if output_u else layers[:-1]):
            with _trained_if(index >= num_frozen):
                h, log_det = layer(h, self._prompt_level(prompt, index))
            levels.append(self._unpatchify(h))
            log_dets.append(log_det)
        if not output_u:
            with _trained_if(len(layers) - 1 >= num_frozen):
                log_p = layers[-1].log_density(h)
            return FlowOutput(log_prob=log_p + sum(log_dets), hidden_states=tuple(levels))
        layer_log_dets = torch.stack(log_dets, dim=-1)
        log_prob = normal_log_prob(levels[-1]).sum((1, 2)) + layer_log_dets.sum(-1)
        return FlowOutput(u=levels[-1], log_det=layer_log_dets.sum(-1), log_prob=log_prob,
                          layer_log_dets=layer_log_dets, hidden_states=tuple(levels))

    @torch.no_grad()
    def inverse(self, u: torch.Tensor, prompt: FlowPrompt | None = None,
                inversion: Inversion | None = None) -> FlowInversion:
        """Noise → data: u (B, T, d) → `FlowInversion` with z (B, T, d), inverting the layers from L down to 1.

        `prompt`: u is the noise of a continuation after the prompt; each layer's inverse conditions on its level of
        the prompt (those whose order keeps it first), and the result covers the continuation only (see
        `prompting.py`). `inversion`: `SequentialInversion` (exact; the default, with the root finder's settings of
        `RootFinding.for_model`) or `JacobiInversion` (parallel fixed point).
        """
        self._check_latents(u, "u", 0 if prompt is None else prompt.length, check_finite=True)
        for layer in self.layers:  # before any is inverted: a corrupted layer's NaN would reach the others' prompt
            check_finite_parameters(layer, layer.name)
        inversion = inversion if inversion is not None else SequentialInversion(root=self.root)
        h, levels, root_iterations, fixed_point = self.patchify(u), [u], [], []
        for index in reversed(range(len(self.layers))):
            step = self.layers[index].inverse(h, self._prompt_level(prompt, index), inversion)
            h = step.h
            levels.append(self._unpatchify(h))
            root_iterations.append(step.root_iterations)
            fixed_point.append(step.fixed_point_iterations)
        return FlowInversion(z=levels[-1], hidden_states=tuple(levels), root_iterations=root_iterations,
                             fixed_point_iterations=tuple(fixed_point))

    @property
    def has_right_to_left(self) -> bool:
        """Whether any layer reads right to left (then a prompt cannot simply be clamped: see `prompting.py`)."""
        return any(not layer.order.keeps_prefix_first for layer in self.layers)

    def _prompt_level(self, prompt: FlowPrompt | None, index: int) -> torch.Tensor | None:
        return None if prompt is None else self.patchify(prompt.levels[index])

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1] // self.patch_size, self.patch_size * self.latent_dim)

    def _unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        return h.reshape(h.shape[0], h.shape[1] * self.patch_size, self.latent_dim)

    def _check_latents(self, x: torch.Tensor, name: str, prompt_length: int, check_finite: bool) -> None:
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
        if x.shape[1] + prompt_length > self.max_length:
            raise ValueError(f"prompt ({prompt_length}) + continuation ({x.shape[1]}) tokens exceed "
                             f"max_position_embeddings {self.max_length}")
        if check_finite and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")


def _trained_if(trained: bool):
    """Gradients on for a trained layer (when they are on at all), off for a frozen one."""
    return torch.set_grad_enabled(torch.is_grad_enabled() and trained)


__all__ = ["Permutation", "PatchReversal", "ChannelMix", "AutoregressiveFlow", "build_layer", "FlowPrompt",
           "FlowOutput", "FlowInversion", "FlowStack"]
