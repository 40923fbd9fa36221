"""Sample entropy as ReMDM computes it (Table 6 of arXiv 2507.00425), as an `evaluate` metric: per sample, the
entropy in nats of the empirical distribution of its token ids, −Σ_v p_v log p_v, averaged over samples.

ReMDM takes the model's own ids (before decoding); texts are tokenised here with `tokenizer` (default: GPT-2's, the
ids of ReMDM's OpenWebText models), without special tokens.

    entropy = evaluate.load("evaluation/metrics/sample_entropy")
    entropy.compute(predictions=token_id_lists)["mean"]
    entropy.compute(predictions=texts, tokenizer="gpt2")["mean"]
"""

import datasets
import evaluate
from transformers import AutoTokenizer

from .unigram import entropy_summary

_CITATION = """@article{wang2025remasking, title={Remasking Discrete Diffusion Models with Inference-Time Scaling},
author={Wang, Guanghan and Schiff, Yair and Sahoo, Subham Sekhar and Kuleshov, Volodymyr}, year={2025}}"""
_INPUTS = """
predictions (list of list of int, or list of str): each sample's token ids, or its text.
tokenizer (str or tokenizer): for texts only; a Hub id or folder, or a loaded tokenizer (default "gpt2").
Returns: mean (nats), standard_error, unit, per_sample.
"""


class SampleEntropy(evaluate.Metric):
    """The mean per-sample unigram entropy of token ids, in nats."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=_INPUTS,
            features=[datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64"))}),
                      datasets.Features({"predictions": datasets.Value("string")})])

    def _compute(self, predictions, tokenizer="gpt2"):
        if predictions and isinstance(predictions[0], str):
            if isinstance(tokenizer, str):
                tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            predictions = tokenizer(list(predictions), add_special_tokens=False)["input_ids"]
        return entropy_summary([list(ids) for ids in predictions])
