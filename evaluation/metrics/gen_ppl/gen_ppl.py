"""Generative perplexity as a local `evaluate` metric: ``evaluate.load("evaluation/metrics/gen_ppl")``.

A thin wrapper of ``evaluation.gen_ppl.generative_perplexity`` (MDLM/ReMDM protocol: retokenise with the reference
tokenizer, non-overlapping chunks, first-EOS rule, token-weighted corpus PPL), for code that collects metrics
through `evaluate`. Needs the ``tarflowlm`` package installed. No Hub access: ``model_id`` is a local folder, an
offline alias (``smollm2-135m``) or a Hub id that is reachable.
"""

import datasets
import evaluate

from evaluation.gen_ppl import generative_perplexity
from evaluation.loading import load_reference_lm

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): decoded samples.
    model_id (`str`): reference causal LM (default "gpt2-large").
    context_size (`int`): chunk length in reference tokens (default 1024).
    max_length (`int`, *optional*): truncate retokenised samples to this many tokens (MDLM: the sample length).
    batch_size (`int`): samples per forward pass (default 8).
    device (`str`): torch device (default "cpu").
Returns:
    gen_ppl (`float`): exp(Σ w·nll / Σ w) over all samples; per_sample_ppl (`list[float | None]`);
    mean_of_per_sample_ppl (`float`); tokens (`int`): counted target tokens.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GenPPL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
                                   features=datasets.Features({"predictions": datasets.Value("string")}))

    def _compute(self, predictions, model_id="gpt2-large", context_size=1024, max_length=None, batch_size=8,
                 device="cpu"):
        reference = load_reference_lm(model_id, device)
        result = generative_perplexity(list(predictions), reference.model, reference.tokenizer,
                                       context_size=context_size, max_length=max_length, batch_size=batch_size,
                                       device=device)
        scores = result.to_dict()
        return {key: scores[key] for key in ("gen_ppl", "per_sample_ppl", "mean_of_per_sample_ppl", "tokens")}
