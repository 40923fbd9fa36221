"""Settings and start-up steps shared by the evaluation command lines.

Each command's settings are one dataclass whose fields are its flags (parsed with ``HfArgumentParser``, as training's
settings are) and whose ``__post_init__`` refuses values out of range, naming the flag, the value and what is
allowed; the evaluated model is the one positional argument. A setting left unset (None) takes its value from
``--protocol``: ``quick`` (minutes on a laptop CPU, a stated subset) or ``paper`` (the protocol of the paper's
Tables 2 and 6); a flag given explicitly always wins, and the result JSON records the value that was used.
"""

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from training.errors import SettingsError, UsageError  # one notion of "the user's to fix" for every command

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROTOCOLS = ("quick", "paper")
MODEL_HELP = ("the evaluated model: a saved TarFlowLM folder (config model_type 'tarflow') or a transformers causal "
              "LM (folder or Hub id) as the autoregressive baseline")


def require_at_least(settings, name: str, minimum: int) -> None:
    """Refuse ``--name`` below ``minimum``; None (unset: the protocol or the model decides) passes."""
    value = getattr(settings, name)
    if value is not None and not value >= minimum:
        raise SettingsError(f"--{name} {value}: must be >= {minimum}")


@dataclass(kw_only=True)
class EvaluationArguments:
    """The flags every evaluation command shares: how thorough, where the result goes, and how to run the model."""

    protocol: str = field(default="quick", metadata={"choices": PROTOCOLS, "help": "preset for every setting left "
                          "unset: 'quick' (minutes on a laptop CPU) or 'paper' (the paper's protocol, slow on a CPU)"})
    output: str | None = field(default=None, metadata={"help": "where to write the result JSON (default: a name "
                               "derived from the model under outputs/evaluation/)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    seed: int = field(default=0, metadata={"help": "seed of torch's global RNG (z draws, sampling, reference-block "
                      "choice)"})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu",
                        metadata={"help": "torch device (default: cuda when available, else cpu)"})
    dtype: str = field(default="float32", metadata={"choices": sorted(DTYPES), "help": "parameter dtype of the "
                       "loaded models (bounds are accumulated in float64 regardless)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run Python code that a model folder or Hub "
                                    "repository ships (config.json 'auto_map'), as transformers' flag: only for a "
                                    "source you trust. TarFlowLM folders load without it (the package's classes)"})

    def __post_init__(self):
        require_at_least(self, "batch_size", 1)
        check_device(self.device)
        if self.output is not None:
            check_output_path(self.output)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def check_device(device: str) -> None:
    """A device torch can name and this machine has, before any model is loaded onto it."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as error:
        raise SettingsError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from error
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        raise SettingsError(f"--device {device}: this machine has no {kind.upper()} device that torch can use; "
                            "pass --device cpu")


def check_output_path(output: str) -> None:
    """Where the result JSON goes must be writable now, not found out after the scoring or sampling."""
    path = Path(output)
    if path.is_dir():
        raise SettingsError(f"--output {output} is a folder; pass the JSON file to write")
    existing = next(parent for parent in [path.parent, *path.parent.parents] if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) or \
            (path.exists() and not os.access(path, os.W_OK)):
        raise SettingsError(f"--output {output} cannot be written ({existing} is not a writable folder)")


def parse_arguments(arguments_class, argv: list[str], prog: str, description: str):
    """``(model, settings)``: the positional model name and the flags as an ``arguments_class`` instance."""
    parser = HfArgumentParser(arguments_class, prog=prog, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help=MODEL_HELP)
    values = vars(parser.parse_args(argv))
    model = values.pop("model")
    return model, arguments_class(**values)


def run_command(main, argv: list[str] | None = None) -> int:
    """Run an evaluation's ``main``; a usage error is printed as one ``error:`` line (exit status 2, as argparse)."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def default_output_path(evaluation: str, *names: str) -> str:
    """``outputs/evaluation/<evaluation>_<names>.json`` with each name reduced to a file-name-safe stem."""
    stems = [re.sub(r"[^A-Za-z0-9.-]+", "-", name.rstrip("/").split("/")[-1]).strip("-") for name in names]
    return f"outputs/evaluation/{evaluation}_{'_'.join(stems)}.json"


def print_config(evaluation: str, config: dict) -> None:
    """Show the resolved settings before the run starts (they are also stored in the JSON)."""
    print(f"evaluation.{evaluation} config:\n{json.dumps(config, indent=2)}", flush=True)
