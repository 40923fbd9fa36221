"""The benchmark scripts run: bench/gpu.sh in its CPU dry mode, bench/scaling.py in its quick mode (tiny sizes), and
bench/mixture_cdf.py and bench/sampling.py (compiled cells, profile) at tiny sizes, so that none rots between the runs
that time them."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_gpu_script_dry_run_checks_its_outputs_and_writes_every_section(tmp_path):
    run(["bash", "bench/gpu.sh", "--dry", str(tmp_path)])
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert all(status.startswith("done") for status in result["sections"].values()), result["sections"]
    assert result["round_trip"]["max_abs_error"] < 1e-3
    for shape, modes in (("text8_mixd", ["tarflow_all_layers"]), ("owt_mixd", ["tarflow_stage1", "tarflow_stage3"])):
        rows = result[f"training_{shape}"]
        assert set(rows) == {*modes, "gpt2"} and all(math.isfinite(row["loss"]) for row in rows.values())
        assert all(row["tokens_per_second"] > 0 for row in rows.values())
    cells = {(row["model"], row["decoding"], row["batch_size"]) for row in result["sampling"]["results"]}
    assert ("GPT-2", "generate (KV cache)", 1) in cells and ("TarFlowLM (maf)", "jacobi", 2) in cells
    assert {check["auto_chooses"] for check in result["sampling"]["auto_rule"]} == {"jacobi", "sequential"}


def test_scaling_quick_run_writes_every_model_at_every_point_and_a_plot(tmp_path):
    run([sys.executable, "-m", "bench.scaling", "--quick", "--output_dir", str(tmp_path)])
    result = json.loads((tmp_path / "scaling.json").read_text())
    models = {"tarflow_stage1", "tarflow_stage1_through_u", "tarflow_stage3", "gpt2"}
    points = {(row["sweep"], row["vocab_size"], row["length"]) for row in result["results"]}
    assert len(result["results"]) == len(models) * len(points) == len(models) * 4
    assert all(row["tokens_per_second"] > 0 and row["memory_bytes_per_token"] > 0 for row in result["results"])
    assert result["plot"] is None or (tmp_path / "scaling.png").exists()


def test_mixture_cdf_bench_times_both_implementations_and_they_agree(tmp_path):
    run([sys.executable, "-m", "bench.mixture_cdf", "--vocab_sizes", "300", "--tokens", "8", "--mix1_entries", "64",
         "--rounds", "1", "--output_dir", str(tmp_path)])
    result = json.loads((tmp_path / "mixture_cdf.json").read_text())
    assert [row["shape"] for row in result["log_cdf_pair"]] == ["mix1", "mixd_V300"]
    assert all(max(row["max_abs_difference_log_cdf_log_sf"]) < 1e-4 for row in result["log_cdf_pair"])
    frozen, trained = result["frozen_rosenblatt"]
    assert set(frozen["errors_against_float64"]) == {"library", "dense", "dense_one_chunk", "reference"}
    for errors in frozen["errors_against_float64"].values():
        assert errors["max_abs_error_u"] < 1e-4 and errors["max_relative_error_log_det"] < 1e-4
    assert all(speed > 0 for row in (frozen, trained) for speed in row["tokens_per_second"].values())


def test_sampling_bench_times_compiled_cells_beside_eager_ones_and_profiles_their_parts(tmp_path):
    run([sys.executable, "-m", "bench.sampling", "--train_steps", "0", "--width", "32", "--heads", "2", "--length", "8",
         "--rounds", "1", "--batch_sizes", "1", "--patch_sizes", "2", "--variants", "maf", "--compile_backend", "eager",
         "--compile_methods", "sequential", "--profile", "--output_dir", str(tmp_path)])
    result = json.loads((tmp_path / "sampling.json").read_text())
    cells = {(row["decoding"], row["compile_backend"]) for row in result["results"]}
    assert cells == {("sequential", None), ("jacobi", None), ("sequential", "eager"), ("generate (KV cache)", None)}
    compiled, = [row for row in result["results"] if row["compile_backend"]]
    assert compiled["drift_from_sequential"]["token_disagreement"] == 0.0
    profiles = {row["compile_backend"]: row["milliseconds_per_token"] for row in result["profile"]}
    assert set(profiles) == {None, "eager"}
    for parts in profiles.values():
        assert {"layer 1 transformer", "layer 1 Mix-d inverse", "layer 3 Mix-1 inverse", "other"} <= set(parts)
        assert all(value > 0 for part, value in parts.items() if part != "other")
        assert sum(v for part, v in parts.items() if part != "total") == pytest.approx(parts["total"])
