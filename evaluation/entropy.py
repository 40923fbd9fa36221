"""Sample entropy (paper Table 6, ReMDM/DUO convention): unigram entropy of each sample's own token ids, in nats.

    H(x) = −Σ_v p_v log p_v,   p_v = count_v(x) / |x|,

computed on the generated ids before any decoding (ReMDM ``main.py``: ``torch.special.entr(counts / Σ counts).sum()``)
and averaged over samples. A sample of n distinct tokens has H ≤ log n, so with 1024-token samples H ≤ 6.93 nats;
very repetitive samples (a degenerate sampler) have low entropy even when their Gen-PPL looks good.
"""

import torch


def unigram_entropy(ids) -> float:
    """Entropy (nats) of the empirical distribution of the token ids in one sample."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("the entropy of an empty sample is undefined")
    counts = torch.bincount(ids).double()
    return torch.special.entr(counts / counts.sum()).sum().item()


def sample_entropies(samples) -> list[float]:
    """Per-sample entropies of a (N, T) tensor or a list of id lists."""
    return [unigram_entropy(sample) for sample in samples]
