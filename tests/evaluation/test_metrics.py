"""The local `evaluate` metric scripts give the harness's own numbers, offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest

import evaluation
from evaluation.entropy import sample_entropies
from evaluation.gen_ppl import generative_perplexity
from tests.helpers.evaluation import char_tokenizer, save_causal_lm, tiny_gpt2

METRICS = Path(evaluation.__file__).parent / "metrics"


def test_local_metric_scripts_match_the_harness(tmp_path):
    evaluate = pytest.importorskip("evaluate")
    reference = save_causal_lm(tiny_gpt2(init_std=0.3), char_tokenizer(), tmp_path / "reference")
    texts = ["in the beginning", "was the word and the word"]
    gen_ppl = evaluate.load(str(METRICS / "gen_ppl")).compute(predictions=texts, model_id=reference)
    direct = generative_perplexity(texts, tiny_gpt2(init_std=0.3), char_tokenizer())
    assert gen_ppl["gen_ppl"] == pytest.approx(direct.perplexity, rel=1e-5)
    entropy = evaluate.load(str(METRICS / "sample_entropy")).compute(predictions=[[0, 0, 1, 2], [3, 3]])
    assert entropy["per_sample"] == pytest.approx(sample_entropies([[0, 0, 1, 2], [3, 3]]))
