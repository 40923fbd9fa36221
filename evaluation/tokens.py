"""Token lists to model inputs (tokenising as the reference code does, right-padding batches): kept with the Gen-PPL
metric, which ships them, in ``evaluation/metrics/gen_ppl/tokens.py``."""

from .metrics.gen_ppl.tokens import batched, encode_texts, right_pad

__all__ = ["batched", "encode_texts", "right_pad"]
