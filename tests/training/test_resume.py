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
from accelerate.utils import load as load_torch_file
from safetensors.torch import load_file

from tests.helpers import REPO
from tests.helpers.training import TINY_MODEL, run_in_process, tiny_args
from evaluation.training_logs import METRICS_FILE, read_metrics
from training.checkpointing import complete_checkpoints

MAX_STEPS = 12
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "training_state.json", "optimizer.bin",
                    "random_states_0.pkl")


def run_command(output_dir: Path, *extra: str, max_steps: int = MAX_STEPS) -> list[str]:
    """Three progressive stages, dropout (so RNG state matters), 2 micro-batches per step, a checkpoint per step."""
    model = json.dumps({**TINY_MODEL, "dropout": 0.1})
    args = tiny_args(output_dir, "--save_steps", "1", "--save_total_limit", "3", "--gradient_accumulation_steps", "2",
                     "--eval_steps", "4", "--num_samples", "0", *extra, max_steps=max_steps, stages=(1, 2, 3))
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
        load_file(checkpoint / "ema.safetensors")
        json.loads((checkpoint / "training_state.json").read_text())
        for name in CHECKPOINT_FILES[3:]:
            load_torch_file(checkpoint / name)  # weights_only=True, NumPy's RNG arrays allowed


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
    for name in ("model/model.safetensors", "checkpoints/checkpoint-12/model.safetensors"):
        final, reference_final = load_file(interrupted / name), load_file(uninterrupted / name)
        assert all(torch.equal(final[key], reference_final[key]) for key in reference_final), name
    assert [path.name for path in complete_checkpoints(interrupted)] == ["checkpoint-10", "checkpoint-11",
                                                                         "checkpoint-12"]
    assert not list((interrupted / "checkpoints").glob(".tmp-*"))


def accelerate_launch(command: list[str]) -> list[str]:
    """`command` (python training/run.py ...) as `accelerate launch` starts it on one CPU process."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launcher, *command[1:]]


def test_sigterm_writes_a_checkpoint_and_resuming_reproduces_the_uninterrupted_run(tmp_path):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    reference = start(run_command(uninterrupted, "--save_steps", "0"))
    # A scheduler signals the job's whole process group (the launcher does not forward signals to run.py).
    launched = subprocess.Popen(accelerate_launch(run_command(interrupted, "--save_steps", "0")), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SINGLE_THREAD,
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while logged_steps(interrupted) < 3 and launched.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    for signum in (signal.SIGSTOP, signal.SIGTERM, signal.SIGCONT):  # SIGTERM surely arrives mid-run
        os.killpg(launched.pid, signum)
    out, err = launched.communicate(timeout=300)  # until run.py, which shares the pipes, has exited too
    assert "Traceback" not in err, err[-3000:]
    notes = [line for line in out.splitlines() if line.startswith("SIGTERM: stopped after step")]
    assert len(notes) == 1 and "--resume_from_checkpoint latest" in notes[0], out[-3000:]
    stopped_at = int(notes[0].split("step ")[1].split()[0])
    assert 3 <= stopped_at < MAX_STEPS and [path.name for path in complete_checkpoints(interrupted)] == [
        f"checkpoint-{stopped_at}"]
    assert_checkpoints_whole(interrupted)
    resumed = subprocess.run(run_command(interrupted, "--save_steps", "0", "--resume_from_checkpoint", "latest"),
                             cwd=REPO, capture_output=True, text=True, env=SINGLE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait() == 0, reference.stderr.read()[-3000:]
    final = load_file(interrupted / "model" / "model.safetensors")
    reference_final = load_file(uninterrupted / "model" / "model.safetensors")
    assert all(torch.equal(final[key], reference_final[key]) for key in reference_final)


def test_sigint_stops_at_a_step_with_a_checkpoint_and_one_line(tmp_path):
    # long enough (a tiny step takes tens of milliseconds) that the signal cannot miss the run
    max_steps = 10 * MAX_STEPS
    # SIGINT as from a terminal: a test runner started in the background by a non-interactive shell has it
    # ignored, its children inherit that, and the run rightly keeps an ignored signal ignored
    run = subprocess.Popen(run_command(tmp_path, max_steps=max_steps), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=SINGLE_THREAD,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while logged_steps(tmp_path) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.poll() is None, f"the run ended before two steps were logged: {run.communicate()[1][-3000:]}"
    for signum in (signal.SIGSTOP, signal.SIGINT, signal.SIGCONT):  # SIGINT surely arrives mid-run
        run.send_signal(signum)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 128 + signal.SIGINT and "Traceback" not in err, err[-3000:]
    notes = [line for line in out.splitlines() if line.startswith("SIGINT: stopped after step")]
    assert len(notes) == 1, out[-3000:]
    stopped_at = int(notes[0].split("step ")[1].split()[0])
    assert stopped_at < max_steps and complete_checkpoints(tmp_path)[-1].name == f"checkpoint-{stopped_at}"
    assert_checkpoints_whole(tmp_path)


def test_a_second_run_on_the_same_output_dir_is_refused_while_the_first_finishes(tmp_path, capsys):
    from transformers import AutoModel

    first = start([sys.executable, str(REPO / "training" / "run.py"), *tiny_args(tmp_path, max_steps=8)])
    deadline = time.monotonic() + 300
    while logged_steps(tmp_path) < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # paused mid-run, so the second run surely meets it
    try:
        assert first.poll() is None, "the first run ended before the second started"
        assert run_in_process(tiny_args(tmp_path, max_steps=4), entry="cli") == 2
    finally:
        first.send_signal(signal.SIGCONT)
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: --output_dir {tmp_path} is in use by another training run (process "), error
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    assert sorted(read_metrics(tmp_path)) == list(range(1, 9))  # the first run's steps, none from the second
    assert AutoModel.from_pretrained(tmp_path / "model", trust_remote_code=True).config.hidden_size == 32
