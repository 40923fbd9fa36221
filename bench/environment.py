"""What every benchmark JSON records about where it ran, and the helpers they share to time and write results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from evaluation.records import git, machine

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def describe_environment() -> dict:
    """Machine, library versions and git commit, so a figure can be traced to what produced it."""
    import transformers

    return {
        **machine(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def median_seconds(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs (the median resists other load)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def write_result(name: str, payload: dict, directory: Path | str = RESULTS_DIR) -> Path:
    """Write `payload` (plus the environment) to <directory>/<name>.json (default bench/results/) and return the
    path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"environment": describe_environment(), **payload}, indent=2) + "\n")
    return path
