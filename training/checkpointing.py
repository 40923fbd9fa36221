"""Resumable checkpoints and the output folder they live in.

A checkpoint is `accelerator.save_state` (weights as safetensors; optimizer, sampler and RNG states as torch files,
read back with ``weights_only=True``) plus the run's own state (`RunState`: progress and learning-rate schedule as
JSON, the EMA weights as safetensors, so nothing in a checkpoint is a pickle that could run code), plus
``checkpoint.json`` (the run's settings and the size and SHA-256 of every file written), all in a temporary folder
renamed into place when complete. A folder named ``checkpoint-<step>`` is therefore whole unless something removed
or altered a file since; resuming checks every size and checksum and falls back to the newest whole checkpoint. A run killed while saving leaves only a ``.tmp-checkpoint-<step>`` folder, which resuming ignores and
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
import errno
import fcntl
import hashlib
import json
import pickle
import os
import re
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from accelerate import Accelerator
from accelerate.utils import load as load_torch_file
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from training.errors import CheckpointError, OutputDirBusyError, OutputDirTakenError, SettingsError
from training.stages import StageSchedule

CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
TEMPORARY_PREFIX = ".tmp-"
MANIFEST = "checkpoint.json"
LOCK_FILE = "training.lock"
RUN_RECORDS = ("model", ".tmp-model", "checkpoints", "logs", "metrics.jsonl", "results.json", "training_config.yaml",
               "tracker_config.json")
"""What a run writes into its output folder (besides the lock): an earlier run, if any of them is there."""
STATE_FILE = "training_state.json"
EMA_FILE = "ema.safetensors"


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
        """Restore the counters; anything but exactly these fields as non-negative integers is refused, so a damaged
        or crafted file cannot silently restart the run at step 0."""
        expected = set(asdict(TrainingProgress()))
        if not isinstance(state, dict) or set(state) != expected or not all(
                type(value) is int and value >= 0 for value in state.values()):
            raise ValueError(f"the progress must hold the non-negative integers {sorted(expected)}, got {state!r}")
        for name, value in state.items():
            setattr(self, name, value)


class RunState:
    """The run's own resumable state beside Accelerate's: the progress and the learning-rate schedule as JSON
    (``training_state.json``), the EMA weights as safetensors (``ema.safetensors``). Neither format can run code
    when read, unlike the pickles `accelerator.register_for_checkpointing` would write."""

    def __init__(self, progress: TrainingProgress, lr_scheduler, ema: nn.Module):
        self.progress, self.lr_scheduler, self.ema = progress, lr_scheduler, ema

    def save(self, folder: Path) -> None:
        state = {"progress": self.progress.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()}
        (folder / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
        save_model(self.ema, str(folder / EMA_FILE))

    def load(self, folder: Path, step: int) -> None:
        """Restore from `folder`, written at `step`; a file that cannot be read is a `CheckpointError` naming it."""
        try:
            state = json.loads((folder / STATE_FILE).read_text())
            self.progress.load_state_dict(state["progress"])
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"cannot resume {folder}: {folder / STATE_FILE} is not a training state this "
                                  f"run can read ({error})") from error
        if self.progress.step != step:
            raise CheckpointError(f"cannot resume {folder}: {STATE_FILE} is at step {self.progress.step}, but the "
                                  f"checkpoint was written at step {step}")
        try:
            load_model(self.ema, str(folder / EMA_FILE), strict=True)
        except (OSError, SafetensorError, RuntimeError) as error:
            raise CheckpointError(f"cannot resume {folder}: {folder / EMA_FILE} does not hold this model's EMA "
                                  f"weights ({str(error).splitlines()[0]})") from error


def check_output_dir(output_dir: str | Path) -> None:
    """Before anything else: `output_dir` is (or can be made) a folder this process may write to."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise SettingsError(f"--output_dir {output_dir} is a file, not a folder; choose another --output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SettingsError(f"--output_dir {output_dir}: cannot create the folder ({error.strerror or error}); "
                            "choose another --output_dir") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(f"--output_dir {output_dir} is not writable by this user; choose another --output_dir")


def earlier_run_records(output_dir: str | Path) -> list[str]:
    return [name for name in RUN_RECORDS if (Path(output_dir) / name).exists()]


def claim_output_dir(output_dir: str | Path, resuming: bool, overwrite: bool, accelerator: Accelerator) -> None:
    """A new run (no ``--resume_from_checkpoint``) never silently replaces an earlier run's model, checkpoints
    and metrics: it is refused, unless ``--overwrite_output_dir`` asks for exactly that, which then deletes the
    earlier run's records (`RUN_RECORDS`, and nothing else) before this run writes its own."""
    found = earlier_run_records(output_dir)
    if resuming or not found:
        return
    if not overwrite:
        raise OutputDirTakenError(
            f"--output_dir {output_dir} already holds a training run ({', '.join(found)}); to continue it, rerun "
            "with --resume_from_checkpoint latest; to replace it, pass --overwrite_output_dir; or choose another "
            "--output_dir")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name in found:
            path = Path(output_dir) / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    accelerator.wait_for_everyone()


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
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise SettingsError(f"--output_dir {output_dir} is not writable ({error.strerror or error}); choose another "
                            "--output_dir") from error
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def damaged_files(checkpoint: Path) -> list[str]:
    """What is wrong with a checkpoint compared with its manifest, one entry per file: missing, truncated (the
    size differs) or corrupted (the SHA-256 differs); everything, if the manifest itself is missing or unreadable."""
    try:
        files = read_manifest(checkpoint)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{MANIFEST} missing or unreadable"]
    if not isinstance(files, dict) or not all(isinstance(entry, dict) and {"bytes", "sha256"} <= set(entry)
                                              for entry in files.values()):
        return [f"{MANIFEST} lists no SHA-256 per file (a checkpoint of an older version, which stored pickles)"]
    problems = []
    for name, entry in files.items():
        path = checkpoint / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{name} truncated ({path.stat().st_size} of {entry['bytes']} bytes)")
        elif file_sha256(path) != entry["sha256"]:
            problems.append(f"{name} corrupted (its SHA-256 differs from the manifest's)")
    return problems


def read_manifest(checkpoint: Path) -> dict:
    """``{"step": n, "files": {name: {"bytes": n, "sha256": hex}}, "run": the run record}`` as `save_checkpoint`
    wrote it."""
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
        damaged = damaged_files(checkpoint)
        if not damaged:
            return checkpoint
        report(f"{checkpoint} is incomplete or corrupted ({'; '.join(damaged)}): trying an older one")
    if checkpoints:
        raise CheckpointError(f"no whole checkpoint in {checkpoints_root(output_dir)} to resume from; start a new "
                              "run without --resume_from_checkpoint, or in a new --output_dir")
    return None


def _whole_checkpoint(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
    damaged = damaged_files(path)
    if damaged:
        raise CheckpointError(f"--resume_from_checkpoint {path}: the checkpoint is incomplete or corrupted "
                              f"({'; '.join(damaged)}); pass an older checkpoint, or 'latest' for the newest whole "
                              "one")
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, total_limit: int,
                    run_record: dict, run_state: RunState) -> Path:
    """Write the full training state at `step` atomically (Accelerate's files and `run_state`), with a manifest
    holding `run_record` and the size and SHA-256 of every file, then keep only the newest `total_limit`
    checkpoints. A full disk is a `CheckpointError` naming it; the older checkpoints stay as they were."""
    root = checkpoints_root(output_dir)
    final, temporary = root / f"checkpoint-{step}", root / f"{TEMPORARY_PREFIX}checkpoint-{step}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()  # every process's files (its random_states_<i>.pkl) are written
        if accelerator.is_main_process:
            run_state.save(temporary)
            write_manifest(temporary, step, run_record)
    except (OSError, RuntimeError) as error:
        shutil.rmtree(temporary, ignore_errors=True)  # gives the space back
        raise checkpoint_write_error(root, step, error) from error
    if accelerator.is_main_process:
        if final.exists():  # the same step saved by an earlier attempt of this run
            shutil.rmtree(final)
        temporary.rename(final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def checkpoint_write_error(root: Path, step: int, error: Exception) -> CheckpointError:
    """What a failed write means for the user: torch reports a full disk as ``unexpected pos`` (its zip writer),
    Python as ``ENOSPC``; name the disk and its free space rather than the writer's internals."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        usage = None
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "unexpected pos" in text or \
        "No space left" in text or (usage is not None and usage.free < 1 << 20)
    where = f"the disk holding {root}" + (f" ({usage.free / 2**20:.1f} MiB free of {usage.total / 2**30:.1f} GiB)"
                                          if usage is not None else "")
    cause = f"{where} is full" if full else f"writing to {where} failed ({text})"
    return CheckpointError(f"could not write checkpoint-{step}: {cause}; the checkpoints already in {root} are "
                           "whole. Free some space (or choose another --output_dir) and rerun with "
                           "--resume_from_checkpoint latest")


def write_manifest(folder: Path, step: int, run_record: dict) -> None:
    files = {str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"step": step, "files": files, "run": run_record}, indent=1) + "\n")


def prune_checkpoints(output_dir: str | Path, total_limit: int) -> None:
    """Delete all but the newest `total_limit` checkpoints, and every leftover temporary folder."""
    for stale in checkpoints_root(output_dir).glob(f"{TEMPORARY_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in complete_checkpoints(output_dir)[:-total_limit]:
        shutil.rmtree(old)


def resume_training(accelerator: Accelerator, checkpoint: Path | None, run_state: RunState) -> None:
    """Continue from `checkpoint` (weights, optimizer, schedule, EMA, RNGs, data position, stage), if any. Every
    torch file is read with ``weights_only=True`` (no pickled code runs); one that will not load is refused, naming
    it, rather than skipped (Accelerate itself skips RNG states it cannot read)."""
    if checkpoint is None:
        return
    rng_file = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    try:
        load_torch_file(rng_file)
        accelerator.load_state(str(checkpoint))
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"cannot resume {checkpoint}: a file will not load as plain tensors "
                              f"({str(error).strip().splitlines()[0]}); resume from another checkpoint") from error
    run_state.load(checkpoint, read_manifest(checkpoint)["step"])
    progress = run_state.progress
    accelerator.print(f"resumed from {checkpoint} at step {progress.step} (stage {progress.stage + 1}, "
                      f"micro-batch {progress.micro_batches})")


# --- The run record: what a resumed run must share with the checkpoint ---------------------------------------

RESUMABLE_CHANGES = frozenset({
    "config", "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "max_steps", "logging_steps", "eval_steps", "save_steps",
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
