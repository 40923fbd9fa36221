"""The `evaluate` module `gen_ppl` (script `gen_ppl.py`) and the functions it computes with."""
