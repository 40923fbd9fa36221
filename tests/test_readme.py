"""The README's two set-up commands are what a newcomer runs, and CI runs the test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_commands():
    section = ROOT.joinpath("README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands_each_pinning_torch():
    commands = setup_commands()
    assert len(commands) == 2 and all("\n" not in command for command in commands)
    assert all(command.startswith("pip install torch==2.13.0 ") for command in commands)


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = setup_commands()[1]
    assert "pytest" in test_command
    ci_lines = ROOT.joinpath(".ci", "run").read_text().splitlines()
    assert test_command in ci_lines
