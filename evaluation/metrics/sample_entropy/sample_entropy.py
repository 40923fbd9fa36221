"""Sample entropy as a local `evaluate` metric: ``evaluate.load("evaluation/metrics/sample_entropy")``.

A thin wrapper of ``evaluation.entropy``: the unigram entropy of each sample's own token ids, in nats,
H = −Σ_v p_v log p_v, and its mean over samples (ReMDM/DUO convention, paper Table 6). Needs the ``tarflowlm``
package installed.
"""

import datasets
import evaluate

from evaluation.entropy import sample_entropies

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int]]`): generated token ids, one list per sample.
Returns:
    entropy (`float`): mean per-sample entropy in nats; per_sample (`list[float]`).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SampleEntropy(evaluate.Metric):
    def _info(self):
        features = datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64"))})
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=features)

    def _compute(self, predictions):
        entropies = sample_entropies(predictions)
        return {"entropy": sum(entropies) / len(entropies), "per_sample": entropies}
