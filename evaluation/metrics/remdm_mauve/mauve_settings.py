"""MAUVE between reference texts (p) and samples (q) from precomputed features (paper Table 6, ReMDM protocol).

MAUVE (Pillutla et al., 2021) quantises the union of both feature sets (PCA to 90 % explained variance, k-means with
``num_buckets`` clusters), compares the two histograms P and Q along the divergence frontier
R_λ = λP + (1 − λ)Q, and reports the area under the curve (exp(−c·KL(Q‖R_λ)), exp(−c·KL(P‖R_λ))) with scaling c.
Settings follow ReMDM / the paper: c = 5, ``num_buckets`` = n/10 (``mauve-text``'s 'auto'), mauve-text defaults
otherwise (k-means 5 restarts × 500 iterations, seed 25). MAUVE is a relative measure: compare only numbers computed
with the same featurizer, sample count and settings.
"""

import numpy as np

MAUVE_SCALING_FACTOR = 5.0
MAUVE_SEED = 25


def default_num_buckets(num_p: int, num_q: int) -> int:
    """n/10 clusters, as ``num_buckets='auto'`` in mauve-text: 500 for the paper's 5000 samples."""
    return max(1, round(min(num_p, num_q) / 10))


def mauve_from_features(p_features: np.ndarray, q_features: np.ndarray, *, scaling_factor: float = MAUVE_SCALING_FACTOR,
                        num_buckets: int | None = None, seed: int = MAUVE_SEED, kmeans_num_redo: int = 5,
                        kmeans_max_iter: int = 500) -> dict:
    """MAUVE of samples ``q_features`` (N_q, d) against references ``p_features`` (N_p, d), with its settings."""
    import mauve

    num_buckets = num_buckets or default_num_buckets(len(p_features), len(q_features))
    result = mauve.compute_mauve(p_features=np.asarray(p_features), q_features=np.asarray(q_features),
                                 num_buckets=num_buckets, mauve_scaling_factor=scaling_factor, seed=seed,
                                 kmeans_num_redo=kmeans_num_redo, kmeans_max_iter=kmeans_max_iter, verbose=False)
    return {"mauve": float(result.mauve), "frontier_integral": float(result.frontier_integral),
            "num_references": len(p_features), "num_samples": len(q_features), "num_buckets": num_buckets,
            "scaling_factor": scaling_factor, "seed": seed, "kmeans_num_redo": kmeans_num_redo,
            "kmeans_max_iter": kmeans_max_iter, "feature_dim": int(np.shape(p_features)[1])}
