"""The training settings: one dataclass whose fields are the command-line flags, presets, and their resolution.

Precedence, lowest first: the dataclass defaults, a ``--config`` preset (YAML or JSON, flat keys named like the
flags, see ``training/configs/``), then the flags given on the command line. ``--model_config`` is the one nested
setting (the ``TarFlowConfig`` keyword arguments); a JSON value given on the command line is merged key by key over
the preset's, so ``--model_config '{"hidden_size": 64}'`` changes only the width.
Flags shared with ``transformers.TrainingArguments`` keep its names (``--output_dir``, ``--max_steps``, ...).
"""

import argparse
import dataclasses
import difflib
import inspect
import json
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from modeling_tarflow import TarFlowConfig
from training.data import DataConfig
from training.errors import SettingsError

MODEL_KINDS = ("tarflow", "gpt2")
SCHEDULER_TYPES = ("cosine", "linear", "constant_with_warmup")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
POSITIVE_SETTINGS = ("max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "logging_steps", "eval_steps", "save_total_limit",
                     "max_nonfinite_steps")
NON_NEGATIVE_SETTINGS = {  # name -> what 0 means; a negative clip norm or decay would reverse the update
    "learning_rate": "", "warmup_steps": " (0: no warmup)", "weight_decay": " (0: no decay)",
    "max_grad_norm": " (0: no clipping)", "save_steps": " (0: never)"}


@dataclass
class TrainingSettings:
    """How to train (the model's hyper-parameters are ``model_config``; the data's are `DataConfig`)."""

    config: str | None = field(default=None, metadata={
        "help": "preset file (.yaml/.json) or the name of one in training/configs/, e.g. 'quickstart'"})
    model: str = field(default="tarflow", metadata={
        "help": "'tarflow' (TarFlowLM) or 'gpt2' (a GPT2LMHeadModel baseline of the same depth and width)",
        "choices": MODEL_KINDS})
    model_config: dict | str | None = field(default=None, metadata={
        "help": "TarFlowConfig keyword arguments (JSON on the command line, merged over the preset's); "
                "max_position_embeddings defaults to --block_size"})
    output_dir: str | None = field(default=None, metadata={
        "help": "where the run's checkpoints, logs and records go, and its model, in the subfolder model/ "
                "(default: outputs/<preset>-<model>)"})
    seed: int = field(default=42, metadata={"help": "seeds the model init, data order and latent noise"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps in all (all stages together)"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "blocks per process per micro-batch"})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "blocks per process in evaluation"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    global_train_batch_size: int | None = field(default=None, metadata={
        "help": "blocks per optimizer step over all processes (the paper presets: 512, as MDLM); when set, "
                "--gradient_accumulation_steps is derived from it and the number of processes"})
    learning_rate: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate"})
    lr_scheduler_type: str = field(default="cosine", metadata={
        "help": "decay after warmup, restarted at each progressive stage", "choices": SCHEDULER_TYPES})
    warmup_steps: int = field(default=0, metadata={"help": "linear warmup steps at the start of every stage"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay (matrices only)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 disables)"})
    ema_decay: float = field(default=0.9999, metadata={
        "help": "EMA decay of the exported weights, warmed up as min(decay, (1 + n) / (10 + n)); 0 = no averaging"})
    stage_flow_layers: list[int] | None = field(default=None, metadata={
        "help": "progressive training: flow layers in use at each stage, e.g. '1 2 3' (stage s trains layers "
                "n_{s-1}+1..n_s, the earlier ones frozen); one stage with all layers (the default) is joint training"})
    stage_fractions: list[float] | None = field(default=None, metadata={
        "help": "share of --max_steps for each stage (default: equal shares)"})
    logging_steps: int = field(default=10, metadata={"help": "log the training loss every N steps"})
    eval_steps: int = field(default=500, metadata={"help": "validate the EMA weights every N steps (and at the end)"})
    save_steps: int = field(default=500, metadata={"help": "write a resumable checkpoint every N steps (0: never)"})
    save_total_limit: int = field(default=2, metadata={"help": "keep only the newest N checkpoints"})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "'latest' (the newest complete checkpoint in --output_dir, if any) or a checkpoint folder"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "start a new run in an --output_dir that holds an earlier one, deleting its model, checkpoints and "
                "metrics (without it, such a run is refused)"})
    max_nonfinite_steps: int = field(default=10, metadata={
        "help": "stop when this many consecutive steps had a NaN/inf loss or gradient (each one is skipped)"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (GPU); the mixture math stays float32"})
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the training model"})
    report_to: str = field(default="tensorboard", metadata={
        "help": "'tensorboard' (when installed) or 'none'; metrics.jsonl in --output_dir is always written"})
    num_samples: int = field(default=2, metadata={"help": "samples printed after training (0: none)"})
    sample_length: int | None = field(default=None, metadata={"help": "tokens per sample (default: the block)"})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to upload the final model to"})

    def __post_init__(self):
        self.model_config = parse_json_setting(self.model_config, "model_config")
        check_model_config_keys(self.model_config)
        for name in POSITIVE_SETTINGS:
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        for name, meaning in NON_NEGATIVE_SETTINGS.items():
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise SettingsError(f"--{name} must be >= 0{meaning}, got {getattr(self, name)}")
        if self.learning_rate == 0:
            warnings.warn("--learning_rate 0: the optimizer will not move the weights", UserWarning, stacklevel=2)
        if not 0.0 <= self.ema_decay < 1.0:
            raise SettingsError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.model not in MODEL_KINDS:
            raise SettingsError(f"--model must be one of {MODEL_KINDS}, got {self.model!r}")
        self._check_optimizer_and_seed()

    def _check_optimizer_and_seed(self) -> None:
        """What torch would refuse only once training starts (AdamW's betas, NumPy's seed range)."""
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SettingsError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.adam_epsilon < float("inf"):
            raise SettingsError(f"--adam_epsilon must be a finite number >= 0, got {self.adam_epsilon}")
        if not 0 <= self.seed < 2**32:
            raise SettingsError(f"--seed must be in [0, 2**32), got {self.seed}")
        if self.num_samples < 0 or (self.sample_length is not None and self.sample_length < 1):
            raise SettingsError(f"--num_samples must be >= 0 and --sample_length >= 1, got {self.num_samples} and "
                                f"{self.sample_length}")

    def resolve_global_batch(self, num_processes: int) -> str:
        """Derive the accumulation steps from ``global_train_batch_size`` (so a preset means the same optimisation
        on 1 GPU as on 8) and describe the resulting global batch."""
        per_step = self.per_device_train_batch_size * num_processes
        if self.global_train_batch_size is not None:
            if self.global_train_batch_size < 1 or self.global_train_batch_size % per_step:
                raise SettingsError(
                    f"--global_train_batch_size {self.global_train_batch_size} must be a positive multiple of "
                    f"--per_device_train_batch_size x processes = {self.per_device_train_batch_size} x "
                    f"{num_processes} = {per_step}")
            self.gradient_accumulation_steps = self.global_train_batch_size // per_step
        return (f"global batch {per_step * self.gradient_accumulation_steps} blocks = "
                f"{self.per_device_train_batch_size} per process x {num_processes} process(es) x "
                f"{self.gradient_accumulation_steps} accumulation step(s)")

    @property
    def preset_name(self) -> str:
        return Path(self.config).stem if self.config else "custom"


def parse_json_setting(value, name: str) -> dict:
    """A dict setting given as a mapping (preset) or a JSON string (command line)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise SettingsError(f"--{name} must be a JSON object, got {value!r}: {error}") from error
    if not isinstance(value, dict):
        raise SettingsError(f"--{name} must be a mapping, got {value!r}")
    return value


def tarflow_config_arguments() -> list[str]:
    """The keyword arguments `TarFlowConfig` itself declares (the model's hyper-parameters)."""
    return [name for name, parameter in inspect.signature(TarFlowConfig.__init__).parameters.items()
            if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD]


def check_model_config_keys(model_config: dict) -> None:
    """Every ``--model_config`` key must be a `TarFlowConfig` argument or attribute: `PretrainedConfig` would
    store a misspelt one (``hiden_size``) as an extra attribute and train the default width instead."""
    own = tarflow_config_arguments()
    unknown = sorted(set(model_config) - set(own) - set(TarFlowConfig().to_dict()))
    if unknown:
        guesses = {key: difflib.get_close_matches(key, own, n=1) for key in unknown}
        hints = "".join(f"; did you mean {guess[0]!r} for {key!r}?" for key, guess in guesses.items() if guess)
        raise SettingsError(f"--model_config: unknown key(s) {unknown}{hints}; TarFlowConfig takes {', '.join(own)}")


def find_preset(name: str) -> Path:
    """A preset file by path, or by name in ``training/configs/`` (``quickstart`` → ``quickstart.yaml``)."""
    candidates = [Path(name), CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml", CONFIG_DIR / f"{name}.json"]
    for path in candidates:
        if path.is_file():
            return path
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise SettingsError(f"no preset {name!r}: not a file, and not one of training/configs/ ({available})")


def load_preset(name: str) -> dict:
    """The flat ``{flag: value}`` mapping of a YAML or JSON preset; unknown keys and wrong types are an error."""
    path = find_preset(name)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SettingsError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: a preset is a mapping of flag names to values")
    fields = {**typing.get_type_hints(TrainingSettings), **typing.get_type_hints(DataConfig)}  # (HfArgumentParser
    unknown = sorted(set(values) - set(fields))  # rewrites dataclasses.fields' types in place)
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s) {unknown}; presets use the command-line flag names")
    for key, value in values.items():
        if not has_type(value, fields[key]):
            raise SettingsError(f"{path}: {key} must be {type_name(fields[key])}, got {value!r} "
                                f"({type(value).__name__}){yaml_number_hint(value)}")
    return values


def has_type(value, annotation) -> bool:
    """Whether a preset value fits a field's annotation. Preset values become argparse defaults, which skip the
    flag's type conversion, so a ``max_steps: 1000.0`` would otherwise reach the loop as a float."""
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        return any(has_type(value, option) for option in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return isinstance(value, list) and all(has_type(item, typing.get_args(annotation)[0]) for item in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(annotation) or annotation)


def type_name(annotation) -> str:
    return str(annotation).replace("typing.", "") if typing.get_args(annotation) else annotation.__name__


def yaml_number_hint(value) -> str:
    """YAML 1.1 (PyYAML) reads ``1e-3`` as text: a float needs a dot, ``1.0e-3``."""
    try:
        float(value)
    except (TypeError, ValueError):
        return ""
    return " (YAML reads a number without a dot before the exponent as text: write 1.0e-3, not 1e-3)" \
        if isinstance(value, str) else ""


def preset_flag(argv: list[str] | None) -> str | None:
    """``--config`` alone, read before the full parser is built so that ``--help`` can show the preset's values."""
    reader = argparse.ArgumentParser(add_help=False)
    reader.add_argument("--config")
    return reader.parse_known_args(argv)[0].config


def parse_settings(argv: list[str] | None = None) -> tuple[TrainingSettings, DataConfig]:
    """Flags → (training settings, data config), with a ``--config`` preset underneath the flags."""
    parser = HfArgumentParser((TrainingSettings, DataConfig))
    preset_name = preset_flag(argv)
    preset = load_preset(preset_name) if preset_name else {}
    parser.set_defaults(**preset)  # before parsing: --help then shows the preset's values
    if preset_name:
        parser.description = f"Defaults shown below include those of the preset {find_preset(preset_name)}."
    settings, data_config = parser.parse_args_into_dataclasses(argv)
    if isinstance(preset.get("model_config"), dict):  # a command-line model_config refines the preset's
        settings.model_config = {**preset["model_config"], **settings.model_config}
        check_model_config_keys(settings.model_config)
    if settings.output_dir is None:
        settings.output_dir = str(Path("outputs") / f"{settings.preset_name}-{settings.model}")
    check_settings_together(settings, data_config)
    return settings, data_config


def model_config_integer(model_config: dict, name: str, default: int) -> int:
    value = model_config.get(name, default)
    if type(value) is not int or value < 1:
        raise SettingsError(f"--model_config {name} must be a positive integer, got {value!r}")
    return value


def check_settings_together(settings: TrainingSettings, data_config: DataConfig) -> None:
    """Every setting against the others, before any data is read or step taken (a run must not train for hours
    and then fail drawing its samples): the block and the samples fit the model's context and its patches."""
    model_config = settings.model_config
    patch = model_config_integer(model_config, "patch_size",
                                 inspect.signature(TarFlowConfig.__init__).parameters["patch_size"].default)
    context = model_config_integer(model_config, "max_position_embeddings", data_config.block_size)
    patched = settings.model == "tarflow"  # the GPT-2 baseline reads tokens one by one
    if data_config.block_size > context:
        raise SettingsError(f"--block_size {data_config.block_size} exceeds --model_config max_position_embeddings "
                            f"{context}")
    if patched and data_config.block_size % patch:
        raise SettingsError(f"--block_size {data_config.block_size} must be a multiple of the patch size {patch}")
    length = settings.sample_length or data_config.block_size
    if settings.num_samples and length > context:
        raise SettingsError(f"--sample_length {length} exceeds the model's context of {context} tokens "
                            f"(--block_size {data_config.block_size}); lower --sample_length, or --num_samples 0")
    if settings.num_samples and patched and length % patch:
        raise SettingsError(f"--sample_length {length} must be a multiple of the patch size {patch}")


def resolved_settings(settings: TrainingSettings, data_config: DataConfig) -> dict:
    """Every setting with its final value, flat, as a preset would spell it (reusable as ``--config``)."""
    return {**dataclasses.asdict(settings), **dataclasses.asdict(data_config)}


def format_settings(values: dict) -> str:
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=None, width=120)
