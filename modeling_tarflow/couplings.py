"""Couplings: the invertible per-patch transforms τ of a flow layer u_t = τ(h_t; θ(C_t)), given the transformer
features f_t of the context C_t — affine (§2), Mix-1 (§3.2.1, Prop. 1) and Mix-d (§3.2.2, Alg. 1, Prop. 2).

Uniform interface, for patches h of shape (B, n, c) and features f of shape (B, n, D):
    forward(h, f) -> (u, log_det)        log_det = log|det ∂u/∂h| per patch, shape (B, n)
    log_density(h, f) -> log_p           log p(h_t | C_t) = log N(u_t; 0, I) + log_det per patch, shape (B, n),
                                         without u where the coupling's density is known in closed form
    inverse(u, f, root) -> (h, iterations)
                                         iterations: root-finder iterations used (0 for closed-form inverses);
                                         `root`: the root finder's stopping rule (`RootFinding`, a sampling setting;
                                         with `fixed_iterations`, h is NaN where it has not converged)
Mixture math runs in float32 or wider, outside autocast (`precision.full_precision`).
"""

from __future__ import annotations

import abc

import torch
import torch.utils.checkpoint
from torch import nn

from .codebook import DIRECT_DISTANCE_MAX_ENTRIES, GaussianCodebook
from .heads import LinearHead, MaskedAutoregressiveHead
from .fast_paths import rows_per_chunk, uses_pruned_transform
from .mixd_pruning import prune_mixture, pruned_rosenblatt_u
from .mixtures import (log_cdf_pair, log_sum_exp, mixture_cdf_transform, mixture_inverse_cdf, mixture_log_prob,
                       normal_log_prob, probit_from_log_cdf)
from .precision import full_precision as _full_precision
from .root_finding import RootFinding
from .tied_mixd_likelihood import mixd_log_density, tied_mixd_log_terms

EXACT = RootFinding()


class ElementwiseCoupling(nn.Module, metaclass=abc.ABCMeta):
    """u_i = τ(h_i; θ_i) channel by channel, θ from a linear head (channels independent given the history) or a
    MAF head (θ_i also depends on h_{<i}). Subclasses define τ (`transform`) and its inverse (`invert`)."""

    params_per_channel: int

    def __init__(self, hidden_size: int, channels: int, autoregressive: bool, maf_hidden_size: int):
        super().__init__()
        if autoregressive:
            self.head = MaskedAutoregressiveHead(hidden_size, channels, self.params_per_channel, maf_hidden_size)
        else:
            self.head = LinearHead(hidden_size, channels, self.params_per_channel)

    def forward(self, h: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context, (h, params) = _full_precision(h, self.head(features, h))
        with context:
            u, log_det = self.transform(h, params)
        return u, log_det.sum(-1)

    def log_density(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """log p(h_t | C_t) = Σ_i [log N(u_i; 0, 1) + log|du_i/dh_i|] per patch, (B, n)."""
        context, (h, params) = _full_precision(h, self.head(features, h))
        with context:
            return self.channel_log_density(h, params).sum(-1)

    def channel_log_density(self, h: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log N(u_i; 0, 1) + log|du_i/dh_i| channel by channel; a coupling whose density is known directly
        overrides this to skip u."""
        u, log_det = self.transform(h, params)
        return normal_log_prob(u) + log_det

    def inverse(self, u: torch.Tensor, features: torch.Tensor, root: RootFinding = EXACT) -> tuple[torch.Tensor, int]:
        if not self.head.autoregressive:
            return self._invert_full_precision(u, self.head(features), root)
        # MAF head: channel i needs h_{<i}, so the channels are recovered one after another.
        head = self.head.channel_by_channel(features)
        channels, iterations = [], 0
        for i in range(u.shape[-1]):
            h_i, used = self._invert_full_precision(u[..., i:i + 1], head.params(i).unsqueeze(-2), root)
            channels.append(h_i[..., 0].to(u.dtype))
            head.observe(i, channels[-1])
            iterations = max(iterations, used)
        return torch.stack(channels, dim=-1), iterations

    def _invert_full_precision(self, u: torch.Tensor, params: torch.Tensor,
                               root: RootFinding) -> tuple[torch.Tensor, int]:
        context, (u, params) = _full_precision(u, params)
        with context:
            return self.invert(u, params, root)

    @abc.abstractmethod
    def transform(self, h: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, log|du/dh|) channel by channel, both shaped like h."""

    @abc.abstractmethod
    def invert(self, u: torch.Tensor, params: torch.Tensor, root: RootFinding) -> tuple[torch.Tensor, int]:
        """(h, root-finder iterations) with transform(h, params)[0] == u."""


class AffineCoupling(ElementwiseCoupling):
    """u = (h − b)·exp(−a),  log|du/dh| = −a: the affine autoregressive flow of §2 (TarFlowLM Affine, §4)."""

    params_per_channel = 2

    def transform(self, h, params):
        a, b = params.unbind(-1)
        return (h - b) * torch.exp(-a), -a

    def invert(self, u, params, root):
        a, b = params.unbind(-1)
        return u * torch.exp(a) + b, 0


class MixtureCDFCoupling(ElementwiseCoupling):
    """Mix-1 (§3.2.1, Prop. 1): u_i = Φ⁻¹(F_mix(h_i)),  log|du_i/dh_i| = log p_mix(h_i) − log N(u_i; 0, 1),

    with p_mix(h_i) = Σ_k π_k N(h_i; m_k, s_k²), π = softmax(logits), s_k = exp(bound·tanh(ŝ_k / bound)).
    Zero parameters give K copies of N(0, 1): F_mix = Φ and u = h, the identity.
    """

    def __init__(self, hidden_size: int, channels: int, num_mixtures: int, autoregressive: bool,
                 maf_hidden_size: int, log_scale_bound: float):
        self.num_mixtures = num_mixtures
        self.params_per_channel = 3 * num_mixtures
        self.log_scale_bound = log_scale_bound
        super().__init__(hidden_size, channels, autoregressive, maf_hidden_size)

    def mixture(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log π, m, log s), each (..., K), from unconstrained parameters (..., 3K)."""
        logits, mean, raw_log_scale = params.split(self.num_mixtures, dim=-1)
        bound = self.log_scale_bound
        return torch.log_softmax(logits, dim=-1), mean, bound * torch.tanh(raw_log_scale / bound)

    def transform(self, h, params):
        return mixture_cdf_transform(h, *self.mixture(params))

    def channel_log_density(self, h, params):
        # log N(u_i; 0, 1) + log|du_i/dh_i| = log p_mix(h_i): no CDF, no Φ⁻¹
        return mixture_log_prob(h, *self.mixture(params))

    def invert(self, u, params, root):
        result = mixture_inverse_cdf(u, *self.mixture(params), root.tolerance, root.max_iterations,
                                     root.fixed_iterations)
        return result.z, result.iterations


class MixtureRosenblattCoupling(nn.Module):
    r"""Mix-d (§3.2.2, Alg. 1, Prop. 2): each token's d-dim latent z ~ Σ_k π_k N(μ_k, σ_k² I) is mapped to N(0, I_d)
    by the Rosenblatt transform. The network predicts only the weights π_t (one softmax per token of the patch;
    the P tokens of a patch are conditionally independent given the history). With Lemma 1 (App. B),

        log α_k^(i) = log_softmax_k(log π_k + Σ_{i'<i} log N(z_{i'}; μ_{k,i'}, σ_k²))
        u_i = Φ⁻¹(Σ_k α_k^(i) Φ((z_i − μ_{k,i})/σ_k)),   log|det| = log p_mixd(z) − log N(u; 0, I_d).

    The components are the encoder codebook when tied (the paper's Mix-d first layer), else learned here.
    `max_chunk_elements` (`TarFlowConfig.rosenblatt_chunk_elements`) bounds the per-dimension terms `forward`
    holds at once.
    """

    def __init__(self, hidden_size: int, patch_size: int, latent_dim: int, num_mixtures: int,
                 codebook: GaussianCodebook | None = None, max_chunk_elements: int = 1 << 26,
                 direct_distance_max_entries: int = DIRECT_DISTANCE_MAX_ENTRIES):
        super().__init__()
        self.patch_size, self.latent_dim, self.num_mixtures = patch_size, latent_dim, num_mixtures
        self.head = LinearHead(hidden_size, patch_size, num_mixtures, identity_at_init=False)
        if codebook is None:
            self.own_components = GaussianCodebook(num_mixtures, latent_dim, direct_distance_max_entries)
        else:
            # Borrowed, not registered: the encoder owns the tied parameters (one tensor, one state-dict key).
            self._tied_components = (codebook,)
        self.max_chunk_elements = max_chunk_elements

    @property
    def components(self) -> GaussianCodebook:
        return self._tied_components[0] if hasattr(self, "_tied_components") else self.own_components

    def mixture_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Unnormalised log π_t for every token of every patch: (B, n, P, K) — the logits of an AR LM (Prop. 4)."""
        return self.head(features)

    def forward(self, h: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = h.shape[:2]
        z = h.reshape(batch * length, self.patch_size, self.latent_dim)
        logits = self.mixture_logits(features).flatten(0, 1)
        # The per-dimension terms are (B, n, P, K, d): 26 GB for GPT-2's K = 50257, d = 16 on 8 × 1024 tokens.
        # Past a memory budget, the patches of all sequences go in chunks, each recomputed in backward (activation
        # checkpointing). On a CPU they also go in chunks that keep their terms in the L2 cache (no recomputation
        # needed): the transform is some twenty elementwise passes over them, memory-bound once they spill.
        if not torch.is_grad_enabled() and uses_pruned_transform(self.num_mixtures):
            rows = rows_per_chunk(h.device, self._terms_per_row, pruned=True)
            u, log_det = _in_chunks(self._frozen_rosenblatt, z, logits, rows)
        else:
            u, log_det = self._dense_rosenblatt(z, logits)
        return u.unflatten(0, (batch, length)), log_det.unflatten(0, (batch, length))

    @property
    def _terms_per_row(self) -> int:
        """Per-dimension terms of one patch: P·K·d."""
        return self.patch_size * self.num_mixtures * self.latent_dim

    def _dense_rosenblatt(self, z: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_rosenblatt` over all rows (patches) in chunks: within `max_chunk_elements` (checkpointed past it when
        gradients are on) and, on a CPU, sized to the cache."""
        rows = rows_per_chunk(z.device, self._terms_per_row, self.max_chunk_elements)
        checkpointed = self.max_chunk_elements // self._terms_per_row < z.shape[0]
        return _in_chunks(self._checkpointed_rosenblatt if checkpointed else self._rosenblatt, z, logits, rows)

    def log_density(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        r"""log p_mixd(z_t | C_t) = Σ_p [LSE_k(ℓ_{t,p,k} + log N_k(z_{t,p})) − LSE_k ℓ_{t,p,k}] per patch, (B, n): what
        the NELBO needs of a last layer (log N(u; 0, I) + log|det| = log p_mixd), in (B, n, P, K) work instead of the
        Rosenblatt transform's (B, n, P, K, d) — an LM head's cost, by the token-chunked pass of
        `tied_mixd_likelihood.py`, which keeps nothing V-sized for backward."""
        return self.log_density_and_normalizer(h, features, normalizer_weight=0.0)[0]

    def log_density_and_normalizer(self, h: torch.Tensor, features: torch.Tensor,
                                   normalizer_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        r"""(log p_mixd(z_t | C_t), Σ_p LSE_k log N_k(z_{t,p})) per patch, (B, n) each: the layer's density and, for
        the tied first layer, the tied decoder's normaliser (log p(x|z) = log N_x(z) − LSE_k log N_k(z), §3.1),
        sharing log N_k(z). `normalizer_weight`: the weight of the normaliser in the loss, relative to −log p_mixd
        (1 in the NELBO, 0 when only the density is trained), for which the gradients are computed in the forward
        pass (any other weighting is still exact, by recomputation)."""
        batch, patches = h.shape[:2]
        z = h.reshape(batch * patches, self.patch_size, self.latent_dim)
        context, (z,) = _full_precision(z)
        with context:
            mu, log_sigma = self._component_params(z.dtype)
            rows = features.reshape(batch * patches, -1)
            weight = self.head.weight.to(rows.dtype).unflatten(0, (self.patch_size, self.num_mixtures))
            bias = self.head.bias.to(rows.dtype).unflatten(0, (self.patch_size, self.num_mixtures))
            terms = [tied_mixd_log_terms(rows, weight[p], bias[p], z[:, p], mu, log_sigma, normalizer_weight)
                     for p in range(self.patch_size)]
        log_norm = sum(norm for norm, _ in terms).view(batch, patches)
        log_p = sum(density for _, density in terms).view(batch, patches)
        return log_p, log_norm

    def _frozen_rosenblatt(self, z: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_rosenblatt` without gradients (a frozen layer, progressive stages 2–3), from the certified-kept
        components of dimensions ≥ 2 (`mixd_pruning.pruned_rosenblatt_u`); the tokens it cannot certify, or a
        chunk where pruning would not pay, take `_dense_rosenblatt`. log|det| = log p_mixd(z) − log N(u; 0, I), with
        log p_mixd from the codebook distances' float64 factors (`tied_mixd_likelihood.mixd_log_density`)."""
        context, (z, logits) = _full_precision(z, logits)
        with context:
            mu, log_sigma = self._component_params(z.dtype)
            log_pi = torch.log_softmax(logits, dim=-1).flatten(0, -2)
            tokens = z.flatten(0, -2)
            pruned = pruned_rosenblatt_u(tokens, log_pi, mu, log_sigma)
            if pruned is None:
                return self._dense_rosenblatt(z, logits)
            u, certified = pruned
            log_det = mixd_log_density(tokens, log_pi, mu, log_sigma) - normal_log_prob(u).sum(-1)
            u, log_det = u.view(z.shape[0], -1), log_det.view(z.shape[:-1]).sum(-1)
            redo = ~certified.view(z.shape[0], -1).all(-1)
            if bool(redo.any()):
                u[redo], log_det[redo] = self._dense_rosenblatt(z[redo], logits[redo])
        return u, log_det

    def _checkpointed_rosenblatt(self, z: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.is_grad_enabled():
            return self._rosenblatt(z, logits)
        return torch.utils.checkpoint.checkpoint(self._rosenblatt, z, logits, use_reentrant=False)

    def _rosenblatt(self, z: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 1, vectorised over dims: z (..., P, d), logits (..., P, K) → (u (..., P·d), log_det (...)).

        The Σ_i log p(z_i | z_{<i}) of the log-determinant is log p_mixd(z) (the chain rule), a K-way logsumexp of
        the per-dimension terms' sums, rather than d mixture densities of K terms each."""
        context, (z, logits) = _full_precision(z, logits)
        with context:
            log_pi = torch.log_softmax(logits, dim=-1)
            standardized = self.components.standardized(z).to(z.dtype)                     # (B, n, P, K, d)
            per_dim = self.components.log_prob_per_dim(z, standardized)
            cumulative = per_dim.cumsum(-1)
            log_alpha = torch.log_softmax(log_pi.unsqueeze(-1) + cumulative - per_dim, dim=-2)  # Σ_{i'<i}, Lemma 1
            u = probit_from_log_cdf(*log_cdf_pair(standardized, log_alpha, dim=-2))          # (B, n, P, d)
            log_p = log_sum_exp(log_pi + cumulative[..., -1])                               # log p_mixd(z_t,p)
            log_det = log_p - normal_log_prob(u).sum(-1)
        return u.flatten(-2), log_det.sum(-1)

    def inverse(self, u: torch.Tensor, features: torch.Tensor, root: RootFinding = EXACT,
                log_pi_warper=None) -> tuple[torch.Tensor, int]:
        """`log_pi_warper`: a callable log π (B, n, P, K) → normalised log π' (sampling controls on the next-token
        distribution, `next_token_controls.py`); z is then drawn from the mixture with weights π'."""
        u = u.unflatten(-1, (self.patch_size, self.latent_dim))
        context, (u, logits) = _full_precision(u, self.mixture_logits(features))
        with context:
            log_pi = torch.log_softmax(logits, dim=-1)
            if log_pi_warper is not None:
                log_pi = log_pi_warper(log_pi)
            mu, log_sigma = self._component_params(u.dtype)
            prefix = torch.zeros_like(log_pi)
            dims, iterations = [], 0
            order = self._mean_order(mu) if root.fixed_iterations is None else None
            for i in range(self.latent_dim):
                log_alpha = torch.log_softmax(log_pi + prefix, dim=-1)
                mixture = self._dimension_mixture(u[..., i], log_alpha, mu[:, i], log_sigma,
                                                  None if order is None else order[:, i], root)
                result = mixture_inverse_cdf(u[..., i], *mixture, root.tolerance, root.max_iterations,
                                             root.fixed_iterations)
                prefix = prefix + normal_log_prob(result.z.unsqueeze(-1), mu[:, i], log_sigma)
                dims.append(result.z)
                iterations = max(iterations, result.iterations)
        return torch.stack(dims, dim=-1).flatten(-2), iterations

    def _dimension_mixture(self, u_i: torch.Tensor, log_alpha: torch.Tensor, mean: torch.Tensor,
                           log_sigma: torch.Tensor, order: torch.Tensor,
                           root: RootFinding) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log weights, means, log scales) of dimension i's 1-D mixture p(z_i | z_{<i}) (Lemma 1), its components
        in the order of their means (`order`): only those whose posterior weight can matter (`mixd_pruning.py`,
        certified), or all of them. The branch-free mode (`torch.compile`) always takes all, unordered."""
        if root.fixed_iterations is not None:
            return log_alpha, mean, log_sigma
        pruned = prune_mixture(u_i, log_alpha, mean, log_sigma, order)
        if pruned is None:
            return log_alpha[..., order], mean[order], log_sigma[order]
        return pruned.log_w, pruned.mean, pruned.log_scale

    def _mean_order(self, mu: torch.Tensor) -> torch.Tensor:
        """argsort of the component means per dimension, (K, d): a cache of the (constant) codebook's sort, which
        every dimension of every sampled token would otherwise redo; recomputed when μ changes."""
        key = (mu.data_ptr(), mu._version, mu.dtype, mu.device, tuple(mu.shape))
        if getattr(self, "_mean_order_cache", (None,))[0] != key:
            self._mean_order_cache = (key, torch.argsort(mu, dim=0))
        return self._mean_order_cache[1]

    def _component_params(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.components.mu.to(dtype), self.components.log_sigma.to(dtype)


def _in_chunks(transform, z: torch.Tensor, logits: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`transform` (rows of z and logits → (u, log_det)) applied `rows` rows at a time, the pieces concatenated."""
    pieces = [transform(z[s:s + rows], logits[s:s + rows]) for s in range(0, z.shape[0], rows)]
    return torch.cat([u for u, _ in pieces]), torch.cat([log_det for _, log_det in pieces])


def build_coupling(layer: dict, config, codebook: GaussianCodebook | None) -> nn.Module:
    """The coupling described by one normalised `config.flow_layers` entry."""
    hidden, channels = config.hidden_size, config.patch_channels
    if layer["coupling"] == "affine":
        return AffineCoupling(hidden, channels, layer["autoregressive_dims"], config.maf_hidden_size)
    if layer["coupling"] == "mixture_cdf":
        return MixtureCDFCoupling(hidden, channels, layer["num_mixtures"], layer["autoregressive_dims"],
                                  config.maf_hidden_size, config.log_scale_bound)
    tied = codebook if layer["tie_codebook"] else None
    return MixtureRosenblattCoupling(hidden, config.patch_size, config.latent_dim, layer["num_mixtures"], tied,
                                     config.rosenblatt_chunk_elements, config.codebook_direct_distance_max_entries)


__all__ = ["ElementwiseCoupling", "AffineCoupling", "MixtureCDFCoupling", "MixtureRosenblattCoupling", "build_coupling"]
