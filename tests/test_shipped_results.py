"""The shipped results that the README and docs quote as the quickstart model's still describe the current
``quickstart`` preset: each records the parameter count of a model built from that preset, and its context.

A preset edited without rerunning the commands beside the quoted numbers fails here, naming the file to regenerate.
"""

import json

import pytest
import torch

from tests.helpers import REPO
from training.arguments import load_preset
from training.recipes import build_baseline, build_tarflow_config
from training.tokenization_char import build_char_tokenizer
from modeling_tarflow import TarFlowForCausalFlowLM

RESULTS = REPO / "bench" / "results"
REGENERATE = {
    "eval_quickstart_quick": "the README's two evaluation commands (Evaluate), copied here",
    "eval_quickstart": "bash bench/evaluate_quickstart.sh",
    "likelihood_study_quickstart": "python -m bench.likelihood_study --claim quickstart",
    "sampling_quickstart": "python -m bench.sampling --model_folder outputs/quickstart-tarflow/model ...",
    "sampling_operations": "python -m bench.sampling --model_folder outputs/quickstart-tarflow/model --count_ops ...",
}


def preset_parameter_count(preset: str, model: str) -> int:
    """Parameters of the model `training/run.py --config <preset> [--model gpt2]` builds (on the meta device)."""
    settings = load_preset(preset)
    config = build_tarflow_config(settings.get("model_config") or {}, build_char_tokenizer(), settings["block_size"])
    with torch.device("meta"):
        built = TarFlowForCausalFlowLM(config) if model == "tarflow" else build_baseline(config, build_char_tokenizer())
    return sum(parameter.numel() for parameter in built.parameters())


def recorded(name: str) -> list[tuple[str, int, int | None]]:
    """(model kind, parameter count, context in tokens or None) that a quoted result file records."""
    record = json.loads(RESULTS.joinpath(f"{name}.json").read_text())
    if name.startswith("eval_quickstart"):
        context = record["counts"]["block_size"] if record["evaluation"] == "likelihood" else \
            record["config"]["sample_length"]
        return [(record["model"]["model_type"], record["model"]["num_parameters"], context)]
    if name.startswith("likelihood_study"):
        return [("gpt2" if "gpt2" in run["flags"] else "tarflow", run["num_parameters"], None)
                for run in record["runs"]]
    return [("tarflow", record["parameters"]["tarflow_trained_P1"], None)]


QUOTED = sorted(path.stem for path in RESULTS.glob("*.json")
                if any(path.stem.startswith(prefix) for prefix in REGENERATE))


def test_every_quoted_quickstart_result_is_checked():
    assert {"eval_quickstart_quick_tarflow_likelihood", "eval_quickstart_quick_tarflow_generative"} <= set(QUOTED)
    assert {"likelihood_study_quickstart", "sampling_operations", "sampling_quickstart"} <= set(QUOTED)


@pytest.mark.parametrize("name", QUOTED)
def test_a_quoted_result_describes_the_current_quickstart_preset(name):
    block_size = load_preset("quickstart")["block_size"]
    command = next(command for prefix, command in REGENERATE.items() if name.startswith(prefix))
    for model, parameters, context in recorded(name):
        expected = preset_parameter_count("quickstart", model)
        assert parameters == expected, (f"bench/results/{name}.json records a {model} of {parameters:,} "
                                        f"parameters, the quickstart preset builds {expected:,}: rerun `{command}`")
        assert context in (None, block_size), (f"bench/results/{name}.json used {context}-token blocks, the "
                                               f"preset's context is {block_size}: rerun `{command}`")
