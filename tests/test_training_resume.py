"""A run killed with SIGKILL at a random step and resumed with ``--resume_from_checkpoint latest`` logs the same
losses and ends with the same weights as a run never interrupted; no checkpoint on disk is ever half-written."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from test_training_tiny import TINY_MODEL, tiny_args
from training.checkpointing import complete_checkpoints
from training.tracking import METRICS_FILE, read_metrics

REPO = Path(__file__).resolve().parent.parent
MAX_STEPS = 12
CHECKPOINT_FILES = ("model.safetensors", "optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl",
                    "custom_checkpoint_1.pkl", "custom_checkpoint_2.pkl")


def run_command(output_dir: Path, *extra: str) -> list[str]:
    """Three progressive stages, dropout (so RNG state matters), 2 micro-batches per step, a checkpoint per step."""
    model = json.dumps({**TINY_MODEL, "dropout": 0.1})
    args = tiny_args(output_dir, "--save_steps", "1", "--save_total_limit", "3", "--gradient_accumulation_steps", "2",
                     "--eval_steps", "4", "--num_samples", "0", *extra, max_steps=MAX_STEPS, stages=(1, 2, 3))
    args[args.index("--model_config") + 1] = model
    return [sys.executable, str(REPO / "training" / "run.py"), *args]


SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as `accelerate launch` runs on a CPU; robust to other load


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=SINGLE_THREAD)


def logged_steps(output_dir: Path) -> int:
    path = output_dir / METRICS_FILE
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_after_logged_lines(process: subprocess.Popen, output_dir: Path, lines: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while logged_steps(output_dir) < lines and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def assert_checkpoints_whole(output_dir: Path) -> None:
    for checkpoint in complete_checkpoints(output_dir):
        assert all((checkpoint / name).is_file() for name in CHECKPOINT_FILES), checkpoint
        load_file(checkpoint / "model.safetensors")
        for name in CHECKPOINT_FILES[1:]:
            torch.load(checkpoint / name, weights_only=False)


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path):
    kill_at = random.Random(os.getpid()).randrange(2, MAX_STEPS)  # a log line, i.e. around a random step
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    reference = start(run_command(uninterrupted))
    killed = start(run_command(interrupted))
    kill_after_logged_lines(killed, interrupted, kill_at)
    assert killed.returncode == -signal.SIGKILL, f"the run ended before the kill at line {kill_at}"
    assert_checkpoints_whole(interrupted)
    (interrupted / "checkpoints" / ".tmp-checkpoint-99").mkdir(parents=True, exist_ok=True)  # as a kill leaves
    resumed = subprocess.run(run_command(interrupted, "--resume_from_checkpoint", "latest"), cwd=REPO,
                             capture_output=True, text=True, env=SINGLE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait() == 0, reference.stderr.read()[-3000:]

    expected, got = read_metrics(uninterrupted), read_metrics(interrupted)
    losses = {step: values["train/loss"] for step, values in expected.items() if "train/loss" in values}
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    assert {step: got[step]["train/loss"] for step in losses} == losses, f"killed after log line {kill_at}"
    assert [got[step]["eval/loss"] for step in (4, 8, 12)] == [expected[step]["eval/loss"] for step in (4, 8, 12)]
    for name in ("model.safetensors", "checkpoints/checkpoint-12/model.safetensors"):
        final, reference_final = load_file(interrupted / name), load_file(uninterrupted / name)
        assert all(torch.equal(final[key], reference_final[key]) for key in reference_final), name
    assert [path.name for path in complete_checkpoints(interrupted)] == ["checkpoint-10", "checkpoint-11",
                                                                         "checkpoint-12"]
    assert not list((interrupted / "checkpoints").glob(".tmp-*"))
