"""No code shipped with a model runs without consent: the evaluation commands load a folder's own Python code
(config.json ``auto_map``) only with ``--trust_remote_code``, off by default as in ``transformers``; a TarFlowLM
folder loads the installed package's classes without the flag, never the copy of the code saved beside it."""

import json

import pytest
import torch

from evaluation import generative, likelihood
from evaluation.cli import EvaluationArguments
from evaluation.loading import ModelUnavailableError, load_evaluated_model
from modeling_tarflow import TarFlowForCausalFlowLM
from tests.helpers.evaluation import char_tokenizer, save_causal_lm
from tests.helpers.modeling import tiny_config

PAYLOAD = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def folder_with_own_code(folder, marker) -> str:
    """A model folder whose config names its own module, which leaves `marker` behind when it is imported."""
    folder.mkdir()
    (folder / "evil_code.py").write_text(PAYLOAD.format(marker=str(marker)) + (
        "from transformers import PretrainedConfig\n\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "evil_code.EvilConfig",
                                           "AutoModelForCausalLM": "evil_code.EvilModel"}}))
    return str(folder)


@pytest.mark.parametrize("command, flags", [(likelihood.main, ["--data", "tiny-literary"]), (generative.main, [])],
                         ids=["likelihood", "generative"])
def test_a_folders_own_code_is_not_run_without_the_flag(command, flags, tmp_path):
    marker = tmp_path / "ran.txt"
    folder = folder_with_own_code(tmp_path / "model", marker)
    with pytest.raises(ModelUnavailableError, match="--trust_remote_code"):
        command([folder, *flags, "--output", str(tmp_path / "out.json")])
    assert not marker.exists()


def test_the_flag_is_off_by_default_and_lets_the_code_run(tmp_path):
    assert EvaluationArguments().trust_remote_code is False
    marker = tmp_path / "ran.txt"
    folder = folder_with_own_code(tmp_path / "model", marker)
    with pytest.raises(Exception):  # the code ran, then found no model class: it is only a payload
        load_evaluated_model(folder, trust_remote_code=True)
    assert marker.read_text() == "ran"


def test_a_tarflow_folder_loads_the_packages_classes_without_the_flag(tmp_path):
    folder = tmp_path / "tarflow"
    save_causal_lm(TarFlowForCausalFlowLM(tiny_config(vocab_size=27)).eval(), char_tokenizer(), folder)
    marker = tmp_path / "ran.txt"
    for copied in folder.glob("*.py"):  # the code saved beside the weights is never what runs
        copied.write_text(PAYLOAD.format(marker=str(marker)) + copied.read_text())
    loaded = load_evaluated_model(str(folder))
    assert type(loaded.model) is TarFlowForCausalFlowLM and loaded.is_latent
    assert not marker.exists()
    assert loaded.model(input_ids=torch.zeros(1, 4, dtype=torch.long)).nelbo.isfinite().all()
