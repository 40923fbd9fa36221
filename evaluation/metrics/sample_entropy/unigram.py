"""Unigram entropy of token ids: per generated sample (the diversity column of Table 6, ReMDM/DUO convention, in
nats), and of a training split (the loss, in bits per token, of the best model that ignores context: the floor a
trained model must beat).

    H(x) = −Σ_v p_v log p_v,   p_v = count_v(x) / |x|,

computed on the ids before any decoding (ReMDM ``main.py``: ``torch.special.entr(counts / Σ counts).sum()``) and, for
samples, averaged over them. A sample of n distinct tokens has H ≤ log n, so with 1024-token samples H ≤ 6.93 nats;
very repetitive samples (a degenerate sampler) have low entropy even when their Gen-PPL looks good.
"""

import math
import statistics

import torch


def unigram_entropy(ids, base: float = math.e) -> float:
    """Entropy of the empirical distribution of the token ids (any shape), in nats, or bits with ``base=2``."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("the entropy of an empty sample is undefined")
    counts = torch.bincount(ids).double()
    return torch.special.entr(counts / counts.sum()).sum().item() / math.log(base)


def sample_entropies(samples) -> list[float]:
    """Per-sample entropies (nats) of a (N, T) tensor or a list of id lists."""
    return [unigram_entropy(sample) for sample in samples]


def entropy_summary(samples) -> dict:
    """The mean per-sample entropy (Table 6's number) with its standard error over samples, and every value."""
    entropies = sample_entropies(samples)
    error = statistics.stdev(entropies) / math.sqrt(len(entropies)) if len(entropies) > 1 else None
    return {"mean": statistics.fmean(entropies), "standard_error": error, "unit": "nats", "per_sample": entropies}
