"""Generative harness (paper Table 6): Gen-PPL protocol, first-EOS rule, entropy, sampling and the CLI end to end."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math
import random

import pytest
import torch

from evaluation import generative
from evaluation.entropy import sample_entropies, unigram_entropy
from evaluation.gen_ppl import counted_targets, generative_perplexity
from evaluation.loading import LoadedModel
from tests.helpers.evaluation import EOS, NoisyUniformLatentModel, char_tokenizer, save_causal_lm, tiny_gpt2, uniform_gpt2

E = 27  # the EOS id of char_tokenizer(with_eos=True)


def test_first_eos_rule_counts_non_eos_tokens_and_only_the_first_eos():
    ids = torch.tensor([[1, 2, E, 3, E, E], [E, 1, E, 2, E, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    # row 0 targets: 2, first EOS, 3, second EOS, third EOS; row 1 starts with EOS (MDLM's BOS = EOS), so its
    # later EOS are not first; the padded last position never counts
    expected = [[True, True, True, False, False], [True, False, True, False, False]]
    assert counted_targets(ids, mask, eos_id=E).tolist() == expected
    assert counted_targets(ids, mask, eos_id=None).tolist() == [[True] * 5, [True] * 4 + [False]]


def test_gen_ppl_is_token_weighted_and_applies_the_eos_rule_per_chunk():
    tokenizer = char_tokenizer(with_eos=True)
    reference = uniform_gpt2(vocab_size=28)
    texts = [f"ab{EOS}cd{EOS}", "abcdefghij"]
    result = generative_perplexity(texts, reference, tokenizer, context_size=4, batch_size=2)
    # sample 1: chunks [a b E c] [d E] -> targets b, E (first), c | E (first of its own chunk) -> 4 counted
    # sample 2: chunks [a b c d] [e f g h] [i j] -> 3 + 3 + 1 = 7 counted
    assert result.sample_tokens == [4, 7]
    assert result.perplexity == pytest.approx(28)
    assert result.to_dict()["per_sample_ppl"] == [pytest.approx(28), pytest.approx(28)]


def greedy_texts(model, tokenizer, length=40):
    starts = torch.arange(1, 9)[:, None]  # one sample per start letter a..h
    out = model.generate(starts, attention_mask=torch.ones_like(starts), do_sample=False, max_new_tokens=length,
                         min_new_tokens=length, pad_token_id=0)
    return tokenizer.batch_decode(out.tolist())


def test_gen_ppl_of_own_greedy_samples_is_lower_than_of_shuffled_tokens():
    tokenizer, model = char_tokenizer(), tiny_gpt2(init_std=0.3)
    texts = greedy_texts(model, tokenizer)
    shuffled = ["".join(random.Random(i).sample(text, len(text))) for i, text in enumerate(texts)]
    greedy_ppl = generative_perplexity(texts, model, tokenizer).perplexity
    shuffled_ppl = generative_perplexity(shuffled, model, tokenizer).perplexity
    assert greedy_ppl < shuffled_ppl / 2


def test_entropy_matches_a_hand_computation():
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # ids 0, 0, 1, 2
    assert unigram_entropy([0, 0, 1, 2]) == pytest.approx(expected)
    assert unigram_entropy([5, 5, 5]) == 0
    assert sample_entropies(torch.tensor([[0, 1], [3, 3]])) == [pytest.approx(math.log(2)), 0]


@pytest.fixture
def char_lm_folder(tmp_path):
    """A tiny causal LM over text8's symbols plus EOS, saved with its tokenizer."""
    return save_causal_lm(tiny_gpt2(vocab_size=28, bos_token_id=E), char_tokenizer(with_eos=True), tmp_path / "lm")


def test_generative_cli_writes_all_metrics_for_a_causal_lm(char_lm_folder, tmp_path):
    output = tmp_path / "gen.json"
    record = generative.main([char_lm_folder, "--num_samples", "20", "--sample_length", "24", "--top_p", "0.9",
                              "--reference_model", char_lm_folder, "--featurizer", char_lm_folder,
                              "--reference_data", "tiny-literary", "--score_references",
                              "--output", str(output)])
    saved = json.loads(output.read_text())
    assert saved["summary"] == record["summary"]
    assert len(saved["samples"]["texts"]) == 20 and len(saved["samples"]["gen_ppl"]["per_sample_ppl"]) == 20
    assert 1 < saved["summary"]["gen_ppl"] < 28 * 2
    assert 0 <= saved["summary"]["entropy"] <= math.log(24)
    assert 0 <= saved["summary"]["mauve"] <= 1 and saved["mauve"]["num_buckets"] == 2
    assert saved["mauve"]["feature_kind"] == "last_token"
    assert len(saved["references"]["texts"]) == 20 and "gen_ppl" in saved["references"]


def test_generative_cli_samples_a_latent_model(monkeypatch, char_lm_folder, tmp_path):
    loaded = LoadedModel(NoisyUniformLatentModel(max_length=16), char_tokenizer(), "fake", "fake", "uniform-latent")
    monkeypatch.setattr(generative, "load_evaluated_model", lambda *args, **kwargs: loaded)
    record = generative.main(["fake", "--num_samples", "6", "--batch_size", "4", "--reference_model", char_lm_folder,
                              "--output", str(tmp_path / "latent.json")])
    assert record["config"]["sample_length"] == 16 and "mauve" not in record
    assert len(record["samples"]["entropy"]["per_sample"]) == 6
    cooled = generative.main(["fake", "--num_samples", "2", "--noise_temperature", "0.5", "--metrics", "entropy",
                              "--output", str(tmp_path / "x.json")])
    assert cooled["config"]["noise_temperature"] == 0.5 and "noise temperature 0.5" in cooled["protocol_notes"][0]
