"""Generative perplexity (paper Table 6, MDLM's protocol): kept with the `evaluate` metric that ships it, in
``evaluation/metrics/gen_ppl/mdlm_gen_ppl.py`` (protocol in its docstring)."""

from .metrics.gen_ppl.mdlm_gen_ppl import GenerativePerplexity, chunk_nll, counted_targets, generative_perplexity

__all__ = ["GenerativePerplexity", "chunk_nll", "counted_targets", "generative_perplexity"]
