"""Unigram entropy of token ids (Table 6's diversity column, ReMDM's convention; also training's floor): kept with
the `evaluate` metric that ships it, in ``evaluation/metrics/sample_entropy/unigram.py``."""

from .metrics.sample_entropy.unigram import sample_entropies, unigram_entropy

__all__ = ["sample_entropies", "unigram_entropy"]
