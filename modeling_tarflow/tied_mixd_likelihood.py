r"""The V-sized terms of progressive stage 1 (§3.3): a tied Mix-d layer (§3.2.2) with the Bayes decoder (§3.1), in one
token-chunked pass that saves nothing V-sized, beside the plain formula it computes.

With a = log N_·(z) the codebook's log-densities and ℓ = W f + b the Mix-d head's logits (π = softmax ℓ, Prop. 4),
per token

    log p(x|z)    = log N_x(z) − LSE_k a_k                    (the tied decoder)
    log p_mixd(z) = LSE_k (ℓ_k + a_k) − LSE_k ℓ_k             (the tied Mix-d density)

and log N_x(z) cancels against log q(z|x) in the NELBO. Both need the same a, computed once.

`tied_mixd_log_terms` returns (LSE_k a_k, log p_mixd) per token. Its fast path (`ChunkedTiedMixdTerms`):

- builds a with one matmul, [z', ‖z'‖², 1] · [μ'_k e^{−2s_k}, −½e^{−2s_k}, −½e^{−2s_k}‖μ'_k‖² − d(s_k + ½log 2π)],
  centred first (z' = z − c, μ' = μ − c with c the mean of μ: the distances are unchanged, the cancellation in
  ‖z'‖² − 2z'·μ' + ‖μ'‖² is smaller), in float64 (`codebook_distance_factors`); the gradients' codebook matmuls
  run in IEEE float32 (`ieee_float32_matmul`: no TF32, no bf16 passes);
- goes through the tokens in chunks (`fast_paths.token_rows`), so a chunk's (rows, V) terms stay in cache;
- computes the gradients in the same pass as the values, for the NELBO's own weighting (LSE a with weight +1, log
  p_mixd with −1, equal for every token: what `loss` and `nelbo.sum()` give), and keeps only those (sizes of f, z
  and the parameters). A backward with any other weighting recomputes the chunks with it, so every gradient is
  exact.

The reference (`tied_mixd_log_terms_reference`) is the plain formula through autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fast_paths import ieee_float32_matmul, token_rows, use_fused_path
from .mixtures import EXP_FLOOR, LOG_SQRT_2PI, log_sum_exp


def tied_mixd_log_terms_reference(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, z: torch.Tensor,
                                  mu: torch.Tensor, log_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LSE_k log N_k(z), log p_mixd(z)) per row: features (N, D), head weight (K, D) and bias (K), z (N, d),
    the codebook μ (K, d) and log σ (K); distances from z − μ_k."""
    squared_distance = (z.unsqueeze(-2) - mu).square().sum(-1)
    log_n = -0.5 * squared_distance * torch.exp(-2 * log_sigma) - mu.shape[-1] * (log_sigma + LOG_SQRT_2PI)
    logits = F.linear(features, weight, bias)
    log_p_mixd = torch.logsumexp(logits + log_n, dim=-1) - torch.logsumexp(logits, dim=-1)
    return torch.logsumexp(log_n, dim=-1), log_p_mixd


def tied_mixd_log_terms(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, z: torch.Tensor,
                        mu: torch.Tensor, log_sigma: torch.Tensor,
                        normalizer_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`tied_mixd_log_terms_reference`, by the chunked fast path in eager mode (the plain formula under
    `torch.compile`, and for fewer than `fast_paths.FUSED_LIKELIHOOD_MIN_COMPONENTS` components). z, μ, log σ in float32 or wider; `features`, `weight` and `bias` may be bf16 (the head's
    matmul then runs in bf16, as under autocast). `normalizer_weight` (w): the fast path computes the gradients of
    c·(w·LSE a − log p_mixd) summed over rows in its forward pass — w = 1 in the NELBO, 0 for a density alone."""
    if not use_fused_path(mu.shape[0]):
        return tied_mixd_log_terms_reference(features.to(z.dtype), weight.to(z.dtype), bias.to(z.dtype), z, mu,
                                             log_sigma)
    rows = token_rows(z.device, mu.shape[0])
    return ChunkedTiedMixdTerms.apply(features, weight, bias, z, mu, log_sigma, rows, normalizer_weight)


class _Chunk:
    """One chunk of rows: a = log N_·(z), ℓ, and the two softmaxes' ingredients, with the chunk's outputs."""

    def __init__(self, terms: "_Terms", start: int, stop: int):
        self.rows = slice(start, stop)
        features = terms.features[self.rows]
        logits = torch.addmm(terms.bias, features, terms.weight.T).to(terms.dtype)
        log_n = (terms.latents_aug[self.rows] @ terms.codebook_aug.T).to(terms.dtype)
        self.log_n_lse, self.p_n = _log_sum_exp_and_softmax(log_n)
        self.logits_lse, self.p_logits = _log_sum_exp_and_softmax(logits)
        self.joint_lse, self.p_joint = _log_sum_exp_and_softmax(logits.add_(log_n))
        self.log_n = log_n

    def gradients(self, terms: "_Terms", weight_norm: torch.Tensor, weight_mixd: torch.Tensor, out: dict) -> None:
        r"""Adds this chunk's gradients of Σ_t [g1_t LSE a_t + g2_t log p_mixd,t] to `out`:
        ∂/∂a = g1 softmax(a) + g2 softmax(ℓ + a),  ∂/∂ℓ = g2 (softmax(ℓ + a) − softmax(ℓ)), then through
        ℓ = W f + b and a_k = −½e^{−2s_k}‖z − μ_k‖² − d(s_k + ½log 2π)."""
        g1, g2 = weight_norm[self.rows, None], weight_mixd[self.rows, None]
        grad_logits = (self.p_joint - self.p_logits).mul_(g2)                        # (n, K)
        grad_log_n = self.p_n.mul_(g1).add_(self.p_joint.mul_(g2))                   # (n, K)
        features = terms.features[self.rows]
        if terms.wants["features"]:
            out["features"][self.rows] = (grad_logits.to(terms.weight.dtype) @ terms.weight).to(out["features"].dtype)
        if terms.wants["weight"] or terms.wants["bias"]:
            out["weight_bias"].addmm_(grad_logits.T, torch.cat([features.to(terms.dtype),
                                                                features.new_ones(features.shape[0], 1, dtype=terms.dtype)], 1))
        with ieee_float32_matmul():
            self._codebook_gradients(terms, grad_log_n, out)

    def _codebook_gradients(self, terms: "_Terms", grad_log_n: torch.Tensor, out: dict) -> None:
        centred_z = terms.centred_z[self.rows]
        if terms.wants["z"]:
            pulled = grad_log_n @ terms.precision_mu_aug                             # (n, d + 1)
            out["z"][self.rows] = pulled[:, :-1] - centred_z * pulled[:, -1:]
        if terms.wants["mu"] or terms.wants["log_sigma"]:
            out["z_sums"].addmm_(grad_log_n.T, torch.cat([centred_z, torch.ones_like(centred_z[:, :1])], 1))
        if terms.wants["log_sigma"]:
            out["log_n_weighted"].add_((grad_log_n * self.log_n).sum(0))


def codebook_distance_factors(centred_z: torch.Tensor, centred_mu: torch.Tensor,
                                log_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors whose product is log N_k(z) (N, K): [z', ‖z'‖², 1] and
    [μ'_k e^{−2s_k}, −½e^{−2s_k}, −½e^{−2s_k}‖μ'_k‖² − d(s_k + ½log 2π)], in float64. The product cancels
    −½e^{−2s_k}(‖z'‖² + ‖μ'_k‖²) against e^{−2s_k} z'·μ'_k: in float32 that costs 2e-3 nats at σ = 0.05 (against
    1e-6 from the difference z − μ_k), in float64 below 1e-6 after rounding the product to float32. The matmul has
    an inner size of only d + 2, so float64 costs little (bench/results/scaling_vocabulary.json: stage 1 at
    0.74× GPT-2's tokens/s)."""
    centred_z, centred_mu, log_sigma = centred_z.double(), centred_mu.double(), log_sigma.double()
    precision = torch.exp(-2 * log_sigma)
    constant = -0.5 * precision * centred_mu.square().sum(-1) - centred_mu.shape[1] * (log_sigma + LOG_SQRT_2PI)
    latents = torch.cat([centred_z, centred_z.square().sum(-1, keepdim=True), torch.ones_like(centred_z[:, :1])], 1)
    codebook = torch.cat([centred_mu * precision[:, None], -0.5 * precision[:, None], constant[:, None]], 1)
    return latents, codebook


def _log_sum_exp_and_softmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LSE over the last axis, softmax) of x (kept)."""
    peak = x.amax(-1, keepdim=True)
    probs = (x - peak).clamp_min_(EXP_FLOOR).exp_()
    total = probs.sum(-1, keepdim=True)
    return (peak + total.log()).squeeze(-1), probs.div_(total)


class _Terms:
    """The inputs of `ChunkedTiedMixdTerms` prepared once: centred, augmented latents and codebook rows."""

    def __init__(self, features, weight, bias, z, mu, log_sigma, rows, wants):
        self.dtype, self.rows, self.wants = z.dtype, rows, wants
        self.features, self.weight = features, weight
        self.bias = bias.to(weight.dtype)
        self.mu, self.log_sigma = mu, log_sigma
        self.centre = mu.mean(0)
        centred_z, centred_mu = z - self.centre, mu - self.centre
        self.precision = torch.exp(-2 * log_sigma)                                  # e^{−2s_k}
        self.centred_z, self.centred_mu = centred_z, centred_mu
        self.latents_aug, self.codebook_aug = codebook_distance_factors(centred_z, centred_mu, log_sigma)
        self.precision_mu_aug = torch.cat([centred_mu * self.precision[:, None], self.precision[:, None]], 1)

    def chunks(self):
        for start in range(0, self.features.shape[0], self.rows):
            yield _Chunk(self, start, min(start + self.rows, self.features.shape[0]))

    def new_gradients(self) -> dict:
        vocab, dim = self.mu.shape
        zeros = lambda *shape, dtype=self.dtype: torch.zeros(*shape, dtype=dtype, device=self.mu.device)  # noqa: E731
        return {"features": zeros(*self.features.shape, dtype=self.features.dtype), "z": zeros(self.features.shape[0], dim),
                "weight_bias": zeros(vocab, self.weight.shape[1] + 1), "z_sums": zeros(vocab, dim + 1),
                "log_n_weighted": zeros(vocab)}

    def parameter_gradients(self, out: dict) -> tuple:
        """(∂W, ∂b, ∂μ, ∂log σ) from the accumulated sums: with G = ∂/∂a,
        ∂μ_k = e^{−2s_k}(Σ_t G_tk z'_t − μ'_k Σ_t G_tk),  ∂s_k = −2 Σ_t G_tk a_tk − (2d(s_k + ½log 2π) + d) Σ_t G_tk."""
        dim = self.mu.shape[1]
        weight_bias, z_sums = out["weight_bias"], out["z_sums"]
        column = z_sums[:, -1]
        grad_mu = self.precision[:, None] * (z_sums[:, :-1] - self.centred_mu * column[:, None])
        grad_log_sigma = -2 * out["log_n_weighted"] - (2 * dim * (self.log_sigma + LOG_SQRT_2PI) + dim) * column
        return (weight_bias[:, :-1].to(self.weight.dtype), weight_bias[:, -1].to(self.bias.dtype), grad_mu,
                grad_log_sigma)

    def run(self, weight_norm: torch.Tensor | None, weight_mixd: torch.Tensor | None):
        """Every chunk's outputs, and the gradients for the per-row weights (None: values only), in the order of
        `ChunkedTiedMixdTerms`'s inputs."""
        rows = self.features.shape[0]
        log_norm = torch.empty(rows, dtype=self.dtype, device=self.mu.device)
        log_p_mixd = torch.empty_like(log_norm)
        out = self.new_gradients() if weight_norm is not None else None
        for chunk in self.chunks():
            log_norm[chunk.rows] = chunk.log_n_lse
            log_p_mixd[chunk.rows] = chunk.joint_lse - chunk.logits_lse
            if out is not None:
                chunk.gradients(self, weight_norm, weight_mixd, out)
        if out is None:
            return log_norm, log_p_mixd, None
        grad_weight, grad_bias, grad_mu, grad_log_sigma = self.parameter_gradients(out)
        return log_norm, log_p_mixd, (out["features"], grad_weight, grad_bias, out["z"], grad_mu, grad_log_sigma)


_INPUTS = ("features", "weight", "bias", "z", "mu", "log_sigma")


class ChunkedTiedMixdTerms(torch.autograd.Function):
    """(LSE_k log N_k(z), log p_mixd(z)) per row, token-chunked, with the gradients of the NELBO's weighting computed
    in the forward pass (see the module docstring)."""

    @staticmethod
    def forward(ctx, features, weight, bias, z, mu, log_sigma, rows, normalizer_weight):
        wants = dict(zip(_INPUTS, ctx.needs_input_grad[:6]))
        terms = _Terms(features, weight, bias, z, mu, log_sigma, rows, wants)
        expected = None
        if any(wants.values()):
            ones = torch.ones(features.shape[0], dtype=z.dtype, device=z.device)
            expected = (normalizer_weight * ones, -ones)
        log_norm, log_p_mixd, grads = terms.run(*(expected or (None, None)))
        ctx.save_for_backward(features, weight, bias, z, mu, log_sigma)
        ctx.rows, ctx.grads, ctx.normalizer_weight = rows, grads, normalizer_weight
        return log_norm, log_p_mixd

    @staticmethod
    def backward(ctx, grad_norm, grad_mixd):
        scale = _uniform_scale(grad_norm, grad_mixd, ctx.normalizer_weight)
        if scale is not None and ctx.grads is not None:
            grads = tuple(None if g is None else g * scale.to(g.dtype) for g in ctx.grads)
        else:
            features, weight, bias, z, mu, log_sigma = ctx.saved_tensors
            wants = dict(zip(_INPUTS, ctx.needs_input_grad[:6]))
            terms = _Terms(features, weight, bias, z, mu, log_sigma, ctx.rows, wants)
            zeros = torch.zeros(features.shape[0], dtype=z.dtype, device=z.device)
            grads = terms.run(zeros if grad_norm is None else grad_norm.to(z.dtype),
                              zeros if grad_mixd is None else grad_mixd.to(z.dtype))[2]
        ctx.grads = None
        return (*(g if want else None for g, want in zip(grads, ctx.needs_input_grad[:6])), None, None)


def _uniform_scale(grad_norm: torch.Tensor | None, grad_mixd: torch.Tensor | None,
                   normalizer_weight: float) -> torch.Tensor | None:
    """c where the output gradients are (w·c, −c) for every row — the weighting the forward pass differentiated
    (`normalizer_weight` w) — else None."""
    if grad_mixd is None:
        return None
    scale = -grad_mixd[:1]
    uniform = grad_mixd == -scale
    if grad_norm is not None:
        uniform &= grad_norm == normalizer_weight * scale
    elif normalizer_weight != 0:
        return None
    return scale[0] if bool(uniform.all()) else None


def mixd_log_density(z: torch.Tensor, log_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log p_mixd(z) = LSE_k(log π_k + log N_k(z)) per row, z (N, d), log π (N, K): log N_k(z) from the float64
    factors of `codebook_distance_factors` (a (N, K) matmul), rounded to z's dtype."""
    centre = mu.mean(0)
    latents, codebook = codebook_distance_factors(z - centre, mu - centre, log_sigma)
    return log_sum_exp((latents @ codebook.T).to(z.dtype) + log_pi)


__all__ = ["tied_mixd_log_terms", "tied_mixd_log_terms_reference", "ChunkedTiedMixdTerms", "codebook_distance_factors",
           "mixd_log_density"]
