"""Where `accelerator.log` goes: TensorBoard when installed, and always a machine-readable ``metrics.jsonl``."""

import importlib.util
import json
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process

METRICS_FILE = "metrics.jsonl"


class JsonLinesTracker(GeneralTracker):
    """An Accelerate tracker writing one JSON object per `accelerator.log` call: ``{"step": n, name: value, ...}``.

    Appends, so a resumed run continues the same file (a step logged twice, before and after a kill, keeps both
    lines; readers take the last one)."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | Path):
        super().__init__()
        self.path = Path(logging_dir) / METRICS_FILE

    @on_main_process
    def start(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict):
        (self.path.parent / "tracker_config.json").write_text(json.dumps(values, indent=2, default=str))

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        with self.path.open("a") as stream:
            stream.write(json.dumps({"step": step, **values}) + "\n")


def trackers(report_to: str, output_dir: str | Path) -> list:
    """The `log_with` list: the JSON-lines tracker, plus TensorBoard if asked for and importable."""
    chosen = [JsonLinesTracker("metrics", output_dir)]
    if report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is not None:
        chosen.append("tensorboard")
    elif report_to not in ("tensorboard", "none"):
        raise ValueError(f"--report_to must be 'tensorboard' or 'none', got {report_to!r}")
    return chosen


def hyperparameters(values: dict) -> dict:
    """Settings as TensorBoard's hparams accept them: scalars as they are, anything else as JSON text."""
    return {name: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            for name, value in values.items()}


def read_metrics(output_dir: str | Path) -> dict[int, dict]:
    """step → the last values logged at that step (with ``train/loss``, ``eval/bpc`` ... as keys)."""
    by_step: dict[int, dict] = {}
    path = Path(output_dir) / METRICS_FILE
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        by_step.setdefault(record.pop("step"), {}).update(record)
    return by_step
