"""Where `accelerator.log` goes: TensorBoard when installed, and always a machine-readable ``metrics.jsonl``."""

import importlib.util
import json
import warnings
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process

from training.errors import SettingsError
from training.validation import loss_metrics

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


class TrainingLog:
    """What one log line reports: means of the loss and gradient norm since the previous line, and tokens per
    second over the time spent in optimizer steps (validation and checkpoints excluded)."""

    def __init__(self, characters: bool, tokens_per_step: int):
        self.characters, self.tokens_per_step = characters, tokens_per_step
        self.losses, self.grad_norms, self.seconds = [], [], 0.0
        self.total_seconds, self.total_steps = 0.0, 0  # in this process, since it started or resumed

    def add(self, loss: float, grad_norm: float, seconds: float) -> None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        self.seconds += seconds
        self.total_seconds += seconds
        self.total_steps += 1

    @property
    def tokens_per_second(self) -> float | None:
        return self.total_steps * self.tokens_per_step / self.total_seconds if self.total_steps else None

    def flush(self, learning_rate: float, stage: int, skipped_steps: int) -> dict:
        steps, seconds = len(self.losses), max(self.seconds, 1e-9)
        named = loss_metrics(sum(self.losses) / steps, self.characters)
        metrics = {**{f"train/{name}": value for name, value in named.items()},
                   "train/grad_norm": sum(self.grad_norms) / steps, "train/learning_rate": learning_rate,
                   "train/stage": stage, "train/tokens_per_second": steps * self.tokens_per_step / seconds,
                   "train/skipped_steps": skipped_steps}
        self.losses, self.grad_norms, self.seconds = [], [], 0.0
        return metrics

    def postfix(self, metrics: dict) -> dict:
        """The progress bar's loss, BPC (characters) or perplexity, and tokens per second."""
        quality = {"bpc": f"{metrics['train/bpc']:.3f}"} if self.characters else \
            {"ppl": f"{metrics['train/ppl']:.2f}"}
        return {"loss": f"{metrics['train/loss']:.4f}", **quality,
                "tok/s": f"{metrics['train/tokens_per_second']:.0f}"}


def trackers(report_to: str, output_dir: str | Path) -> list:
    """The `log_with` list: the JSON-lines tracker, plus TensorBoard if asked for and importable."""
    if report_to not in ("tensorboard", "none"):
        raise SettingsError(f"--report_to must be 'tensorboard' or 'none', got {report_to!r}")
    chosen = [JsonLinesTracker("metrics", output_dir)]
    if report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        warnings.warn("--report_to tensorboard: tensorboard is not installed, so only metrics.jsonl is written "
                      "(pip install tensorboard, or pass --report_to none)", UserWarning, stacklevel=2)
    elif report_to == "tensorboard":
        chosen.append("tensorboard")
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
