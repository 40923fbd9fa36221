"""Checkpoints hold no pickle that can run code and are checked file by file: the run's own state is JSON and
safetensors, Accelerate's torch files are read with ``weights_only=True``, the manifest records a SHA-256 per file,
and a corrupted file (even of the right size) is named, with ``latest`` falling back to the previous whole
checkpoint. A full disk while saving is one line naming the disk."""

import json
import pickle
import shutil

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import load as load_torch_file

from tests.helpers.training import run_in_process, tiny_args
from training.checkpointing import (complete_checkpoints, file_sha256, find_resume_checkpoint, read_manifest,
                                    write_manifest)
from training.errors import CheckpointError


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run of 4 steps with checkpoints at steps 2 and 4."""
    output_dir = tmp_path_factory.mktemp("checkpointed")
    run_in_process(tiny_args(output_dir, "--save_steps", "2", "--num_samples", "0", max_steps=4))
    return output_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy, ignore=shutil.ignore_patterns("training.lock"))
    return copy


def resume(output_dir, *extra):
    return run_in_process(tiny_args(output_dir, "--save_steps", "2", "--num_samples", "0",
                                    "--resume_from_checkpoint", "latest", *extra, max_steps=4))


def test_the_manifest_records_a_sha256_per_file_and_no_pickle_of_objects_is_written(finished_run):
    checkpoint = complete_checkpoints(finished_run)[-1]
    files = read_manifest(checkpoint)["files"]
    assert {"training_state.json", "ema.safetensors", "model.safetensors", "optimizer.bin"} <= set(files)
    assert not [name for name in files if name.startswith("custom_checkpoint")]
    for name, entry in files.items():
        assert entry == {"bytes": (checkpoint / name).stat().st_size, "sha256": file_sha256(checkpoint / name)}
    for name in files:
        if name.endswith((".bin", ".pkl")):
            load_torch_file(checkpoint / name)  # weights_only=True, with NumPy's RNG arrays allowed


def flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["optimizer.bin", "training_state.json", "ema.safetensors"])
def test_a_corrupted_file_of_the_right_size_is_named_and_latest_falls_back(run_copy, name):
    newest, previous = complete_checkpoints(run_copy)[-1], complete_checkpoints(run_copy)[-2]
    flip_one_byte(newest / name)
    notes = []
    assert find_resume_checkpoint("latest", run_copy, notes.append) == previous
    assert f"{name} corrupted" in notes[0] and "checkpoint-4" in notes[0]
    with pytest.raises(CheckpointError, match=f"{name} corrupted"):
        find_resume_checkpoint(str(newest), run_copy)


def test_resuming_reads_every_torch_file_with_weights_only(run_copy, monkeypatch):
    calls = []
    original = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    results = resume(run_copy)
    assert results["steps"] == 4 and calls and all(calls), calls


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_crafted_pickle_with_a_matching_manifest_is_refused_without_running(run_copy, capsys):
    checkpoint = complete_checkpoints(run_copy)[-1]
    (checkpoint / "optimizer.bin").write_bytes(pickle.dumps(Payload()))
    manifest = read_manifest(checkpoint)
    write_manifest(checkpoint, manifest["step"], manifest["run"])  # the crafter updates the checksums too
    with pytest.raises(CheckpointError, match="will not load as plain tensors"):
        resume(run_copy)
    assert "pickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("edit", [lambda state: state["progress"].update(step=0),
                                  lambda state: state["progress"].pop("micro_batches"),
                                  lambda state: state["progress"].update(step="4")], ids=["step 0", "missing", "text"])
def test_a_crafted_training_state_cannot_restart_the_run(run_copy, edit):
    checkpoint = complete_checkpoints(run_copy)[-1]
    state = json.loads((checkpoint / "training_state.json").read_text())
    edit(state)
    (checkpoint / "training_state.json").write_text(json.dumps(state))
    manifest = read_manifest(checkpoint)
    write_manifest(checkpoint, manifest["step"], manifest["run"])
    with pytest.raises(CheckpointError, match="training_state.json"):
        resume(run_copy)


def test_a_full_disk_while_saving_names_the_disk(tmp_path, monkeypatch, capsys):
    def full_disk(self, output_dir, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4544 vs 4433")

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    status = run_in_process(tiny_args(tmp_path / "run", "--save_steps", "1", max_steps=2), entry="cli")
    stderr = capsys.readouterr().err
    error = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert status == 2 and len(error) == 1 and "Traceback" not in stderr, stderr
    assert error[0].startswith("error: could not write checkpoint-1: the disk holding") and "is full" in error[0]
    assert "inline_container" not in error[0]
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # the half-written folder is gone
