"""MAUVE with ReMDM's settings (Table 6 of arXiv 2507.00425), as an `evaluate` metric: scaling factor 5, n/10
k-means buckets, mauve-text's defaults otherwise (``mauve_settings.py``). References are p, samples q.

From features (N, d) computed by any featurizer, or from texts, featurised by mauve-text's own recipe (the last
token's final hidden state of `featurizer`, default GPT-2 Large as in the paper; needs that model) or by a callable
texts → array (N, d).

    mauve = evaluate.load("evaluation/metrics/remdm_mauve")
    mauve.compute(predictions=sample_features, references=reference_features)["mauve"]
    mauve.compute(predictions=sample_texts, references=reference_texts, featurizer="gpt2-large")["mauve"]
"""

import datasets
import evaluate
import numpy as np

from .mauve_settings import MAUVE_SEED, mauve_from_features

_CITATION = """@inproceedings{pillutla2021mauve, title={MAUVE: Measuring the Gap Between Neural Text and Human Text
using Divergence Frontiers}, author={Pillutla, Krishna and others}, booktitle={NeurIPS}, year={2021}}"""
_INPUTS = """
predictions, references (list of str, or list of list of float): samples (q) and human references (p), as texts or
as feature vectors.
featurizer (str or callable): for texts; a model name mauve-text featurises with (default "gpt2-large"), or a
callable texts -> array (N, d). num_buckets (int): default n/10. max_text_length (int): 1024. device_id (int): -1 CPU.
Returns: mauve, frontier_integral and the settings used.
"""


class RemdmMauve(evaluate.Metric):
    """MAUVE of samples against references, ReMDM's settings."""

    def _info(self):
        vector = datasets.Sequence(datasets.Value("float32"))
        text = datasets.Value("string")
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=_INPUTS,
            features=[datasets.Features({"predictions": vector, "references": vector}),
                      datasets.Features({"predictions": text, "references": text})])

    def _compute(self, predictions, references, featurizer="gpt2-large", num_buckets=None, max_text_length=1024,
                 device_id=-1):
        if predictions and isinstance(predictions[0], str):
            q_features = text_features(predictions, featurizer, max_text_length, device_id)
            p_features = text_features(references, featurizer, max_text_length, device_id)
        else:
            q_features, p_features = np.asarray(predictions, np.float32), np.asarray(references, np.float32)
        return mauve_from_features(p_features, q_features, num_buckets=num_buckets, seed=MAUVE_SEED)


def text_features(texts, featurizer, max_text_length: int, device_id: int) -> np.ndarray:
    """Features (N, d) of `texts`: `featurizer(texts)`, or mauve-text's featurisation with the model it names."""
    if callable(featurizer):
        return np.asarray(featurizer(list(texts)))
    from mauve.compute_mauve import get_features_from_input

    return get_features_from_input(None, None, list(texts), featurizer, max_text_length, device_id, name="texts",
                                   batch_size=1, verbose=False)
