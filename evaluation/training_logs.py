"""Training curves from a run's logs, as ``{metric: [(step, value), ...]}`` sorted by step.

Accepted sources:

- ``metrics.jsonl`` (written by ``training/run.py``) or ``training_log.jsonl``: one JSON object per line with
  ``step`` and numeric metrics; the training script's ``train/<name>`` keys become ``<name>`` and its
  ``eval/<name>`` keys ``eval_<name>`` (``loss``, ``bpc``, ``tokens_per_second``; ``eval_bpc`` at evaluation steps);
- a CSV file with a ``step`` column and one column per metric (empty cells are skipped);
- TensorBoard event files (a folder holding ``events.out.tfevents.*``, or one such file); scalar tags keep their
  names (``train/loss``), and a metric name also matches a tag ending in ``/<name>``;
- a run folder: its ``metrics.jsonl`` or ``training_log.jsonl`` if present, else its event files.

``training/run.py`` also logs ``stage/index`` where each progressive stage after the first starts (§3.3;
`stage_starts`), and writes ``results.json`` beside the log (`run_summary`). `early_plateau` finds the stretch where
a small character model's loss stays near the bigram level before its attention learns to look further back
(docs/results.md).
"""

import csv
import json
from collections import defaultdict
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
"""The run's summary that ``training/run.py`` writes at the end: model, steps, training seconds, validation."""
"""What ``training/run.py`` logs to (``training.trainer.JsonLinesTracker``): one JSON object per line."""
TRAINING_LOG_NAMES = (METRICS_FILE, "training_log.jsonl")
LOGGED_PREFIXES = {"train/": "", "eval/": "eval_"}  # training/run.py's accelerator.log keys → curve names
EVENT_FILE_GLOB = "events.out.tfevents.*"

Curves = dict[str, list[tuple[int, float]]]


def add_row(curves: defaultdict, row: dict) -> None:
    """Add the numeric fields of one logged row (its ``step`` is the x value)."""
    step = int(float(row["step"]))
    for name, value in row.items():
        for prefix, replacement in LOGGED_PREFIXES.items():
            if name.startswith(prefix):
                name = replacement + name[len(prefix):]
        if name == "step" or value in (None, ""):
            continue
        try:
            curves[name].append((step, float(value)))
        except (TypeError, ValueError):  # text fields (a run name, a phase) are not curves
            continue


def sorted_curves(curves: defaultdict) -> Curves:
    return {name: sorted(points) for name, points in curves.items()}


def read_metrics(path) -> dict[int, dict]:
    """step → the last values logged at that step, keys as logged (``train/loss``, ``eval/bpc`` ...), of a JSON-lines
    log or of a run folder's ``metrics.jsonl`` (empty when there is none). A step logged twice (before and after a
    resume) keeps its last values."""
    path = Path(path)
    path = path / METRICS_FILE if path.is_dir() else path
    by_step: dict[int, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines() if path.is_file() else [], 1):
        if line.strip():
            try:
                record = json.loads(line)
                by_step.setdefault(int(record.pop("step")), {}).update(record)
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise ValueError(f"{path} line {number} is not a JSON object with a 'step': {line[:80]!r}") \
                    from error
    return by_step


def read_jsonl_log(path: Path) -> Curves:
    curves = defaultdict(list)
    for step, row in read_metrics(path).items():
        add_row(curves, {"step": step, **row})
    return sorted_curves(curves)


def read_csv_log(path: Path) -> Curves:
    curves = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            add_row(curves, row)
    return sorted_curves(curves)


def read_tensorboard_log(path: Path) -> Curves:
    """Scalars of TensorBoard event files (needs the ``tensorboard`` package)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as error:
        raise ImportError(f"reading TensorBoard logs ({path}) needs `pip install tensorboard`") from error
    files = sorted(path.glob(EVENT_FILE_GLOB)) if path.is_dir() else [path]
    curves = defaultdict(list)
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})  # 0 = keep every point
        events.Reload()
        for tag in events.Tags()["scalars"]:
            curves[tag].extend((event.step, event.value) for event in events.Scalars(tag))
    return sorted_curves(curves)


def read_training_log(path) -> Curves:
    """Curves of one run from any accepted source (see the module docstring)."""
    path = Path(path)
    logs = [path / name for name in TRAINING_LOG_NAMES if path.is_dir() and (path / name).is_file()]
    if logs:
        return read_jsonl_log(logs[0])
    if (path.is_dir() and any(path.glob(EVENT_FILE_GLOB))) or path.name.startswith("events.out.tfevents"):
        return read_tensorboard_log(path)
    if path.suffix == ".jsonl":
        return read_jsonl_log(path)
    if path.suffix == ".csv":
        return read_csv_log(path)
    raise ValueError(f"no training log found at {path}: expected {' or '.join(TRAINING_LOG_NAMES)}, a .jsonl or .csv file, or "
                     "TensorBoard event files")


def find_curve(curves: Curves, metric: str) -> list[tuple[int, float]] | None:
    """The curve named ``metric``, or a TensorBoard tag ending in ``/metric``."""
    if metric in curves:
        return curves[metric]
    matches = [points for tag, points in curves.items() if tag.endswith("/" + metric)]
    return matches[0] if matches else None


def stage_starts(curves: Curves) -> list[tuple[int, int]]:
    """(step, stage number from 1) where each progressive stage started, as logged by ``training/run.py``."""
    return [(step, int(index)) for step, index in find_curve(curves, "stage/index") or []]


def smoothed(values: list[float], width: int) -> list[float]:
    """Centred running mean over ``width`` points (fewer at the ends)."""
    half = width // 2
    return [sum(values[max(0, i - half):i + half + 1]) / len(values[max(0, i - half):i + half + 1])
            for i in range(len(values))]


def early_plateau(points: list[tuple[int, float]], max_fall: float = 0.01, per_steps: int = 100,
                  min_points: int = 5) -> tuple[int, int] | None:
    """(first step, last step) of the first stretch of a loss curve where, after a faster fall, the smoothed loss
    falls by less than ``max_fall`` of its value per ``per_steps`` steps for at least ``min_points`` logged points
    in a row; None when there is no such stretch (or fewer than ``3 * min_points`` points).

    A small character transformer drops quickly to the bigram level, stays near it until its attention learns to
    read further back, then falls again (docs/results.md): a run on that stretch is not stuck."""
    if max_fall <= 0 or per_steps <= 0 or min_points < 2:
        raise ValueError(f"max_fall ({max_fall}) and per_steps ({per_steps}) must be > 0 and min_points "
                         f"({min_points}) >= 2")
    if len(points) < 3 * min_points:
        return None
    steps, values = [step for step, _ in points], smoothed([value for _, value in points], min_points)
    falls = [(values[i - 1] - values[i + 1]) / values[i] * per_steps / (steps[i + 1] - steps[i - 1])
             for i in range(1, len(points) - 1)]
    flat = [fall < max_fall for fall in falls]
    start = next((i for i in range(1, len(flat)) if flat[i] and not flat[i - 1]), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(flat)) if not flat[i]), len(flat))
    return (steps[start + 1], steps[end]) if end - start >= min_points else None


def run_summary(folder) -> dict | None:
    """A run folder's ``results.json`` (None when the folder has none)."""
    path = Path(folder) / RESULTS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def baseline_folder(folder) -> Path | None:
    """The GPT-2 baseline run beside a TarFlowLM run folder (``outputs/quickstart-gpt2`` beside
    ``outputs/quickstart-tarflow``, as ``--model gpt2`` names it), when it holds a finished run."""
    folder = Path(folder)
    if not folder.name.endswith("-tarflow"):
        return None
    sibling = folder.with_name(folder.name.removesuffix("-tarflow") + "-gpt2")
    return sibling if (sibling / RESULTS_FILE).is_file() else None
