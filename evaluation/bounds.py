"""Likelihood bounds from per-block z samples, and their token-weighted corpus aggregation (paper §2.3, §2.5).

For a block x of T tokens and z_k ~ q(z|x), a latent model returns

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
"""

import math
from dataclasses import dataclass

import torch


def importance_weighted_nll(nelbo_samples: torch.Tensor, k: int) -> torch.Tensor:
    """−log p̂_K(x) per block, averaged over the S/K disjoint groups of ``nelbo_samples`` (N, S) → (N,)."""
    num_blocks, num_samples = nelbo_samples.shape
    if k < 1 or num_samples % k:
        raise ValueError(f"K = {k} must divide the number of z samples per block ({num_samples})")
    groups = -nelbo_samples.double().view(num_blocks, num_samples // k, k)
    log_mean_weight = torch.logsumexp(groups, dim=-1) - math.log(k)
    return -log_mean_weight.mean(dim=-1)


@dataclass
class CorpusBound:
    """A bound (or exact NLL) summed over a corpus: ``nats`` over ``tokens`` scored tokens."""

    nats: float
    tokens: int

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token)

    def to_dict(self) -> dict:
        return {"nats": self.nats, "tokens": self.tokens, "nats_per_token": self.nats_per_token,
                "bits_per_token": self.bits_per_token, "perplexity": self.perplexity}
