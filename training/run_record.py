"""What every checkpoint records about the run that wrote it, and the check that a resumed run is the same run.

Resuming restores weights, optimizer and RNG states whose meaning depends on the model, the data, the stages and
the optimisation, so those must not change; where the tensor shapes still match (a flow's direction swapped,
``channel_mixing`` flipped) loading alone would not notice. The settings listed in `RESUMABLE_CHANGES` only
decide what is logged, validated, saved or reported, and may change. ``max_steps`` may change too (to train for
longer, say): the learning-rate schedule follows the new length, but the steps already taken must keep their
stages.
"""

import json

from training.errors import CheckpointError
from training.stages import StageSchedule

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
