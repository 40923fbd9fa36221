"""MAUVE with ReMDM's settings from precomputed features (paper Table 6): kept with the `evaluate` metric that ships
it, in ``evaluation/metrics/remdm_mauve/mauve_settings.py``."""

from .metrics.remdm_mauve.mauve_settings import (MAUVE_SCALING_FACTOR, MAUVE_SEED, default_num_buckets,
                                                 mauve_from_features)

__all__ = ["MAUVE_SCALING_FACTOR", "MAUVE_SEED", "default_num_buckets", "mauve_from_features"]
