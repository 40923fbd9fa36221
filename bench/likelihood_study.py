"""The paper's likelihood claims at small scale, on a CPU: each claim is a set of runs of ``training/run.py`` at
equal wall-clock, appended to ``bench/results/likelihood_study_<claim>.json`` as each finishes.

    python -m bench.likelihood_study --claim ladder          # Fig. 2, Fig. 3/8 (affine vs Mix-1), Table 2's order
    python -m bench.likelihood_study --claim num-mixtures    # Fig. 4
    python -m bench.likelihood_study --claim patch-depth     # the rebuttal's patch / depth table
    python -m bench.likelihood_study --claim mixd-split      # the presets' choices: depth split, channel mixing
    python -m bench.likelihood_study --claim learning-rate   # the rates both models are run at
    python -m bench.likelihood_study --claim headline --budget_seconds 600 --test_eval   # the gap to GPT-2
    python -m bench.likelihood_study --claim bpe-generative --budget_seconds 300 --generative_eval   # Table 6, small N
    python -m bench.likelihood_study --claim ladder --runs mix1 --seeds 1                # one run, another seed

Equal wall-clock: two short probe runs measure each configuration's seconds per optimizer step on this machine, and
the run gets ``budget / (seconds per step)`` steps (stage boundaries are fractions of those steps). Every run
records its steps, tokens, training seconds and curves (train and validation NELBO against tokens and seconds), so
results can be read at equal tokens too. The data default is ``../shared/data/literary-text8`` (a text8-style
corpus of 11.2M training characters): numbers measured on it are not text8 numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.environment import RESULTS_DIR, describe_environment

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = str((REPO.parent / "shared" / "data" / "literary-text8"))

# Shared by every run: a 6-transformer-layer budget of width 128 (the quickstart size), the paper's text8 latent
# dimension d = 5 and patch size 1, short blocks so a CPU run takes many optimizer steps.
COMMON = {"block_size": 128, "per_device_train_batch_size": 8, "learning_rate": 3e-3, "lr_scheduler_type": "cosine",
          "warmup_steps": 50, "adam_beta2": 0.99, "ema_decay": 0.99, "max_grad_norm": 1.0,
          "weight_decay": 0.0, "max_eval_blocks": 256, "logging_steps": 10, "save_steps": 0, "num_samples": 2,
          "sample_length": 128, "report_to": "none"}
MODEL = {"latent_dim": 5, "patch_size": 1, "hidden_size": 128, "num_attention_heads": 4, "maf_hidden_size": 64,
         "channel_mixing": False}


def _layers(coupling: str, count: int, depth: int, **extra) -> list[dict]:
    return [{"coupling": coupling, "num_layers": depth, **extra} for _ in range(count)]


def _mixd(split: list[int], mixtures: int = 2) -> list[dict]:
    """Mix-d (tied Mixture-Rosenblatt) then Mix-1 layers, `split` transformer layers each (§4)."""
    return [{"coupling": "mixture_rosenblatt", "num_layers": split[0]}] + [
        {"coupling": "mixture_cdf", "num_layers": depth, "num_mixtures": mixtures} for depth in split[1:]]


def tarflow(flow_layers: list[dict], stages: list[int] | None = None, fractions: list[float] | None = None,
            **model) -> dict:
    run = {"model": "tarflow", "model_config": {**MODEL, **model, "flow_layers": flow_layers}}
    if stages:
        run.update(stage_flow_layers=stages, stage_fractions=fractions)
    return run


# the BPE track: literary-docs (raw documents) with the real GPT-2 tokenizer (V = 50257), shorter blocks and
# batches because the Mix-d layer and the Bayes decoder cost B·T·V·d per step
BPE = {"dataset": str(REPO.parent / "shared" / "data" / "literary-docs"),
       "tokenizer": str(REPO.parent / "shared" / "data" / "gpt2-tokenizer"), "block_size": 64,
       "per_device_train_batch_size": 4, "max_eval_blocks": 64, "sample_length": 64}
AR = {"model": "gpt2", "model_config": {**MODEL, "flow_layers": _mixd([2, 2, 2])}}  # GPT-2 reads depth/width only
MIXD_411 = tarflow(_mixd([4, 1, 1]), [1, 2, 3], [0.9, 0.05, 0.05])  # 4 layers of Mix-d, then 1 per Mix-1 layer

RUNS = {
    # Fig. 2's ladder, Fig. 3/8 and Table 2 (3 flow layers x 2 transformer layers; 27 mixtures, as the paper's
    # text8 Mix-1; Mix-d's two Mix-1 layers have 2, as its text8 Mix-d)
    "ar": AR,
    "affine": tarflow(_layers("affine", 3, 2, autoregressive_dims=False)),
    "affine-maf": tarflow(_layers("affine", 3, 2, autoregressive_dims=True)),
    "mix1": tarflow(_layers("mixture_cdf", 3, 2, num_mixtures=27, autoregressive_dims=True)),
    "mixd": tarflow(_mixd([2, 2, 2])),
    "mixd-progressive": tarflow(_mixd([2, 2, 2]), [1, 2, 3], [0.8, 0.1, 0.1]),
    # Fig. 4: Mix-1 without the MAF head, V mixtures
    **{f"mix1-nomaf-v{v}": tarflow(_layers("mixture_cdf", 3, 2, num_mixtures=v, autoregressive_dims=False))
       for v in (1, 2, 27)},
    # the rebuttal's patch / depth trade-off, on Mix-d progressive models (the rebuttal's Mix-1 models do not leave
    # the unigram level in this budget): P = 1 is "mixd-progressive"; at P = 4, six flow layers instead of three
    **{f"mixd-p{p}": tarflow(_mixd([2, 2, 2]), [1, 2, 3], [0.8, 0.1, 0.1], patch_size=p, channel_mixing=True)
       for p in (2, 4)},
    "mixd-p4-l6": tarflow(_mixd([2, 2, 2, 2, 2, 2]), [1, 2, 3, 4, 5, 6], [0.75] + [0.05] * 5, patch_size=4,
                          channel_mixing=True),
    # Table 6 at small N on the BPE track (GPT-2 tokenizer, d = 16, Mix-1 with V = 64 as the paper's OWT models)
    "bpe-ar": {**BPE, **AR},
    "bpe-mix1": {**BPE, **tarflow(_layers("mixture_cdf", 3, 2, num_mixtures=64, autoregressive_dims=True),
                                  latent_dim=16)},
    "bpe-mixd": {**BPE, **tarflow(_mixd([2, 2, 2], mixtures=64), [1, 2, 3], [0.8, 0.1, 0.1], latent_dim=16)},
    # Mix-d depth split, stage lengths and channel mixing (choices the presets make)
    "mixd-411-progressive": MIXD_411,
    "mixd-411-progressive-chmix": {**MIXD_411, "model_config": {**MIXD_411["model_config"], "channel_mixing": True}},
    "mixd-6": tarflow(_mixd([6])),
    # the headline pair, each at the rate the learning-rate claim picked on validation
    "ar-tuned": {**AR, "learning_rate": 6e-3},
    "mixd-411-progressive-tuned": {**MIXD_411, "learning_rate": 3e-3},
    # the README's main job against the baseline, at equal wall-clock, on the shipped corpus (its own preset)
    "quickstart-tarflow": {"config": "quickstart", "dataset": "tiny-literary"},
    "quickstart-ar": {"config": "quickstart", "dataset": "tiny-literary", "model": "gpt2", "learning_rate": 6e-3},
    # learning rates (the baseline gets its own tuned rate)
    **{f"ar-lr{lr:g}": {**AR, "learning_rate": lr} for lr in (1e-3, 6e-3)},
    **{f"mixd-411-progressive-lr{lr:g}": {**MIXD_411, "learning_rate": lr} for lr in (1e-3, 6e-3)},
}

CLAIMS = {
    "ladder": ["ar", "affine", "affine-maf", "mix1", "mixd", "mixd-progressive"],   # claims 1, 2 and 5
    "num-mixtures": [f"mix1-nomaf-v{v}" for v in (1, 2, 27)],                      # claim 3
    "patch-depth": ["mixd-progressive", "mixd-p2", "mixd-p4", "mixd-p4-l6"],      # claim 4
    # claim 6; bpe-mixd needs a GPU: its frozen-layer stages take 15-40 s per step at V = 50257 on 2 CPU cores
    "bpe-generative": ["bpe-ar", "bpe-mix1", "bpe-mixd"],
    "mixd-split": ["mixd-411-progressive", "mixd-411-progressive-chmix", "mixd-6"],
    "learning-rate": ["ar-lr0.001", "ar-lr0.006", "mixd-411-progressive-lr0.001", "mixd-411-progressive-lr0.006"],
    "headline": ["ar-tuned", "mixd-411-progressive-tuned"],
    "quickstart": ["quickstart-tarflow", "quickstart-ar"],
}


def run_flags(run: dict, common: dict) -> list[str]:
    flags = []
    for key, value in {**common, **run}.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = json.dumps(value)
        flags.append(f"--{key}")
        flags.extend(str(v) for v in value) if isinstance(value, list) else flags.append(str(value))
    return flags


def train(flags: list[str], output_dir: Path, log_path: Path) -> tuple[dict, float]:
    """One `training/run.py` process; returns its results.json and the wall-clock seconds of the process."""
    command = [sys.executable, "-m", "training.run", *flags, "--output_dir", str(output_dir)]
    started = time.perf_counter()
    with log_path.open("w") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads((output_dir / "results.json").read_text()), time.perf_counter() - started


def seconds_per_step(name: str, run: dict, common: dict, work: Path, probe_steps: int) -> float:
    """Measured on two probes of ``probe_steps`` and twice as many steps with the same stage fractions (per-stage
    costs differ, frozen layers are cheap): the difference of their training seconds is the cost of the extra
    steps without the start-up (first steps, data loading) that one probe would spread over every step."""
    seconds = []
    for steps in (probe_steps, 2 * probe_steps):
        flags = run_flags(run, {**common, "max_steps": steps, "eval_steps": steps, "num_samples": 0,
                                "max_eval_blocks": 1})
        results, _ = train(flags, work / f"probe-{name}-{steps}", work / f"probe-{name}-{steps}.log")
        seconds.append(results["train_seconds"])
    return max(seconds[1] - seconds[0], 1e-3) / probe_steps


def read_curves(output_dir: Path, tokens_per_step: int) -> dict:
    """Train and validation curves from metrics.jsonl, with cumulative training seconds and tokens."""
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    train_points, eval_points, seconds, last_step = [], [], 0.0, 0
    for line in lines:
        if "train/loss" in line:
            steps = line["step"] - last_step
            seconds += steps * tokens_per_step / line["train/tokens_per_second"]
            last_step = line["step"]
            train_points.append({"step": line["step"], "tokens": line["step"] * tokens_per_step,
                                 "seconds": round(seconds, 2), "nats": line["train/loss"]})
        if "eval/loss" in line:
            eval_points.append({"step": line["step"], "tokens": line["step"] * tokens_per_step,
                                "seconds": round(seconds, 2), "nats": line["eval/loss"]})
    return {"train": train_points, "validation": eval_points}


def test_bound(output_dir: Path, dataset: str, block_size: int, num_z_samples: int, max_blocks: int) -> dict:
    """The test-split NELBO (and the importance-weighted bound with all z draws) via `evaluation.likelihood`."""
    out = output_dir / "test_likelihood.json"
    ks = sorted({1, num_z_samples})
    command = [sys.executable, "-m", "evaluation.likelihood", str(output_dir), "--data", dataset, "--split", "test",
               "--block_size", str(block_size), "--max_blocks", str(max_blocks), "--num_z_samples",
               str(num_z_samples), "--iw_k", *map(str, ks), "--output", str(out)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    record = json.loads(out.read_text())
    return {"bounds": record["bounds"], "headline": record["headline"], "counts": record["counts"]}


def generative_scores(output_dir: Path, run: dict, args) -> dict:
    """Table 6's metrics at small N via `evaluation.generative`: Gen-PPL under the offline reference LM, entropy,
    MAUVE against as many validation blocks of the run's corpus (the data's own row too)."""
    out = output_dir / "generative.json"
    command = [sys.executable, "-m", "evaluation.generative", str(output_dir), "--reference_data",
               run.get("dataset", args.dataset), "--num_samples", str(args.generative_samples), "--sample_length",
               str(run.get("sample_length", COMMON["sample_length"])), "--seed", "0", "--score_references",
               "--output", str(out)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    record = json.loads(out.read_text())
    return {"summary": record["summary"], "mauve": record["mauve"], "references": record.get("references"),
            "sample_texts": record["samples"]["texts"][:4], "command": record["command"]}


def run_one(name: str, seed: int, args, work: Path) -> dict:
    run = RUNS[name]
    # a preset run keeps its own settings: only the data position, seed and length are the study's
    common = {"seed": seed, "report_to": "none", "save_steps": 0} if "config" in run else \
        {**COMMON, "dataset": args.dataset, "seed": seed}
    per_step = seconds_per_step(name, run, common, work, args.probe_steps)
    max_steps = max(10, int(args.budget_seconds / per_step))  # wall-clock budget → optimizer steps
    common.update(max_steps=max_steps, eval_steps=max(1, max_steps // args.num_evals))
    output_dir = work / f"{name}-seed{seed}"
    load_before = os.getloadavg()[0]
    results, wall = train(run_flags(run, common), output_dir, work / f"{name}-seed{seed}.log")
    tokens_per_step = results["tokens"] // results["steps"]
    record = {"name": name, "seed": seed, "flags": run_flags(run, common), "probe_seconds_per_step": per_step,
              "budget_seconds": args.budget_seconds, "steps": results["steps"], "tokens": results["tokens"],
              "train_seconds": results["train_seconds"], "process_seconds": wall,
              "num_parameters": results["num_parameters"], "stages": results["stages"],
              "validation_bpc": results["validation"].get("bpc"), "validation": results["validation"], "samples": results.get("samples", []),
              "curves": read_curves(output_dir, tokens_per_step),
              "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}
    if args.test_eval:
        record["test"] = test_bound(output_dir, run.get("dataset", args.dataset),
                                    run.get("block_size", COMMON["block_size"]), args.num_z_samples, args.test_blocks)
    if args.generative_eval:
        record["generative"] = generative_scores(output_dir, run, args)
    return record


def append_record(claim: str, record: dict) -> Path:
    """Add (or replace: same name and seed) one run in the claim's JSON, which is rewritten after every run."""
    path = RESULTS_DIR / f"likelihood_study_{claim}.json"
    data = json.loads(path.read_text()) if path.exists() else {"claim": claim, "runs": []}
    data["runs"] = [r for r in data["runs"] if (r["name"], r["seed"]) != (record["name"], record["seed"])]
    data["runs"].append(record)
    data["environment"] = describe_environment()
    data["common_settings"], data["model_defaults"] = COMMON, MODEL
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claim", required=True, choices=sorted(CLAIMS), help="which set of runs")
    parser.add_argument("--runs", nargs="+", default=None, help="only these runs of the claim (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    parser.add_argument("--budget_seconds", type=float, default=120.0, help="training wall-clock per run")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="training.data source (a folder or Hub id)")
    parser.add_argument("--probe_steps", type=int, default=60, help="steps of the seconds-per-step probe")
    parser.add_argument("--num_evals", type=int, default=8, help="validation points on each curve")
    parser.add_argument("--test_eval", action="store_true", help="also score the test split (and IW bound)")
    parser.add_argument("--num_z_samples", type=int, default=8, help="z draws per test block (--test_eval)")
    parser.add_argument("--test_blocks", type=int, default=1000, help="test blocks scored (--test_eval)")
    parser.add_argument("--generative_eval", action="store_true",
                        help="also sample and score Gen-PPL, MAUVE and entropy (evaluation.generative)")
    parser.add_argument("--generative_samples", type=int, default=48, help="samples scored (--generative_eval)")
    parser.add_argument("--work_dir", default="runs/likelihood_study", help="where the run folders go")
    args = parser.parse_args(argv)
    unknown = set(args.runs or []) - set(CLAIMS[args.claim])
    if unknown:
        parser.error(f"--runs {sorted(unknown)} are not runs of claim {args.claim!r}: {CLAIMS[args.claim]}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    work = REPO / args.work_dir / args.claim
    work.mkdir(parents=True, exist_ok=True)
    for name in args.runs or CLAIMS[args.claim]:
        for seed in args.seeds:
            record = run_one(name, seed, args, work)
            path = append_record(args.claim, record)
            bpc = record.get("test", {}).get("headline", {}).get("value", math.nan)
            validation = ", ".join(f"{key} {value:.4f}" for key, value in record["validation"].items())
            print(f"{args.claim}/{name} seed {seed}: {record['steps']} steps, {record['train_seconds']:.0f} s, "
                  f"validation {validation}, test {bpc:.4f} -> {path}", flush=True)


if __name__ == "__main__":
    main()
