"""Resumable checkpoints and the output folder they live in.

A checkpoint is `accelerator.save_state` into a temporary folder plus ``checkpoint.json`` (the run's settings and
the size of every file written), renamed into place when complete. A folder named ``checkpoint-<step>`` is
therefore whole unless something removed a file since; resuming checks the list and falls back to the newest whole
checkpoint. A run killed while saving leaves only a ``.tmp-checkpoint-<step>`` folder, which resuming ignores and
the next save clears. (Accelerate's own automatic checkpoint naming writes in place, so it cannot give this
guarantee; its ``total_limit`` pruning is replaced by `prune_checkpoints` here.) Several processes must share the
output folder's file system; one run at a time owns it (`output_dir_lock`).

Every checkpoint records the run that wrote it (`build_run_record`), and resuming checks that the run is the same
(`check_resumable`). Resuming restores weights, optimizer and RNG states whose meaning depends on the model, the
data, the stages and the optimisation, so those must not change; where the tensor shapes still match (a flow's
direction swapped, ``channel_mixing`` flipped) loading alone would not notice. The settings listed in
`RESUMABLE_CHANGES` only decide what is logged, validated, saved or reported, and may change. ``max_steps`` may
change too (to train for longer, say): the learning-rate schedule follows the new length, but the steps already
taken must keep their stages.
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from accelerate import Accelerator

from training.errors import CheckpointError, OutputDirBusyError
from training.stages import StageSchedule

CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
TEMPORARY_PREFIX = ".tmp-"
MANIFEST = "checkpoint.json"
LOCK_FILE = "training.lock"


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


@contextlib.contextmanager
def output_dir_lock(output_dir: str | Path, is_main_process: bool):
    """Hold an exclusive lock on `output_dir` for the life of the run (main process only), so that a second run
    cannot overwrite its checkpoints, metrics and model. It is a `flock` on ``training.lock``, which the operating
    system drops when the process ends, however it ends: a killed run never blocks its own resume."""
    if not is_main_process:
        yield
        return
    path = Path(output_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        holder = path.read_text().strip() or "another process"
        os.close(descriptor)
        raise OutputDirBusyError(f"--output_dir {output_dir} is in use by another training run ({holder}, which "
                                 f"holds {path}); wait for it to end or choose another --output_dir") from error
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
    try:
        yield
    finally:
        os.close(descriptor)  # releases the lock


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The renamed (finished) checkpoint folders of a run, oldest first."""
    root = checkpoints_root(output_dir)
    found = [path for path in root.iterdir() if path.is_dir() and CHECKPOINT_PATTERN.fullmatch(path.name)] \
        if root.is_dir() else []
    return sorted(found, key=lambda path: int(CHECKPOINT_PATTERN.fullmatch(path.name).group(1)))


def missing_files(checkpoint: Path) -> list[str]:
    """What a checkpoint lacks compared with its manifest (everything, if the manifest itself is missing)."""
    manifest = checkpoint / MANIFEST
    if not manifest.is_file():
        return [MANIFEST]
    return [name for name, size in read_manifest(checkpoint)["files"].items()
            if not (checkpoint / name).is_file() or (checkpoint / name).stat().st_size != size]


def read_manifest(checkpoint: Path) -> dict:
    """``{"step": n, "files": {name: bytes}, "run": the run record}`` as `save_checkpoint` wrote it."""
    return json.loads((checkpoint / MANIFEST).read_text())


def find_resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str | Path,
                           report: Callable[[str], None] = print) -> Path | None:
    """``None``: start fresh; ``"latest"``: the newest whole checkpoint of `output_dir` (None if there is none at
    all), skipping incomplete ones with a note; anything else: that checkpoint folder, which must be whole."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint != "latest":
        return _whole_checkpoint(Path(resume_from_checkpoint))
    checkpoints = complete_checkpoints(output_dir)
    for checkpoint in reversed(checkpoints):
        missing = missing_files(checkpoint)
        if not missing:
            return checkpoint
        report(f"{checkpoint} is incomplete (missing or truncated: {', '.join(missing)}): trying an older one")
    if checkpoints:
        raise CheckpointError(f"no whole checkpoint in {checkpoints_root(output_dir)} to resume from; start a new "
                              "run without --resume_from_checkpoint, or in a new --output_dir")
    return None


def _whole_checkpoint(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
    missing = missing_files(path)
    if missing:
        raise CheckpointError(f"--resume_from_checkpoint {path}: the checkpoint is incomplete (missing or "
                              f"truncated: {', '.join(missing)}); pass an older checkpoint, or 'latest' for the "
                              "newest whole one")
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, total_limit: int,
                    run_record: dict) -> Path:
    """Write the full training state at `step` atomically, with a manifest holding `run_record` and the size of
    every file, then keep only the newest `total_limit` checkpoints."""
    root = checkpoints_root(output_dir)
    final, temporary = root / f"checkpoint-{step}", root / f"{TEMPORARY_PREFIX}checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()  # every process's files (its random_states_<i>.pkl) are written
    if accelerator.is_main_process:
        write_manifest(temporary, step, run_record)
        if final.exists():  # the same step saved by an earlier attempt of this run
            shutil.rmtree(final)
        temporary.rename(final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def write_manifest(folder: Path, step: int, run_record: dict) -> None:
    files = {str(path.relative_to(folder)): path.stat().st_size for path in sorted(folder.rglob("*")) if path.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"step": step, "files": files, "run": run_record}, indent=1) + "\n")


def prune_checkpoints(output_dir: str | Path, total_limit: int) -> None:
    """Delete all but the newest `total_limit` checkpoints, and every leftover temporary folder."""
    for stale in checkpoints_root(output_dir).glob(f"{TEMPORARY_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in complete_checkpoints(output_dir)[:-total_limit]:
        shutil.rmtree(old)


def resume_training(accelerator: Accelerator, checkpoint: Path | None, progress: TrainingProgress) -> None:
    """Continue from `checkpoint` (weights, optimizer, schedule, EMA, RNGs, data position, stage), if any."""
    if checkpoint is None:
        return
    accelerator.load_state(str(checkpoint))
    accelerator.print(f"resumed from {checkpoint} at step {progress.step} (stage {progress.stage + 1}, "
                      f"micro-batch {progress.micro_batches})")


# --- The run record: what a resumed run must share with the checkpoint ---------------------------------------

RESUMABLE_CHANGES = frozenset({
    "config", "output_dir", "resume_from_checkpoint", "max_steps", "logging_steps", "eval_steps", "save_steps",
    "save_total_limit", "max_nonfinite_steps", "report_to", "num_samples", "sample_length", "push_to_hub",
    "per_device_eval_batch_size", "max_eval_blocks", "torch_compile", "cache_dir", "num_proc",
})
"""Settings a resumed run may change; every other setting must equal the checkpoint's."""

_BOOKKEEPING = frozenset({"transformers_version", "_name_or_path", "architecture_fingerprint", "dtype"})


def build_run_record(resolved_settings: dict, architecture: dict, schedule: StageSchedule,
                     num_processes: int) -> dict:
    """The run as a checkpoint records it (JSON types only, so a reloaded record compares equal)."""
    record = {"settings": resolved_settings, "architecture": architecture, "num_processes": num_processes,
              "stage_starts": [stage.start_step for stage in schedule.stages]}
    return json.loads(json.dumps(record))


def check_resumable(recorded: dict, current: dict, step: int, checkpoint: str) -> None:
    """Raise `CheckpointError` naming every difference that resuming `checkpoint` (at `step`) would hide."""
    old, new = recorded["settings"], current["settings"]
    conflicts = [_conflict(key, *values) for key, *values in differences(old, new)
                 if key not in RESUMABLE_CHANGES and key != "model_config"]
    model_changes = differences(old.get("model_config") or {}, new.get("model_config") or {})
    conflicts += [_conflict(f"model_config.{key}", *values) for key, *values in model_changes]
    conflicts += [_conflict(f"architecture.{key}", *values)  # e.g. a default that changed with the code
                  for key, *values in differences(recorded["architecture"], current["architecture"])
                  if key not in _BOOKKEEPING and key not in {change[0] for change in model_changes}]
    if recorded["num_processes"] != current["num_processes"]:
        conflicts.append(_conflict("processes", recorded["num_processes"], current["num_processes"])
                         + " (each keeps its own RNG state and share of the data)")
    conflicts += schedule_conflicts(recorded["stage_starts"], current["stage_starts"], new["max_steps"], step)
    if conflicts:
        raise CheckpointError(f"cannot resume {checkpoint}: it was written by a run with other settings: "
                              f"{'; '.join(conflicts)}. Resume with the checkpoint's settings (its "
                              "checkpoint.json lists them), or start a new run in another --output_dir")


def _conflict(name: str, recorded, current) -> str:
    return f"{name}: {recorded!r} in the checkpoint, {current!r} now"


def schedule_conflicts(recorded_starts: list[int], current_starts: list[int], max_steps: int, step: int) -> list[str]:
    """A new ``max_steps`` must leave room for the steps taken and keep the stage of each of them."""
    if max_steps < step:
        return [f"max_steps: {max_steps} now, but the checkpoint is at step {step}"]
    started = [start for start in recorded_starts if start < step]
    if [start for start in current_starts if start < step] != started:
        return [f"max_steps: stages would start at steps {current_starts} now, {recorded_starts} in the checkpoint, "
                f"which already trained up to step {step}"]
    return []


def differences(recorded: dict, current: dict) -> list[tuple[str, object, object]]:
    return [(key, recorded.get(key), current.get(key)) for key in sorted(set(recorded) | set(current))
            if recorded.get(key) != current.get(key)]
