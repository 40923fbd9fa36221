"""Two processes (gloo, CPU) launched by ``accelerate launch``: each trains on its own share of the data, and the
weights stay identical across them, through a progressive stage change (parameters frozen mid-run)."""

import json
import socket
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers.training import tiny_args
from evaluation.training_logs import read_metrics


def free_port() -> int:
    """A port nobody listens on: torchrun's default (29500) may still be held by an earlier launch."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("model", ["tarflow", "gpt2"])
def test_two_processes_see_different_data_and_keep_identical_weights(tmp_path, model):
    # `--num_processes 2 --cpu` alone starts one process (Accelerate's CPU launcher needs MPI); `--multi_gpu` goes
    # through torchrun, and run.py joins the processes into a gloo group when there is no GPU.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    args = tiny_args(tmp_path, "--save_steps", "3", "--model", model, max_steps=6, stages=(1, 3))
    done = subprocess.run([*launcher, str(REPO / "training" / "run.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    replicas = results["replicas"]
    assert results["num_processes"] == 2 and [r["process"] for r in replicas] == [0, 1]
    assert replicas[0]["data_sha256"] != replicas[1]["data_sha256"]
    assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]
    assert results["tokens"] == 6 * 2 * 4 * 16  # steps × processes × blocks per process × block length
    assert sorted(path.name for path in (tmp_path / "checkpoints" / "checkpoint-6").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
    if model == "tarflow":  # the baseline trains jointly
        boundary = read_metrics(tmp_path)[3]
        assert boundary["stage/loss_after"] == pytest.approx(boundary["stage/loss_before"], rel=1e-6)
