"""TarFlowLM's model code as it was at another commit, importable beside the current code, so that a benchmark times
the code before a change against the code after it in one run, interleaved (same machine, same load, same weights).

    before = model_code_at("9651dcc")
    old_model = before.TarFlowForCausalFlowLM(before.TarFlowConfig.from_dict(model.config.to_dict()))
    old_model.load_state_dict(model.state_dict())
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def model_code_at(commit: str) -> ModuleType:
    """`modeling_tarflow` at `commit`, as the package `modeling_tarflow_at_<commit>` (the current package keeps its
    auto-class registrations)."""
    name = f"modeling_tarflow_at_{commit}"
    if name in sys.modules:
        return sys.modules[name]
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "modeling_tarflow"], cwd=REPO,
                             capture_output=True, check=True).stdout
    root = Path(tempfile.mkdtemp(prefix="tarflow-code-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    (root / "modeling_tarflow").rename(root / name)
    sys.path.insert(0, str(root))
    module = importlib.import_module(name)
    importlib.reload(importlib.import_module("modeling_tarflow"))     # the current classes stay the auto classes
    return module


def same_model_at(commit: str, model):
    """A copy of the TarFlowLM `model` (same config, same weights) built by the code at `commit`."""
    code = model_code_at(commit)
    copy = code.TarFlowForCausalFlowLM(code.TarFlowConfig.from_dict(model.config.to_dict()))
    copy.load_state_dict(model.state_dict())
    return copy.to(model.device).train(model.training)


__all__ = ["model_code_at", "same_model_at"]
