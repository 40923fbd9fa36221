"""Evaluation settings: every flag value is checked (the message names the flag, the value and what is allowed), the
``--protocol`` presets resolve as documented, and the JSON records only the settings that were used."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from evaluation import generative, likelihood
from evaluation.loading import LoadedModel, ModelUnavailableError, load_evaluated_model
from tests.helpers.evaluation import NoisyUniformLatentModel, char_tokenizer

CORPUS = ["--data", "tiny-literary", "--split", "test"]


@pytest.fixture
def latent_model(monkeypatch):
    """The CLIs load a fake latent model (exact likelihood 27^-T) whatever name they are given."""
    loaded = LoadedModel(NoisyUniformLatentModel(noise_std=1.0, max_length=64), char_tokenizer(), source="fake",
                         path="fake", label="uniform-latent")
    for module in (likelihood, generative):
        monkeypatch.setattr(module, "load_evaluated_model", lambda *args, **kwargs: loaded)
    return loaded


@pytest.mark.parametrize("flag, value, allowed", [
    ("--num_z_samples", "0", ">= 1"), ("--block_size", "0", ">= 1"), ("--max_blocks", "0", ">= 1"),
    ("--batch_size", "0", ">= 1"), ("--iw_k", "0", ">= 1"), ("--block_size", "65", "<= 64"),
    ("--iw_k", "3", "divide --num_z_samples 8"),
])
def test_likelihood_refuses_a_value_out_of_range_naming_flag_value_and_range(latent_model, tmp_path, flag, value,
                                                                             allowed):
    with pytest.raises(ValueError) as error:
        likelihood.main(["fake", *CORPUS, flag, value, "--output", str(tmp_path / "r.json")])
    assert f"{flag} {value}" in str(error.value) and allowed in str(error.value)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("flag, value, allowed", [
    ("--num_samples", "0", ">= 1"), ("--batch_size", "0", ">= 1"), ("--sample_length", "0", ">= 1"),
    ("--sample_length", "65", "<= 64"), ("--temperature", "0", "> 0"), ("--top_p", "1.5", "(0, 1]"),
    ("--reference_context_size", "1", ">= 2"), ("--retokenize_max_length", "-1", ">= 0"),
    ("--mauve_num_buckets", "0", ">= 1"),
])
def test_generative_refuses_a_value_out_of_range_naming_flag_value_and_range(latent_model, tmp_path, flag, value,
                                                                             allowed):
    with pytest.raises(ValueError) as error:
        generative.main(["fake", flag, value, "--metrics", "entropy", "--output", str(tmp_path / "g.json")])
    assert f"{flag} {value}" in str(error.value) and allowed in str(error.value)


def test_the_record_holds_the_z_draws_and_blocks_that_were_used(latent_model, tmp_path):
    record = likelihood.main(["fake", *CORPUS, "--block_size", "32", "--max_blocks", "3", "--num_z_samples", "2",
                              "--iw_k", "1", "2", "--output", str(tmp_path / "r.json")])
    config = record["config"]
    assert (config["num_z_samples"], config["iw_k"], config["block_size"], config["max_blocks"]) == (2, [1, 2], 32, 3)
    assert record["counts"]["blocks"] == 3 and record["counts"]["scored_tokens"] == 3 * 32


def test_quick_protocol_is_the_default_and_scores_a_stated_subset(latent_model, tmp_path):
    record = likelihood.main(["fake", *CORPUS, "--block_size", "32", "--output", str(tmp_path / "r.json")])
    config = record["config"]
    assert config["protocol"] == "quick"
    assert (config["max_blocks"], config["num_z_samples"], config["iw_k"]) == (128, 8, [1, 8])
    assert record["counts"]["blocks"] == 128 < record["counts"]["blocks_in_split"]
    assert any("128 of" in note for note in record["protocol_notes"])


def test_paper_protocol_scores_the_whole_split_with_64_draws(latent_model, tmp_path):
    record = likelihood.main(["fake", *CORPUS, "--protocol", "paper", "--output", str(tmp_path / "r.json")])
    config = record["config"]
    assert (config["max_blocks"], config["num_z_samples"], config["iw_k"]) == (None, 64, [1, 8, 64])
    assert config["block_size"] == 64  # the model's context
    assert record["counts"]["blocks"] == record["counts"]["blocks_in_split"]
    assert set(record["bounds"]) == {"elbo", "iw_k8", "iw_k64"}


def test_an_explicit_flag_overrides_the_protocol(latent_model, tmp_path):
    record = likelihood.main(["fake", *CORPUS, "--protocol", "paper", "--max_blocks", "5", "--num_z_samples", "4",
                              "--output", str(tmp_path / "r.json")])
    assert (record["config"]["max_blocks"], record["config"]["num_z_samples"], record["config"]["iw_k"]) == (5, 4, [1])


def test_a_split_shorter_than_one_block_is_a_data_error_naming_split_and_sizes():
    from evaluation.corpus import load_blocks
    from training.errors import DataError

    with pytest.raises(DataError, match="test split of 'tiny-literary' has .* fewer than one block of 10000000"):
        load_blocks("tiny-literary", "test", char_tokenizer(), block_size=10_000_000)


def test_generative_protocols():
    quick = generative.protocol_settings(generative.GenerativeArguments())
    paper = generative.protocol_settings(generative.GenerativeArguments(protocol="paper"))
    assert quick["num_samples"] < 100 and quick["reference_model"] == quick["featurizer"] == "smollm2-135m"
    assert paper == {"num_samples": 5000, "reference_model": "gpt2-large", "featurizer": "gpt2-large"}
    explicit = generative.protocol_settings(generative.GenerativeArguments(protocol="paper", num_samples=7,
                                                                           reference_model="x"))
    assert explicit == {"num_samples": 7, "reference_model": "x", "featurizer": "x"}


@pytest.mark.parametrize("name", ["/no/such/tarflow-model", "./not-trained-yet", "outputs-that-exist/model"])
def test_a_model_folder_that_does_not_exist_is_reported_as_such(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs-that-exist").mkdir()
    with pytest.raises(ModelUnavailableError, match="does not exist") as error:
        load_evaluated_model(name)
    assert "Repo id" not in str(error.value)


def test_a_folder_without_config_json_is_not_a_saved_model(tmp_path):
    with pytest.raises(ModelUnavailableError, match="config.json"):
        load_evaluated_model(str(tmp_path))


def test_the_command_line_prints_a_usage_error_in_one_line_and_exits_2(latent_model, capsys):
    from evaluation.cli import run_command

    assert run_command(likelihood.main, ["fake", *CORPUS, "--num_z_samples", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --num_z_samples 0") and "Traceback" not in error
