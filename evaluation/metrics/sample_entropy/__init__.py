"""The `evaluate` module `sample_entropy` (script `sample_entropy.py`) and the functions it computes with."""
