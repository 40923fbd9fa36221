"""Train TarFlowLM (or its GPT-2 baseline) with Accelerate, on a laptop CPU, one GPU, or many.

    accelerate launch training/run.py --config quickstart                 # CPU, minutes, the shipped corpus
    accelerate launch training/run.py --config quickstart --model gpt2    # the autoregressive baseline
    accelerate launch --multi_gpu training/run.py --config text8-mixd --bf16
    accelerate launch training/run.py --config quickstart --resume_from_checkpoint latest

Also ``python -m training.run`` with the same flags. Every flag is listed by ``--help``; a ``--config`` preset
(``training/configs/``) sets defaults that flags override.
The output folder ends up holding the model in ``model/`` (EMA weights, tokenizer, model card: load it with
``AutoModel.from_pretrained(folder + "/model", trust_remote_code=True)``; it is exactly what ``--push_to_hub``
uploads) and, beside it, the run's records: ``results.json``, ``metrics.jsonl``, the TensorBoard logs and the last
checkpoints. A new run refuses an output folder holding an earlier one (``--resume_from_checkpoint latest``
continues it, ``--overwrite_output_dir`` replaces it). Exit status: 0 when done; 2 for a problem with the
settings, data, network, output folder or checkpoint (one line on stderr); 128 + N after signal N (SIGTERM,
SIGINT), with a checkpoint to resume from. docs/reliability.md lists every case.

This module is the run from start to finish: settings → data → recipe → `training.trainer.Trainer` → the
deliverable (the model folder with EMA weights, tokenizer and model card, results.json, the optional Hub upload),
plus the check that data-parallel replicas ended with the same weights.
"""

import hashlib
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import accelerate
from accelerate import Accelerator
import torch
import transformers
import yaml
from accelerate.utils import gather_object, set_seed
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from torch import nn
from transformers import PreTrainedTokenizerBase

from evaluation.entropy import unigram_entropy
from training.arguments import format_settings, parse_settings, resolved_settings
from training.checkpointing import (build_run_record, check_output_dir, check_resumable, claim_output_dir,
                                    find_resume_checkpoint, output_dir_lock, read_manifest, resume_training)
from training.data import DataConfig, build_datasets
from training.errors import AssetUnavailableError, TrainingStopped, UsageError
from training.recipes import RECIPES, build_tarflow_config
from training.stages import StageSchedule
from training.tokenization_char import is_character_tokenizer
from training.trainer import Trainer, build_accelerator, check_finite_parameters, hyperparameters

UNIGRAM_SAMPLE_BLOCKS = 10_000  # enough for the entropy to 3 decimals, cheap on OpenWebText


def stage_schedule(settings, tarflow_config, recipe) -> StageSchedule:
    """The progressive stages of a TarFlowLM run; the GPT-2 baseline always trains jointly."""
    total = tarflow_config.num_flow_layers
    if not recipe.progressive or not settings.stage_flow_layers:
        return StageSchedule([total], settings.max_steps)
    return StageSchedule(settings.stage_flow_layers, settings.max_steps, settings.stage_fractions, total)


def train_unigram_entropy(train_split) -> float:
    """Unigram entropy (bits per token) of the train blocks, over at most `UNIGRAM_SAMPLE_BLOCKS` of them: the loss
    of the best model that ignores context, the floor a trained model must beat."""
    step = max(1, len(train_split) // UNIGRAM_SAMPLE_BLOCKS)
    blocks = torch.stack([train_split[i]["input_ids"] for i in range(0, len(train_split), step)])
    return unigram_entropy(blocks, base=2)


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
    ids = trainer.recipe.sample(trainer.ema.module, settings.num_samples, sample_length(settings, block_size),
                                settings.seed)
    return tokenizer.batch_decode(ids.cpu(), skip_special_tokens=False)


def sample_length(settings, block_size: int) -> int:
    return settings.sample_length or block_size


def collect_results(trainer: Trainer, settings, data_config: DataConfig, extra: dict) -> dict:
    """The run's machine-readable summary (results.json): what was trained, on what, for how long, how well."""
    model = trainer.ema.module
    return {
        "model": settings.model, "model_name": f"{settings.preset_name}-{settings.model}",
        "output_dir": settings.output_dir, "model_folder": str(Path(settings.output_dir) / MODEL_SUBFOLDER),
        "steps": trainer.progress.step,
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
    """Validate and export the EMA weights with tokenizer and card (the deliverable, written first), write
    results.json; only then the optional parts: samples (added to the card), the Hub upload."""
    replicas = replica_fingerprints(trainer.accelerator, trainer.unwrapped_model, trainer.data_digest.hexdigest())
    results = collect_results(trainer, settings, data_config, {**extra, "replicas": replicas})
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        architecture = architecture_summary(trainer.ema.module)
        folder = export_model_folder(trainer.ema.module, tokenizer, build_model_card(results, resolved, architecture),
                                     settings.output_dir)
        write_results(results, settings.output_dir)
        results["samples"] = decode_samples(trainer, tokenizer, settings, data_config.block_size)
        if results["samples"]:
            build_model_card(results, resolved, architecture).save(folder / "README.md")
            write_results(results, settings.output_dir)
        accelerator.print(format_summary(results))
        if settings.push_to_hub:
            accelerator.print(f"pushed to {push_model_folder(folder, settings.push_to_hub)}")
    accelerator.wait_for_everyone()
    return results


def write_results(results: dict, output_dir: str | Path) -> None:
    (Path(output_dir) / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")


def format_summary(results: dict) -> str:
    lines = ["\nvalidation: " + ", ".join(f"{k} {v:.4f}" for k, v in results["validation"].items())]
    if results.get("unigram_entropy_bits") is not None:
        lines.append(f"unigram entropy of the train split: {results['unigram_entropy_bits']:.4f} bits per token")
    lines += [f"sample {i + 1}: {text}" for i, text in enumerate(results.get("samples", []))]
    lines.append(f"model folder: {results['model_folder']} (run records beside it in {results['output_dir']}: "
                 f"{RESULTS_FILE}, metrics.jsonl, checkpoints/)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Train, validate, export (and push) as the flags say; returns the results.json summary."""
    settings, data_config = parse_settings(argv)
    check_output_dir(settings.output_dir)
    if settings.push_to_hub:
        check_hub_access(settings.push_to_hub)
    recipe = RECIPES[settings.model]()
    progressive = recipe.progressive and len(settings.stage_flow_layers or []) > 1
    global_batch = settings.resolve_global_batch(int(os.environ.get("WORLD_SIZE", "1")))
    accelerator = build_accelerator(settings, progressive)
    accelerator.print(global_batch)
    with output_dir_lock(settings.output_dir, accelerator.is_main_process):
        try:
            claim_output_dir(settings.output_dir, settings.resume_from_checkpoint is not None,
                             settings.overwrite_output_dir, accelerator)
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
    trainer = Trainer(settings, accelerator, recipe, model, splits, schedule, is_character_tokenizer(tokenizer), record)
    accelerator.init_trackers("logs", config=hyperparameters(resolved))
    resume_training(accelerator, checkpoint, trainer.run_state)
    trainer.train()
    extra = {"unigram_entropy_bits": train_unigram_entropy(splits["train"]), "preset": settings.preset_name}
    return finish(trainer, settings, data_config, tokenizer, resolved, extra)


def resumable_checkpoint(accelerator, settings, record: dict) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names, once it is known to be whole and written by this run's
    settings (`training.checkpointing.check_resumable`)."""
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



# --- The deliverable: model folder, model card, Hub upload ----------------------------------------------------

MODEL_SUBFOLDER = "model"
"""The exported model inside ``--output_dir``: exactly what ``--push_to_hub`` uploads. The run's own records
(``results.json``, ``metrics.jsonl``, ``training_config.yaml``, ``checkpoints/``, ``logs/``, ``training.lock``)
stay beside it, in ``--output_dir``."""
RESULTS_FILE = "results.json"
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json", "*.py",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
               "vocab.json", "merges.txt", "chat_template.jinja", "README.md")
"""What is uploaded (an allow-list): config, weights, code, tokenizer, generation config, card. Anything else in
the folder (a stray ``.env``, an editor's backup) stays local."""


def export_model_folder(model: nn.Module, tokenizer: PreTrainedTokenizerBase, card: ModelCard,
                        output_dir: str | Path) -> Path:
    """``save_pretrained`` of the model (config, safetensors, and for TarFlowLM its code) and of the tokenizer,
    plus the card as README.md, into ``output_dir/model`` (written beside it, then renamed over any older export,
    so the folder holds this model only), so ``AutoModel.from_pretrained(folder)`` and
    ``AutoTokenizer.from_pretrained(folder)`` work. Returns the folder."""
    check_finite_parameters(model, f"export to {output_dir}")
    folder = Path(output_dir) / MODEL_SUBFOLDER
    temporary = folder.with_name(f".tmp-{MODEL_SUBFOLDER}")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    card.save(temporary / "README.md")
    shutil.rmtree(folder, ignore_errors=True)
    temporary.rename(folder)
    return folder


def push_model_folder(folder: str | Path, repo_id: str, api: HfApi | None = None) -> str:
    """Create `repo_id` if needed and upload the model folder's `MODEL_FILES`; returns the commit URL."""
    api = api or HfApi()
    api.create_repo(repo_id, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               allow_patterns=list(MODEL_FILES), commit_message="Upload TarFlowLM model")
    return str(commit)


def check_hub_access(repo_id: str, api: HfApi | None = None) -> str:
    """Before training, not after it: the Hub answers, the token is valid and may write to `repo_id`'s namespace.
    Returns the account name."""
    api = api or HfApi()
    try:
        identity = api.whoami()
    except Exception as error:  # offline, no token, a bad token, no network: each its own exception type
        raise AssetUnavailableError(f"--push_to_hub {repo_id}: cannot reach the Hugging Face Hub as a logged-in user "
                                    f"({str(error).strip().splitlines()[0]}); log in with `hf auth login` or set "
                                    "HF_TOKEN, or drop --push_to_hub") from error
    role = identity.get("auth", {}).get("accessToken", {}).get("role")
    namespaces = {identity["name"], *(org["name"] for org in identity.get("orgs", []))}
    owner = repo_id.split("/")[0] if "/" in repo_id else identity["name"]
    if role == "read" or owner not in namespaces:
        raise AssetUnavailableError(f"--push_to_hub {repo_id}: the token of {identity['name']!r} "
                                    f"({role or 'unknown'} access) cannot write to {owner!r}; it may write to "
                                    f"{sorted(namespaces)} with a write token")
    return identity["name"]


TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "template.md"
SHIPPED_CORPUS_NOTE = ("tiny-literary is a 2.4M-character public-domain corpus shipped for smoke tests: its numbers "
                       "are not comparable with text8 or OpenWebText results")

_USAGE = {  # AutoTokenizer reads config.json first, whose model code needs the same trust as the model
    "tarflow": ('from transformers import AutoModel, AutoTokenizer\n\n'
                'model = AutoModel.from_pretrained("{folder}", trust_remote_code=True)\n'
                'tokenizer = AutoTokenizer.from_pretrained("{folder}", trust_remote_code=True)\n'
                'ids = model.generate(max_new_tokens={length}, num_return_sequences={count}, seed={seed})\n'
                'print(tokenizer.batch_decode(ids))'),
    "gpt2": ('from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
             'model = AutoModelForCausalLM.from_pretrained("{folder}")\n'
             'tokenizer = AutoTokenizer.from_pretrained("{folder}")'),
}
_SUMMARY = {
    "tarflow": "A TarFlowLM model (Zhang et al., NeurIPS 2025): tokens are encoded to Gaussian latents whose prior is "
               "a stack of transformer autoregressive flows; the decoder is tied to the encoder codebook.",
    "gpt2": "The autoregressive baseline of a TarFlowLM run: a GPT-2 of the same depth, width and vocabulary, "
            "trained with the same script, data and steps.",
}


def metric_rows(results: dict) -> list[dict]:
    validation = results["validation"]
    rows = [{"split": "validation", "name": name, "value": f"{value:.4f}"} for name, value in validation.items()]
    if results.get("unigram_entropy_bits") is not None:
        rows.append({"split": "train", "name": "unigram entropy (bits/token, the floor to beat)",
                     "value": f"{results['unigram_entropy_bits']:.4f}"})
    return rows


def card_data(results: dict) -> ModelCardData:
    metric = "bpc" if "bpc" in results["validation"] else "ppl"
    evaluation = EvalResult(task_type="text-generation", dataset_type=results["data"]["dataset"],
                            dataset_name=results["data"]["dataset"], dataset_split="validation",
                            metric_type=metric, metric_value=round(results["validation"][metric], 4))
    return ModelCardData(language="en", license="apache-2.0", library_name="transformers",
                         tags=["tarflowlm", "normalizing-flow", "language-model", results["model"]],
                         model_name=results["model_name"], eval_results=[evaluation])


def model_location(results: dict, settings: dict) -> str:
    """Where a reader of the card loads the model from: the Hub repository when the run pushes there, else the
    local model folder's absolute path (a relative one would be looked up on the Hub from any other working
    directory; a card with a local path is never uploaded)."""
    return settings.get("push_to_hub") or str(Path(results.get("model_folder") or results["output_dir"]).resolve())


def portable(value):
    """`value` (a setting, a mapping or list of them) with every absolute local path cut to its last component:
    the card is uploaded, and ``/home/<user>/...`` says nothing to a reader but who trained where."""
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def build_model_card(results: dict, settings: dict, architecture: dict) -> ModelCard:
    """`results` as `training/run.py` writes them to results.json; `settings` the resolved training settings.
    Absolute local paths are left out (`portable`); the usage snippet loads from `model_location`."""
    location = model_location(results, settings)
    results, settings, architecture = portable(results), portable(settings), portable(architecture)
    data = results["data"]
    metric_note = ("The TarFlowLM value is the negative ELBO with one z sample per block: an upper bound on the "
                   "negative log-likelihood." if results["model"] == "tarflow" else "Exact negative log-likelihood.")
    return ModelCard.from_template(
        card_data(results), template_path=str(TEMPLATE), model_name=results["model_name"],
        summary=_SUMMARY[results["model"]], preset=settings.get("config") or "custom", steps=results["steps"],
        tokens=f"{results['tokens']:,}", skipped_steps=results["skipped_steps"], ema_decay=settings["ema_decay"],
        usage=_USAGE[results["model"]].format(  # the card's samples, reproduced: same seed, count and length
            folder=location, seed=settings["seed"], count=settings.get("num_samples") or 2,
            length=settings.get("sample_length") or data["block_size"]),
        metric_rows=metric_rows(results), metric_note=metric_note, dataset=data["dataset"],
        tokenizer=data["tokenizer"], block_size=data["block_size"],
        data_note=SHIPPED_CORPUS_NOTE if data["dataset"] == "tiny-literary" else "",
        architecture=yaml.safe_dump(architecture, sort_keys=False, default_flow_style=None).strip(),
        stages=results["stages"], training_settings=yaml.safe_dump(settings, sort_keys=False).strip(),
        samples=results.get("samples") or [], seed=settings["seed"])


# --- Data-parallel sanity check: every process trained on different blocks and holds the same weights -----

def weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def replica_fingerprints(accelerator: Accelerator, model: torch.nn.Module, data_sha256: str) -> list[dict]:
    """One entry per process: the SHA-256 of the blocks it trained on (since it started) and of its weights.
    Prints a warning if the weights differ, which would mean gradients were not synchronised."""
    mine = {"process": accelerator.process_index, "data_sha256": data_sha256, "weights_sha256": weights_sha256(model)}
    replicas = gather_object([mine])
    if len({replica["weights_sha256"] for replica in replicas}) > 1:
        accelerator.print("WARNING: the processes' weights differ: gradients were not synchronised")
    return replicas


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
