"""The Gaussian codebook {μ_k, σ_k²} (§3.1): the encoder q(z_t | x_t), the tied Bayes decoder p(x_t | z_t), and the
mixture components of a tied Mix-d layer (§3.2.2)."""

from __future__ import annotations

import torch
from torch import nn

from .input_checks import check_component_ids, check_latents
from .mixtures import LOG_SQRT_2PI
from .precision import working_dtype

# The default of `TarFlowConfig.codebook_direct_distance_max_entries`.
DIRECT_DISTANCE_MAX_ENTRIES = 1 << 16


class GaussianCodebook(nn.Module):
    r"""K isotropic Gaussians N_k = N(μ_k, σ_k² I_d) (§3.1), with σ_k = exp(log σ_k) unconstrained.

    As the encoder: q(z_t | x_t = k) = N_k(z_t). As the tied decoder (§3.1, Bayes rule with a uniform prior):
    p(x_t = k | z_t) = N_k(z_t) / Σ_j N_j(z_t), i.e. softmax over the logits log N_k(z_t).

    `direct_distance_max_entries`: up to this many K·d entries per token, ‖z − μ_k‖² is computed from z − μ_k
    (a (…, K, d) tensor); above it, as ‖z‖² − 2 z·μ + ‖μ‖² (one matmul, as cheap as an LM head), which loses
    precision only when σ_k ≪ ‖z‖·1e-3 (float32). Weights are initialised by `TarFlowPreTrainedModel._init_weights`.
    """

    def __init__(self, num_components: int, dim: int, direct_distance_max_entries: int = DIRECT_DISTANCE_MAX_ENTRIES):
        super().__init__()
        self.num_components = num_components
        self.dim = dim
        self.direct_distance_max_entries = direct_distance_max_entries
        self.mu = nn.Parameter(torch.empty(num_components, dim))
        self.log_sigma = nn.Parameter(torch.empty(num_components))

    def sample(self, ids: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """z = μ_x + σ_x ε with ε ~ N(0, I) (reparameterised), shape (*ids.shape, d)."""
        check_component_ids(ids, self.num_components)
        mu, log_sigma = self._full_precision_params()
        if noise is None:
            noise = torch.randn(*ids.shape, self.dim, device=mu.device, dtype=mu.dtype)
        return mu[ids] + torch.exp(log_sigma[ids]).unsqueeze(-1) * noise

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N_k(z) for every component k: shape (..., K). These are also the decoder's logits."""
        check_latents(z, self.dim, check_finite=False)
        mu, log_sigma = self._full_precision_params(z)
        z = z.to(mu.dtype)
        if self.num_components * self.dim <= self.direct_distance_max_entries:
            squared_distance = (z.unsqueeze(-2) - mu).square().sum(-1)
        else:
            squared_distance = (z.square().sum(-1, keepdim=True) - 2 * z @ mu.T
                                + mu.square().sum(-1)).clamp_min(0)
        return -0.5 * squared_distance * torch.exp(-2 * log_sigma) - self.dim * (log_sigma + LOG_SQRT_2PI)

    def log_prob_of(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """log N_x(z) of the given components only, from z − μ_x: shape `ids.shape` (z: (*ids.shape, d))."""
        mu, log_sigma = self._full_precision_params(z)
        scaled = (z.to(mu.dtype) - mu[ids]) * torch.exp(-log_sigma[ids]).unsqueeze(-1)
        return -0.5 * scaled.square().sum(-1) - self.dim * (log_sigma[ids] + LOG_SQRT_2PI)

    def standardized(self, z: torch.Tensor) -> torch.Tensor:
        """(z_i − μ_{k,i}) / σ_k per component and dimension: (..., d) → (..., K, d)."""
        mu, log_sigma = self._full_precision_params(z)
        return (z.to(mu.dtype).unsqueeze(-2) - mu) * torch.exp(-log_sigma).unsqueeze(-1)

    def log_prob_per_dim(self, z: torch.Tensor, standardized: torch.Tensor | None = None) -> torch.Tensor:
        """log N(z_i; μ_{k,i}, σ_k²) per component and dimension: (..., d) → (..., K, d) (`standardized`: the
        `standardized(z)` already at hand)."""
        scaled = self.standardized(z) if standardized is None else standardized
        log_sigma = self._full_precision_params(z)[1].to(scaled.dtype)
        return -0.5 * scaled.square() - log_sigma.unsqueeze(-1) - LOG_SQRT_2PI

    def _full_precision_params(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ in at least float32: a model cast to bf16 keeps its codebook densities (softmax over V
        logits, distances to every μ_k) out of bf16, as training under autocast does."""
        dtype = working_dtype(self.mu, *inputs)
        return self.mu.to(dtype), self.log_sigma.to(dtype)


__all__ = ["GaussianCodebook"]
