"""Flags and start-up steps shared by the evaluation command lines."""

import argparse
import json
import re

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluated model and how to run it: the same flags in every evaluation command."""
    parser.add_argument("model", help="the evaluated model: a saved TarFlowLM folder (config model_type 'tarflow') "
                        "or a transformers causal LM (folder or Hub id) as the autoregressive baseline")
    parser.add_argument("--output", default=None, help="where to write the result JSON (default: a name derived "
                        "from the model under outputs/evaluation/)")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch's global RNG (z draws, sampling, "
                        "reference-block choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="parameter dtype of the loaded models (bounds are accumulated in float64 regardless)")


def default_output_path(evaluation: str, *names: str) -> str:
    """``outputs/evaluation/<evaluation>_<names>.json`` with each name reduced to a file-name-safe stem."""
    stems = [re.sub(r"[^A-Za-z0-9.-]+", "-", name.rstrip("/").split("/")[-1]).strip("-") for name in names]
    return f"outputs/evaluation/{evaluation}_{'_'.join(stems)}.json"


def print_config(evaluation: str, config: dict) -> None:
    """Show the resolved settings before the run starts (they are also stored in the JSON)."""
    print(f"evaluation.{evaluation} config:\n{json.dumps(config, indent=2)}", flush=True)
