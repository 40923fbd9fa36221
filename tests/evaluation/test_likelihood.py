"""Likelihood harness (paper Table 2): bounds arithmetic, corpus blocks, and the CLI end to end."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math
import statistics

import pytest
import torch

from evaluation import likelihood
from evaluation.bounds import CorpusBound, importance_weighted_nll
from evaluation.corpus import load_blocks
from evaluation.loading import LoadedModel
from tests.helpers.evaluation import NoisyUniformLatentModel, char_tokenizer, save_causal_lm, uniform_gpt2
from training.data import load_openwebtext, load_text8

LOG2_27 = math.log2(27)


CORPUS = ["--data", "tiny-literary", "--split", "test"]


def use_latent_model(monkeypatch, model):
    """Make the CLI load ``model`` (a fake latent model) whatever name it is given."""
    loaded = LoadedModel(model, char_tokenizer(), source="fake", path="fake", label="uniform-latent")
    monkeypatch.setattr(likelihood, "load_evaluated_model", lambda *args, **kwargs: loaded)


def test_bpc_of_a_uniform_latent_model_is_log2_27(monkeypatch, tmp_path):
    use_latent_model(monkeypatch, NoisyUniformLatentModel(noise_std=0.0))
    output = tmp_path / "result.json"
    record = likelihood.main(["fake", *CORPUS, "--block_size", "32", "--max_blocks", "300", "--output", str(output)])
    assert record["headline"]["metric"] == "bpc"
    assert record["headline"]["value"] == pytest.approx(LOG2_27, abs=1e-9)
    saved = json.loads(output.read_text())
    assert saved["counts"]["scored_tokens"] == saved["counts"]["blocks"] * 32
    assert saved["counts"]["blocks_in_split"] * 32 + saved["counts"]["dropped_tokens"] == saved["counts"]["stream_tokens"]
    assert saved["environment"]["versions"]["torch"] == torch.__version__


def test_bpc_of_a_uniform_causal_lm_is_log2_27_exactly(tmp_path):
    folder = save_causal_lm(uniform_gpt2(), char_tokenizer(), tmp_path / "uniform-gpt2")
    record = likelihood.main([folder, *CORPUS, "--block_size", "32", "--max_blocks", "5", "--num_z_samples", "4",
                              "--output", str(tmp_path / "ar.json")])
    assert record["bounds"].keys() == {"exact"}
    assert (record["config"]["num_z_samples"], record["config"]["iw_k"]) == (None, [])  # exact: no draws used
    assert record["headline"] == {"metric": "bpc", "bound": "exact", "value": pytest.approx(LOG2_27, abs=1e-6),
                                  "is_upper_bound": False, "standard_error": pytest.approx(0, abs=1e-6)}
    assert record["counts"]["scored_tokens"] == 5 * 31  # no BOS: the first token of a block has no context


def test_iw_bound_is_at_least_the_elbo_and_tightens_with_k(monkeypatch, tmp_path):
    noise_std, block_size = 1.5, 16
    use_latent_model(monkeypatch, NoisyUniformLatentModel(noise_std=noise_std))
    record = likelihood.main(["fake", *CORPUS, "--block_size", str(block_size),
                              "--num_z_samples", "64", "--iw_k", "1", "8", "64", "--max_blocks", "200", "--output", str(tmp_path / "r.json")])
    nats = {name: bound["nats_per_token"] for name, bound in record["bounds"].items()}
    exact = math.log(27)
    assert nats["elbo"] >= nats["iw_k8"] >= nats["iw_k64"] >= exact - 0.01
    assert nats["elbo"] == pytest.approx(exact + noise_std**2 / 2 / block_size, abs=0.01)


def test_importance_weighted_nll_matches_a_hand_computation():
    nelbo = torch.tensor([[1.0, 3.0, 2.0, 4.0]])
    k2 = -0.5 * (math.log((math.exp(-1) + math.exp(-3)) / 2) + math.log((math.exp(-2) + math.exp(-4)) / 2))
    assert importance_weighted_nll(nelbo, 1).item() == pytest.approx(2.5)
    assert importance_weighted_nll(nelbo, 2).item() == pytest.approx(k2)
    with pytest.raises(ValueError, match="must divide"):
        importance_weighted_nll(nelbo, 3)


def test_standard_errors_of_a_corpus_bound_match_a_hand_computation():
    estimates = torch.tensor([[1.0, 3.0], [2.0, 6.0], [4.0, 4.0]])  # 3 blocks x 2 groups of draws, T = 2 tokens
    bound = CorpusBound.from_estimates(estimates, tokens_per_block=2)
    assert bound.nats_per_token == pytest.approx(10 / 6)
    assert bound.standard_error == pytest.approx(statistics.stdev([1.0, 2.0, 2.0]) / math.sqrt(3))
    # within-block variances 2, 8, 0, each of a mean of 2 groups: sqrt((2 + 8 + 0) / 2) / (3 blocks x 2 tokens)
    assert bound.draw_standard_error == pytest.approx(math.sqrt(5) / 6)
    assert bound.to_dict()["standard_error"]["bits_per_token"] == pytest.approx(bound.standard_error / math.log(2))
    assert CorpusBound.from_estimates(estimates[:1, :1], 2).to_dict()["standard_error"] is None


def test_when_blocks_are_alike_the_standard_error_is_the_z_draw_noise(monkeypatch, tmp_path):
    noise_std, blocks, draws, block_size = 1.5, 200, 16, 16
    use_latent_model(monkeypatch, NoisyUniformLatentModel(noise_std=noise_std))
    record = likelihood.main(["fake", *CORPUS, "--block_size", str(block_size), "--num_z_samples", str(draws),
                              "--max_blocks", str(blocks), "--output", str(tmp_path / "r.json")])
    expected = noise_std / math.sqrt(draws * blocks) / block_size  # nats/token
    elbo = record["bounds"]["elbo"]
    assert elbo["standard_error"]["nats_per_token"] == pytest.approx(expected, rel=0.2)
    assert elbo["draw_standard_error"]["nats_per_token"] == pytest.approx(expected, rel=0.2)
    assert record["headline"]["standard_error"] == elbo["standard_error"]["bits_per_token"]
    assert f"± {elbo['standard_error']['bits_per_token']:.4f}" in likelihood.summary_line(record)


def test_corpus_bound_is_token_weighted():
    bound = CorpusBound(nats=10 * math.log(27), tokens=10)
    assert bound.bits_per_token == pytest.approx(LOG2_27)
    assert bound.perplexity == pytest.approx(27)


def test_character_blocks_are_non_overlapping_slices_of_the_split():
    text = load_text8("tiny-literary", "test")
    blocks = load_blocks("tiny-literary", "test", char_tokenizer(), block_size=100, max_blocks=3)
    assert blocks.indices == [0, len(text) // 100 // 3, 2 * (len(text) // 100) // 3]
    assert char_tokenizer().decode(blocks.take([1])[0].tolist()) == text[blocks.indices[1] * 100:][:100]
    assert blocks.counts()["dropped_tokens"] == len(text) % 100


def test_document_blocks_follow_each_document_with_eos():
    tokenizer = char_tokenizer(with_eos=True)
    first_document = load_openwebtext("tiny-literary", "validation")[0]["text"]
    length = len(tokenizer(first_document, add_special_tokens=False)["input_ids"])
    blocks = load_blocks("tiny-literary", "validation", tokenizer, block_size=length + 1)
    assert blocks.take([0])[0, -1].item() == tokenizer.eos_token_id


def test_latent_block_size_must_be_a_multiple_of_the_patch_size(monkeypatch):
    model = NoisyUniformLatentModel()
    model.config.patch_size = 4
    use_latent_model(monkeypatch, model)
    with pytest.raises(ValueError, match="patch_size 4"):
        likelihood.main(["fake", *CORPUS, "--block_size", "30"])


def test_report_reads_the_training_scripts_metrics_jsonl(tmp_path):
    from evaluation.training_logs import read_training_log

    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 10, "train/loss": 2.5, "train/bpc": 3.6}\n{"step": 100, "eval/loss": 2.4, "eval/bpc": 3.5}\n')
    curves = read_training_log(tmp_path)
    assert curves["bpc"] == [(10, 3.6)] and curves["eval_bpc"] == [(100, 3.5)]
