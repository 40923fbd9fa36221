"""Gen-PPL as MDLM computes it (Table 6 of arXiv 2507.00425, after ReMDM), as an `evaluate` metric: retokenise each
text with the reference LM's tokenizer, score non-overlapping ``context_size`` chunks, count only the first EOS of a
chunk, and aggregate token-weighted, exp(Σ nll / Σ tokens) (protocol: ``mdlm_gen_ppl.py``).

    gen_ppl = evaluate.load("evaluation/metrics/gen_ppl")
    gen_ppl.compute(predictions=texts, model_id="gpt2-large")["gen_ppl"]
    gen_ppl.compute(predictions=texts, model=causal_lm, tokenizer=tokenizer)
"""

import datasets
import evaluate
from transformers import AutoModelForCausalLM, AutoTokenizer

from .mdlm_gen_ppl import sequence_perplexity
from .tokens import encode_texts

_CITATION = """@inproceedings{sahoo2024simple, title={Simple and Effective Masked Diffusion Language Models},
author={Sahoo, Subham Sekhar and others}, booktitle={NeurIPS}, year={2024}}"""
_INPUTS = """
predictions (list of str): the texts to score (samples of any model).
model_id (str): the reference causal LM (Hub id or folder), loaded when `model` is not given; default gpt2-large.
model, tokenizer: a loaded reference LM and its tokenizer instead.
context_size (int): chunk length (1024, GPT-2's context). max_length (int): retokenised texts are truncated to this
many tokens (MDLM: the sample length); None keeps them whole. batch_size (int), device (str).
Returns: gen_ppl (token-weighted), standard_error, nll_nats, tokens, mean_of_per_sample_ppl, per_sample_ppl,
per_sample_tokens.
"""


class GenPPL(evaluate.Metric):
    """Gen-PPL under a reference causal LM, MDLM's protocol."""

    def _info(self):
        return evaluate.MetricInfo(description=__doc__, citation=_CITATION, inputs_description=_INPUTS,
                                   features=datasets.Features({"predictions": datasets.Value("string")}))

    def _compute(self, predictions, model_id="gpt2-large", model=None, tokenizer=None, context_size=1024,
                 max_length=None, batch_size=8, device="cpu"):
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(model_id).to(device).eval()
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_id)
        if tokenizer is None:
            raise ValueError("pass the reference model's tokenizer with model=")
        sequences = encode_texts(tokenizer, list(predictions), max_length)
        return sequence_perplexity(sequences, model, tokenizer.eos_token_id, context_size=context_size,
                                   batch_size=batch_size, device=device).to_dict()
