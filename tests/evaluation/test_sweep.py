"""``python -m evaluation.generative MODEL --sweep NAME VALUE...``: one JSON row per setting and a PNG of Gen-PPL
against entropy, for a TarFlowLM folder and a causal-LM baseline folder alike."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import pytest
import torch

from evaluation import generative
from evaluation.cli import SettingsError
from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM
from tests.helpers.evaluation import char_tokenizer, save_causal_lm, tiny_gpt2


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return save_causal_lm(tiny_gpt2(), char_tokenizer(), tmp_path_factory.mktemp("reference") / "lm")


@pytest.fixture(scope="module")
def tarflow_folder(tmp_path_factory):
    """A character TarFlowLM whose Mix-d first layer has π_t ∝ exp(−0.3 k) (informative by construction)."""
    config = TarFlowConfig(vocab_size=27, latent_dim=3, patch_size=2, hidden_size=32, num_attention_heads=2,
                           max_position_embeddings=16, maf_hidden_size=16,
                           flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": 1},
                                        {"coupling": "affine", "num_layers": 1}])
    torch.manual_seed(0)
    model = TarFlowForCausalFlowLM(config).eval()
    with torch.no_grad():
        model.flow.layers[0].coupling.head.bias.copy_(-0.3 * torch.arange(27.0).repeat(2))
        model.codebook.mu.mul_(10.0)
        model.codebook.log_sigma.fill_(-2.0)
    return save_causal_lm(model, char_tokenizer(), tmp_path_factory.mktemp("tarflow") / "tarflow")


def sweep(folder, reference, tmp_path, *setting):
    output = tmp_path / "sweep.json"
    result = generative.main([folder, "--num_samples", "16", "--sample_length", "16", "--batch_size", "16",
                              "--reference_model", reference, "--metrics", "gen_ppl", "entropy", "--sweep",
                              *setting, "--output", str(output)])
    assert json.loads(output.read_text())["rows"] == result["rows"]
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    return [row["entropy"] for row in result["rows"]], result["rows"]


def test_a_top_p_sweep_of_tarflow_lowers_entropy_row_by_row(tarflow_folder, reference, tmp_path):
    entropies, rows = sweep(tarflow_folder, reference, tmp_path, "top_p", "1.0", "0.7", "0.4")
    assert [row["top_p"] for row in rows] == [1.0, 0.7, 0.4]
    assert entropies[0] > entropies[1] > entropies[2]
    assert all(row["gen_ppl"] > 1 and len(row["examples"]) == 2 for row in rows)


def test_a_temperature_sweep_of_a_causal_lm_raises_entropy_with_temperature(reference, tmp_path):
    lm = save_causal_lm(tiny_gpt2(vocab_size=28, bos_token_id=27, init_std=0.5), char_tokenizer(with_eos=True),
                        tmp_path / "lm")
    entropies, rows = sweep(lm, reference, tmp_path, "temperature", "0.3", "3.0")
    assert [row["temperature"] for row in rows] == [0.3, 3.0] and entropies[0] < entropies[1] - 0.3


def test_a_sweep_of_an_unknown_setting_is_a_usage_error(tarflow_folder):
    with pytest.raises(SettingsError, match="NAME one of"):
        generative.main([tarflow_folder, "--sweep", "top_k", "1", "2"])
