"""Training throughput (tokens per second) of `training/run.py`: TarFlowLM against its `--model gpt2` baseline of the
same size, on the quickstart preset and on a text8-mixd-shaped model of reduced width, in the same run.

Each measurement is a real `training/run.py` process on the shipped corpus (data loading, optimizer, EMA and
logging included; validation, checkpoints and start-up excluded: the figures come from the run's own
``train/tokens_per_second`` log, whose clock stops outside the optimizer steps). The first log window of every
stage is dropped (warm-up). Configurations run interleaved, `--rounds` times; the best round is reported, since
background load only ever slows a round down. Each run uses `--threads` CPU threads (``OMP_NUM_THREADS``; 1 is
what ``accelerate launch`` gives a CPU run by default, and is immune to the stalls that several threads suffer when
another process shares the cores).

    python -m bench.train_throughput [--steps_per_stage 10] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.environment import write_result

REPO = Path(__file__).resolve().parent.parent
LOG_WINDOW_STEPS = 5

# text8-mixd (the preset: Mix-d tied + 2 x Mix-1 with V = 2, 12 transformer layers) at width 128 instead of 768.
TEXT8_MIXD_NARROW = {"hidden_size": 128, "num_attention_heads": 4, "maf_hidden_size": 64}
CONFIGURATIONS = {
    "quickstart": ["--config", "quickstart"],
    "text8-mixd-width128": ["--config", "text8-mixd", "--dataset", "tiny-literary", "--bf16", "false",
                            "--per_device_train_batch_size", "8", "--model_config", json.dumps(TEXT8_MIXD_NARROW)],
}


# TarFlowLM progressive (stage 1: flow layer 1; stage 2: layer 2 trained on frozen layer 1; stage 3: layer 3 on
# frozen 1-2), TarFlowLM joint (every layer trained: the same work per step as the baseline), and the baseline.
RUNS = {"tarflow": ["--model", "tarflow", "--stage_flow_layers", "1", "2", "3", "--stage_fractions", "1", "1", "1"],
        "tarflow_joint": ["--model", "tarflow", "--stage_flow_layers", "3"],
        "gpt2": ["--model", "gpt2"]}


def run_flags(configuration: str, run: str, steps_per_stage: int, output_dir: Path) -> list[str]:
    num_stages = 3 if run == "tarflow" else 1
    return [*CONFIGURATIONS[configuration], *RUNS[run], "--output_dir", str(output_dir),
            "--max_steps", str(steps_per_stage * num_stages),
            "--warmup_steps", "2", "--logging_steps", str(LOG_WINDOW_STEPS), "--eval_steps", "100000",
            "--save_steps", "0", "--max_eval_blocks", "8", "--num_samples", "0", "--report_to", "none"]


def measure_run(flags: list[str], output_dir: Path, threads: int) -> dict:
    """Tokens per second of one training process, overall and per progressive stage."""
    done = subprocess.run([sys.executable, str(REPO / "training" / "run.py"), *flags], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise RuntimeError(f"training/run.py {' '.join(flags)} failed:\n{done.stderr[-3000:]}")
    windows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [w for w in windows if "train/tokens_per_second" in w]
    per_stage: dict[str, list[float]] = {}
    for window in windows:
        per_stage.setdefault(str(window["train/stage"]), []).append(window["train/tokens_per_second"])
    steady = {stage: values[1:] or values for stage, values in per_stage.items()}
    results = json.loads((output_dir / "results.json").read_text())
    return {"tokens_per_second": statistics.median([v for values in steady.values() for v in values]),
            "per_stage": {stage: statistics.median(values) for stage, values in steady.items()},
            "num_parameters": results["num_parameters"], "tokens_per_step": results["tokens"] // results["steps"]}


def best_round(rounds: list[dict]) -> dict:
    best = max(rounds, key=lambda measured: measured["tokens_per_second"])
    return {**best, "rounds_tokens_per_second": [measured["tokens_per_second"] for measured in rounds]}


def measure(steps_per_stage: int, num_rounds: int, threads: int) -> dict:
    rounds: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as scratch:
        for index in range(num_rounds):
            for configuration in CONFIGURATIONS:
                for run in RUNS:
                    output_dir = Path(scratch) / f"{configuration}-{run}-{index}"
                    flags = run_flags(configuration, run, steps_per_stage, output_dir)
                    rounds.setdefault((configuration, run), []).append(measure_run(flags, output_dir, threads))
                    print(configuration, run, round(rounds[configuration, run][-1]["tokens_per_second"]),
                          "tokens/s", flush=True)
    return {configuration: summarize(configuration, rounds, steps_per_stage) for configuration in CONFIGURATIONS}


def summarize(configuration: str, rounds: dict, steps_per_stage: int) -> dict:
    best = {run: best_round(rounds[configuration, run]) for run in RUNS}
    gpt2 = best["gpt2"]["tokens_per_second"]
    return {"flags": {run: run_flags(configuration, run, steps_per_stage, Path("<output_dir>")) for run in RUNS},
            **best, "ratio_over_gpt2": {run: best[run]["tokens_per_second"] / gpt2 for run in ("tarflow",
                                                                                            "tarflow_joint")}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps_per_stage", type=int, default=10,
                        help="optimizer steps per progressive stage (GPT-2 runs as many steps as one stage)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best one is reported")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per training process")
    args = parser.parse_args(argv)
    print(json.dumps(vars(args)))
    payload = {
        "description": "training/run.py tokens per second (all processes) of TarFlowLM trained progressively "
                       "(per_stage 1-3: flow layers 1, 1-2, 1-3 in use, the earlier ones frozen, so stage 3 "
                       "backpropagates through one flow layer only), TarFlowLM trained jointly (every layer, the "
                       "same work per step as the baseline), and the --model gpt2 baseline of the same depth, width "
                       "and vocabulary; tokens_per_second: median over the steady log windows of all stages",
        "settings": vars(args) | {"log_window_steps": LOG_WINDOW_STEPS},
        "cpu": measure(args.steps_per_stage, args.rounds, args.threads),
        "gpu": {"measured": False, "reason": "no GPU on the machine that ran this benchmark; run it on one "
                                             "(the text8 presets use --bf16) to fill this row"},
    }
    path = write_result("train_throughput", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
