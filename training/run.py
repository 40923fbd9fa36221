"""Train TarFlowLM (or its GPT-2 baseline) with Accelerate, on a laptop CPU, one GPU, or many.

    accelerate launch training/run.py --config quickstart                 # CPU, minutes, the shipped corpus
    accelerate launch training/run.py --config quickstart --model gpt2    # the autoregressive baseline
    accelerate launch --multi_gpu training/run.py --config text8-mixd --bf16
    accelerate launch training/run.py --config quickstart --resume_from_checkpoint latest

Every flag is listed by ``--help``; a ``--config`` preset (``training/configs/``) sets defaults that flags override.
The output folder ends up holding the model (EMA weights, tokenizer, model card: load it with
``AutoModel.from_pretrained(folder, trust_remote_code=True)``), ``results.json``, ``metrics.jsonl``, the TensorBoard
logs and the last checkpoints. Exit status: 0 when done; 2 for a problem with the settings, data, network, output
folder or checkpoint (one line on stderr); 128 + N after signal N (SIGTERM, SIGINT), with a checkpoint to resume
from. docs/reliability.md lists every case.
"""

import json
import os
import platform
import sys
from pathlib import Path

import accelerate
import torch
import transformers
import yaml
from accelerate.utils import set_seed

from training.arguments import format_settings, parse_settings, resolved_settings
from training.checkpointing import find_resume_checkpoint, output_dir_lock, read_manifest
from training.data import DataConfig, build_datasets, unigram_entropy_bits
from training.errors import TrainingStopped, UsageError
from training.export import check_hub_access, export_model_folder, push_model_folder
from training.loop import Trainer, build_accelerator, resume_training
from training.model_card import build_model_card
from training.models import RECIPES, build_tarflow_config
from training.replicas import replica_fingerprints
from training.run_record import build_run_record, check_resumable
from training.stages import StageSchedule
from training.tracking import hyperparameters

UNIGRAM_SAMPLE_BLOCKS = 10_000  # enough for the entropy to 3 decimals, cheap on OpenWebText


def stage_schedule(settings, tarflow_config, recipe) -> StageSchedule:
    """The progressive stages of a TarFlowLM run; the GPT-2 baseline always trains jointly."""
    total = tarflow_config.num_flow_layers
    if not recipe.progressive or not settings.stage_flow_layers:
        return StageSchedule([total], settings.max_steps)
    return StageSchedule(settings.stage_flow_layers, settings.max_steps, settings.stage_fractions, total)


def train_unigram_entropy(train_split) -> float:
    """Unigram entropy (bits per token) of the train blocks, over at most `UNIGRAM_SAMPLE_BLOCKS` of them."""
    step = max(1, len(train_split) // UNIGRAM_SAMPLE_BLOCKS)
    return unigram_entropy_bits(torch.stack([train_split[i]["input_ids"] for i in range(0, len(train_split), step)]))


def describe_run(model, resolved: dict, architecture: dict, schedule: StageSchedule) -> str:
    num_parameters = sum(p.numel() for p in model.parameters())
    return (f"Resolved settings:\n{format_settings(resolved)}\n"
            f"Model: {type(model).__name__}, {num_parameters:,} parameters\n{format_settings(architecture)}\n"
            f"Stages: {schedule.describe()}\n")


def architecture_summary(model) -> dict:
    """The model's configuration without the bookkeeping fields `transformers` adds."""
    return model.config.to_diff_dict() | {"model_type": model.config.model_type}


def decode_samples(trainer: Trainer, tokenizer, settings, block_size: int) -> list[str]:
    if settings.num_samples == 0:
        return []
    length = settings.sample_length or block_size
    ids = trainer.recipe.sample(trainer.ema.module, settings.num_samples, length, settings.seed)
    return tokenizer.batch_decode(ids.cpu(), skip_special_tokens=False)


def collect_results(trainer: Trainer, settings, data_config: DataConfig, extra: dict) -> dict:
    """The run's machine-readable summary (results.json): what was trained, on what, for how long, how well."""
    model = trainer.ema.module
    return {
        "model": settings.model, "model_name": f"{settings.preset_name}-{settings.model}",
        "output_dir": settings.output_dir, "steps": trainer.progress.step,
        "skipped_steps": trainer.progress.skipped_steps, "tokens": trainer.progress.tokens,
        "train_seconds": trainer.log.total_seconds,
        "tokens_per_second": trainer.log.tokens_per_second,
        "validation": trainer.last_eval or trainer.evaluate(),
        "num_parameters": sum(p.numel() for p in model.parameters()), "stages": trainer.schedule.describe(),
        "data": {"dataset": data_config.dataset, "tokenizer": data_config.tokenizer,
                 "block_size": data_config.block_size},
        "num_processes": trainer.accelerator.num_processes, "device": str(trainer.accelerator.device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__},
        **extra,
    }


def finish(trainer: Trainer, settings, data_config: DataConfig, tokenizer, resolved: dict, extra: dict) -> dict:
    """Validate, sample, export the EMA weights with tokenizer and card, write results.json, optionally push."""
    replicas = replica_fingerprints(trainer.accelerator, trainer.unwrapped_model, trainer.data_digest.hexdigest())
    results = collect_results(trainer, settings, data_config, {**extra, "replicas": replicas})
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        results["samples"] = decode_samples(trainer, tokenizer, settings, data_config.block_size)
        card = build_model_card(results, resolved, architecture_summary(trainer.ema.module))
        folder = export_model_folder(trainer.ema.module, tokenizer, card, settings.output_dir)
        (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        accelerator.print(format_summary(results))
        if settings.push_to_hub:
            accelerator.print(f"pushed to {push_model_folder(folder, settings.push_to_hub)}")
    accelerator.wait_for_everyone()
    return results


def format_summary(results: dict) -> str:
    lines = ["\nvalidation: " + ", ".join(f"{k} {v:.4f}" for k, v in results["validation"].items())]
    if results.get("unigram_entropy_bits") is not None:
        lines.append(f"unigram entropy of the train split: {results['unigram_entropy_bits']:.4f} bits per token")
    lines += [f"sample {i + 1}: {text}" for i, text in enumerate(results.get("samples", []))]
    lines.append(f"model folder: {results['output_dir']} (results.json, metrics.jsonl, checkpoints/)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Train, validate, export (and push) as the flags say; returns the results.json summary."""
    settings, data_config = parse_settings(argv)
    if settings.push_to_hub:
        check_hub_access(settings.push_to_hub)
    recipe = RECIPES[settings.model]()
    progressive = recipe.progressive and len(settings.stage_flow_layers or []) > 1
    global_batch = settings.resolve_global_batch(int(os.environ.get("WORLD_SIZE", "1")))
    accelerator = build_accelerator(settings, progressive)
    accelerator.print(global_batch)
    with output_dir_lock(settings.output_dir, accelerator.is_main_process):
        try:
            return train_and_export(accelerator, settings, data_config, recipe)
        finally:
            accelerator.end_training()


def train_and_export(accelerator, settings, data_config: DataConfig, recipe) -> dict:
    with accelerator.main_process_first():
        splits, tokenizer = build_datasets(data_config)
    tarflow_config = build_tarflow_config(settings.model_config, tokenizer, data_config.block_size)
    schedule = stage_schedule(settings, tarflow_config, recipe)
    set_seed(settings.seed)  # the same initial weights on every process
    model = recipe.build(tarflow_config, tokenizer)
    resolved, architecture = resolved_settings(settings, data_config), architecture_summary(model)
    accelerator.print(describe_run(model, resolved, architecture, schedule))
    record = build_run_record(resolved, architecture, schedule, accelerator.num_processes)
    checkpoint = resumable_checkpoint(accelerator, settings, record)
    if accelerator.is_main_process:  # only once the run is known to go ahead
        (Path(settings.output_dir) / "training_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    trainer = Trainer(settings, accelerator, recipe, model, splits, schedule, data_config.uses_characters, record)
    accelerator.init_trackers("logs", config=hyperparameters(resolved))
    resume_training(accelerator, checkpoint, trainer.progress)
    trainer.train()
    extra = {"unigram_entropy_bits": train_unigram_entropy(splits["train"]), "preset": settings.preset_name}
    return finish(trainer, settings, data_config, tokenizer, resolved, extra)


def resumable_checkpoint(accelerator, settings, record: dict) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names, once it is known to be whole and written by this run's
    settings (`training.run_record`)."""
    checkpoint = find_resume_checkpoint(settings.resume_from_checkpoint, settings.output_dir, accelerator.print)
    if checkpoint is None:
        if settings.resume_from_checkpoint:
            accelerator.print("no checkpoint to resume from: starting from step 0")
        return None
    manifest = read_manifest(checkpoint)
    check_resumable(manifest["run"], record, manifest["step"], str(checkpoint))
    return checkpoint


def cli(argv: list[str]) -> int:
    """`main` for the command line: a problem with the input, the environment or the output folder is one line
    on stderr (exit 2), a stop by signal exits 128 + its number after its one-line note; bugs keep tracebacks."""
    try:
        main(argv)
    except TrainingStopped as stop:  # its note is printed by the main process only
        return stop.exit_code
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
