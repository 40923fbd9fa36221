"""Run records: the machine, library versions, command line and time stamp that every evaluation JSON carries
(the machine part is shared with the benchmarks, ``bench/environment.py``)."""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

RECORDED_PACKAGES = ("torch", "transformers", "tokenizers", "mauve-text", "faiss-cpu", "scikit-learn", "gguf")


def package_versions(names=RECORDED_PACKAGES) -> dict:
    """Installed version of each distribution, None when it is not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git(*arguments: str) -> str | None:
    """The output of a git command run in this checkout; None outside a checkout or without git."""
    try:
        return subprocess.run(["git", *arguments], cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    """The machine a figure was computed on, as every evaluation and benchmark JSON records it."""
    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def environment() -> dict:
    """Where and with what a result was computed: enough to tell two runs apart when their numbers differ."""
    return {
        **machine(),
        "platform": platform.platform(),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
        "versions": package_versions(),
        "code_version": git("describe", "--always", "--dirty"),
    }


def run_header(evaluation: str, argv: list, config: dict) -> dict:
    """The fields every evaluation JSON starts with; ``evaluation`` names the kind of result for the report."""
    return {
        "evaluation": evaluation,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", f"evaluation.{evaluation}", *argv]),
        "config": config,
        "environment": environment(),
    }


def write_json(record: dict, path) -> Path:
    """Write ``record`` as indented UTF-8 JSON, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
