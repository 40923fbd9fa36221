"""Likelihood bounds from per-block z samples, their token-weighted corpus aggregation, and the units every loss is
reported in (training's logs and evaluation's tables alike).

For a block x of T tokens and z_k ~ q(z|x), a latent model returns (the ELBO of arXiv 2507.00425 §3, summed over
the block)

    NELBO_k = −[log p(x|z_k) + log p(z_k) − log q(z_k|x)]            (nats)

- ELBO (K = 1):  −log p(x) ≤ E_q[NELBO]
- importance-weighted bound (Burda et al., 2016):
      −log p(x) ≤ −log (1/K) Σ_k p(x, z_k)/q(z_k|x) = −[logsumexp_k(−NELBO_k) − log K],
  which tightens (decreases) as K grows and reaches −log p(x) as K → ∞.

With S samples per block and K dividing S, the S/K disjoint groups of K samples give S/K independent estimates of
the K-bound, which are averaged (K = 1 is then the ELBO averaged over all S samples). For nested group sizes
(1 | 8 | 64) the estimates decrease with K for every block, not only in expectation: by Jensen the log-mean-exp of
a union of groups is at least the mean of the groups' log-mean-exps.

Corpus figures are token-weighted, not means of per-block figures (as MDLM/DUO aggregate):

    nats/token = Σ_blocks bound / Σ_blocks tokens,   bits/token = nats/token / ln 2  (BPC when a token is a
    character, text8),   PPL = exp(nats/token)  (per GPT-2 token, OpenWebText).

Each figure is an average over blocks and z draws, so it carries a standard error (``CorpusBound.from_estimates``):
it says how many of its digits are real.
"""

import math
from dataclasses import dataclass

import torch

PERPLEXITY_EXPONENT_LIMIT = 700.0  # exp(700) ≈ 1e304: a diverged loss reads as a huge perplexity, not an overflow


def bits(nats: float) -> float:
    """nats → bits (BPC when a token is a character)."""
    return nats / math.log(2)


def perplexity(nats_per_token: float) -> float:
    """exp(nats per token), capped below float overflow."""
    return math.exp(min(nats_per_token, PERPLEXITY_EXPONENT_LIMIT))


def importance_weighted_estimates(nelbo_samples: torch.Tensor, k: int) -> torch.Tensor:
    """−log p̂_K(x) of each of the S/K disjoint groups of K draws: ``nelbo_samples`` (N, S) → (N, S/K)."""
    num_blocks, num_samples = nelbo_samples.shape
    if k < 1 or num_samples % k:
        raise ValueError(f"K = {k} must divide the number of z samples per block ({num_samples})")
    groups = -nelbo_samples.double().view(num_blocks, num_samples // k, k)
    return -(torch.logsumexp(groups, dim=-1) - math.log(k))


def importance_weighted_nll(nelbo_samples: torch.Tensor, k: int) -> torch.Tensor:
    """−log p̂_K(x) per block, averaged over the S/K disjoint groups of ``nelbo_samples`` (N, S) → (N,)."""
    return importance_weighted_estimates(nelbo_samples, k).mean(dim=-1)


@dataclass
class CorpusBound:
    """A bound (or exact NLL) summed over a corpus: ``nats`` over ``tokens`` scored tokens, with standard errors of
    nats/token where they can be estimated (see ``from_estimates``)."""

    nats: float
    tokens: int
    standard_error: float | None = None
    draw_standard_error: float | None = None

    @classmethod
    def from_estimates(cls, estimates: torch.Tensor, tokens_per_block: int) -> "CorpusBound":
        """The corpus bound from G independent estimates per block (N, G) of T = ``tokens_per_block`` tokens.

        With b_i the mean of block i's estimates, nats/token = Σ_i b_i / (N·T), and

        - ``standard_error`` = sd_i(b_i / T) / √N: the spread across blocks, which carries the z-draw noise too;
          how far the figure may move with other blocks of the same text and other draws (needs N ≥ 2);
        - ``draw_standard_error`` = √(Σ_i var_g(estimates_ig) / G) / (N·T): the z-draw noise alone, what another
          seed would change on the same blocks (needs G ≥ 2; an exact NLL has none).
        """
        estimates = estimates.double()
        num_blocks, num_groups = estimates.shape
        per_token = estimates.mean(dim=1) / tokens_per_block
        spread = per_token.std().item() / math.sqrt(num_blocks) if num_blocks > 1 else None
        draws = None
        if num_groups > 1:
            draws = math.sqrt(estimates.var(dim=1).sum().item() / num_groups) / (num_blocks * tokens_per_block)
        return cls(estimates.mean(dim=1).sum().item(), num_blocks * tokens_per_block, spread, draws)

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens

    @property
    def bits_per_token(self) -> float:
        return bits(self.nats_per_token)

    @property
    def perplexity(self) -> float:
        return perplexity(self.nats_per_token)

    def error_in_units(self, nats_error: float | None) -> dict | None:
        """A standard error of nats/token in every unit (PPL's by the delta method, PPL · SE)."""
        if nats_error is None:
            return None
        return {"nats_per_token": nats_error, "bits_per_token": bits(nats_error),
                "perplexity": self.perplexity * nats_error}

    def to_dict(self) -> dict:
        return {"nats": self.nats, "tokens": self.tokens, "nats_per_token": self.nats_per_token,
                "bits_per_token": self.bits_per_token, "perplexity": self.perplexity,
                "standard_error": self.error_in_units(self.standard_error),
                "draw_standard_error": self.error_in_units(self.draw_standard_error)}
