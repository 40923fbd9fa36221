"""The `evaluate` module `remdm_mauve` (script `remdm_mauve.py`) and the functions it computes with."""
