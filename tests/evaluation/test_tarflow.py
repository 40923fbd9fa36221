"""The harness on a real (tiny, random) TarFlowLM saved to a folder and loaded back through the Auto classes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from evaluation import generative, likelihood
from evaluation.corpus import load_blocks
from tests.helpers.evaluation import char_tokenizer, save_causal_lm, tiny_gpt2
from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM

BLOCK_SIZE, MAX_BLOCKS = 32, 12


@pytest.fixture(scope="module")
def tarflow_folder(tmp_path_factory):
    """A character TarFlowLM (V = 27, patches of 2) with random weights, saved with its tokenizer."""
    config = TarFlowConfig(vocab_size=27, latent_dim=3, patch_size=2, hidden_size=32, num_attention_heads=2,
                           max_position_embeddings=BLOCK_SIZE, maf_hidden_size=16,
                           flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": 1},
                                        {"coupling": "mixture_cdf", "num_mixtures": 3, "num_layers": 1}])
    torch.manual_seed(0)
    model = TarFlowForCausalFlowLM(config).eval()
    with torch.no_grad():  # move the zero-initialised flow heads off the identity
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return save_causal_lm(model, char_tokenizer(), tmp_path_factory.mktemp("tarflow") / "tiny-tarflow")


def test_harness_nelbo_equals_the_models_own_nelbo_on_the_same_blocks(tarflow_folder, tmp_path):
    record = likelihood.main([tarflow_folder, "--data", "tiny-literary", "--max_blocks", str(MAX_BLOCKS),
                              "--num_z_samples", "1", "--iw_k", "1", "--batch_size", "5",
                              "--output", str(tmp_path / "l.json")])
    model = TarFlowForCausalFlowLM.from_pretrained(tarflow_folder).eval()
    blocks = load_blocks("tiny-literary", "test", char_tokenizer(), BLOCK_SIZE, MAX_BLOCKS)
    torch.manual_seed(0)  # the CLI's --seed, set just before scoring
    with torch.no_grad():
        nats = sum(model(input_ids=batch).nelbo.double().sum().item() for batch in blocks.batches(5))
    assert record["model"]["model_type"] == "tarflow" and record["headline"]["is_upper_bound"]
    assert record["bounds"]["elbo"]["nats"] == pytest.approx(nats, rel=1e-6)
    assert record["counts"]["scored_tokens"] == MAX_BLOCKS * BLOCK_SIZE


def test_importance_weighting_tightens_the_tarflow_bound(tarflow_folder, tmp_path):
    record = likelihood.main([tarflow_folder, "--data", "tiny-literary", "--max_blocks", str(MAX_BLOCKS),
                              "--num_z_samples", "8", "--iw_k", "1", "2", "8", "--output", str(tmp_path / "l.json")])
    bits = [record["bounds"][name]["bits_per_token"] for name in ("elbo", "iw_k2", "iw_k8")]
    assert bits[0] > bits[1] > bits[2]


def test_tarflow_samples_are_scored_for_gen_ppl_and_entropy(tarflow_folder, tmp_path):
    reference = save_causal_lm(tiny_gpt2(), char_tokenizer(), tmp_path / "reference")
    record = generative.main([tarflow_folder, "--num_samples", "6", "--batch_size", "3", "--reference_model",
                              reference, "--metrics", "gen_ppl", "entropy", "--output", str(tmp_path / "g.json")])
    texts = record["samples"]["texts"]
    assert len(texts) == 6 and all(len(text) == BLOCK_SIZE for text in texts)
    assert record["samples"]["gen_ppl"]["tokens"] == 6 * (BLOCK_SIZE - 1)  # no EOS in a 27-symbol vocabulary
    assert 0 < record["summary"]["entropy"] <= torch.log(torch.tensor(27.0)).item()
