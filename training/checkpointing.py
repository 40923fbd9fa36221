"""Resumable checkpoints: `accelerator.save_state` into a temporary folder, renamed into place when complete.

A folder named ``checkpoint-<step>`` is therefore always whole: a run killed while saving leaves only a
``.tmp-checkpoint-<step>`` folder, which resuming ignores and the next save clears. (Accelerate's own automatic
checkpoint naming writes in place, so it cannot give this guarantee; its ``total_limit`` pruning is replaced by
`prune_checkpoints` here.) Several processes must share the output folder's file system.
"""

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
TEMPORARY_PREFIX = ".tmp-"


@dataclass
class TrainingProgress:
    """Where training stands, beyond what `save_state` records itself (weights, optimizer, RNGs, sampler epoch):
    optimizer steps taken (skipped non-finite steps included), the data position in micro-batches, the stage."""

    step: int = 0
    micro_batches: int = 0
    stage: int = 0
    skipped_steps: int = 0
    tokens: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The whole checkpoints of a run, oldest first."""
    root = checkpoints_root(output_dir)
    found = [path for path in root.iterdir() if path.is_dir() and CHECKPOINT_PATTERN.fullmatch(path.name)] \
        if root.is_dir() else []
    return sorted(found, key=lambda path: int(CHECKPOINT_PATTERN.fullmatch(path.name).group(1)))


def find_resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """``None``: start fresh; ``"latest"``: the newest whole checkpoint of `output_dir` (None if there is none);
    anything else: that checkpoint folder, which must exist."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = complete_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder")
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, total_limit: int) -> Path:
    """Write the full training state at `step` atomically, then keep only the newest `total_limit` checkpoints."""
    root = checkpoints_root(output_dir)
    final, temporary = root / f"checkpoint-{step}", root / f"{TEMPORARY_PREFIX}checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved by an earlier attempt of this run
            shutil.rmtree(final)
        temporary.rename(final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: str | Path, total_limit: int) -> None:
    """Delete all but the newest `total_limit` whole checkpoints, and every leftover temporary folder."""
    for stale in checkpoints_root(output_dir).glob(f"{TEMPORARY_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in complete_checkpoints(output_dir)[:-total_limit]:
        shutil.rmtree(old)
