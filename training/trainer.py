"""The trainer: what happens at each optimizer step of a run. Accelerate does devices, processes, mixed precision,
accumulation and checkpoint I/O; this module decides the rest, in the order of a step:

- the optimizer (AdamW, decay on matrices only) and the learning-rate schedule, restarted at each progressive stage
  (§3.3);
- the non-finite guard: a step whose loss or gradient is NaN/inf is skipped, too many in a row stop the run, and
  non-finite weights are never saved; SIGTERM / SIGINT stop the run at a step boundary with a checkpoint;
- the exponential moving average of the weights, which is what is validated, sampled and exported (as in MDLM /
  bd3lms);
- held-out evaluation: the mean loss per token over the validation blocks, with noise isolated from training;
- logging: one ``metrics.jsonl`` line per log step (and TensorBoard events under ``logs/`` when installed): the
  loss, TarFlowLM's NELBO parts, and a ``stage/*`` line at each progressive stage boundary.
"""

import hashlib
import importlib.util
import json
import math
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.tracking import GeneralTracker, on_main_process
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm
from transformers import get_scheduler

from evaluation.bounds import bits, perplexity
from evaluation.training_logs import METRICS_FILE
from training.arguments import TrainingSettings
from training.checkpointing import RunState, TrainingProgress, checkpoints_root, save_checkpoint
from training.errors import DataError, SettingsError, TrainingStopped
from training.recipes import isolated_rng
from training.stages import Stage, StageSchedule, freeze_averaged_weights, set_trainable


# --- Optimizer and learning-rate schedule -------------------------------------------------------------------

def build_optimizer(model: nn.Module, settings: TrainingSettings) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT's rule: biases, norms and 1-D scales are not decayed).

    One optimizer serves every progressive stage: parameters without a gradient (frozen, or not yet in use) are
    skipped by AdamW's step, decay included, and their moments are created when they first train.
    """
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    not_decayed = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": settings.weight_decay},
              {"params": not_decayed, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(settings.adam_beta1, settings.adam_beta2),
                             eps=settings.adam_epsilon)


def stagewise_lr_factor(schedule: StageSchedule, scheduler_type: str, warmup_steps: int):
    """step → lr factor: the `transformers` schedule of the step's stage, at the step's offset in that stage.

    Each stage trains newly added layers from scratch, so each gets its own warmup and decay. A plain function,
    so `LambdaLR.state_dict` keeps only the step count (the curve is rebuilt from the settings on resume).
    """
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # only to obtain the lr curves
    stage_factors = [get_scheduler(scheduler_type, probe, num_warmup_steps=min(warmup_steps, stage.num_steps - 1),
                                   num_training_steps=stage.num_steps).lr_lambdas[0] for stage in schedule.stages]

    def lr_factor(step: int) -> float:
        stage = schedule.stage_at(step)
        return stage_factors[stage.index](step - stage.start_step)

    return lr_factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: StageSchedule,
                       settings: TrainingSettings) -> LambdaLR:
    """Stepped once per optimizer step (not per process), so the schedule counts optimizer steps on any cluster."""
    return LambdaLR(optimizer, stagewise_lr_factor(schedule, settings.lr_scheduler_type, settings.warmup_steps))


# --- Exponential moving average of the weights --------------------------------------------------------------

def warmed_up_decay(decay: float, num_averaged: int) -> float:
    """min(decay, (1 + n) / (10 + n)): early averages forget the random initialisation quickly, so short runs
    (the CPU quickstart) export trained weights, while long runs reach the nominal decay."""
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged))


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """A frozen copy of `model` whose parameters track an EMA of the trained ones; buffers are copied, not averaged.

    `torch.optim.swa_utils.AveragedModel` does the bookkeeping (its `n_averaged` buffer is the update count) and is
    an `nn.Module`, so `accelerator.register_for_checkpointing` saves and restores it.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        weight = 1.0 - warmed_up_decay(decay, int(num_averaged))
        torch._foreach_lerp_(averaged, current, weight)

    ema = AveragedModel(model, multi_avg_fn=update, use_buffers=False)
    ema.module.requires_grad_(False)
    ema.module.eval()
    return ema


# --- Run safety: non-finite steps and stop signals ----------------------------------------------------------

class NonFiniteTrainingError(RuntimeError):
    """Training produced non-finite losses or gradients for too many steps in a row, or non-finite weights."""


class NonFiniteStepGuard:
    """Decides, once per optimizer step, whether the step may be applied.

    The loss is averaged over processes and the gradient norm is taken after the all-reduce, so every process
    reaches the same decision and skips (or takes) the step together.
    """

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.consecutive = 0

    def step_is_finite(self, step: int, loss: float, grad_norm: float) -> bool:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive = 0
            return True
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"step {step}: the loss ({loss}) or gradient norm ({grad_norm}) was NaN/inf for {self.consecutive} "
                f"consecutive steps, each skipped; stopping. The checkpoints on disk predate it and hold finite "
                f"weights: resume from one with a lower --learning_rate, a smaller --max_grad_norm, or without --bf16.")
        return False


def check_finite_parameters(model: nn.Module, where: str) -> None:
    """Raise rather than save or export weights holding NaN or inf."""
    bad = [name for name, parameter in model.named_parameters() if not bool(torch.isfinite(parameter).all())]
    if bad:
        raise NonFiniteTrainingError(f"{where}: non-finite values in {len(bad)} parameter(s), e.g. {bad[:3]}; "
                                     "nothing was written")


class StopSignals:
    """Inside ``with``: SIGTERM (a cluster's pre-emption) and SIGINT (Ctrl-C) set `received` instead of killing the
    process, so the loop can write a checkpoint at the next step boundary. The first signal puts the previous
    handlers back, so a second one acts at once; a signal the process ignores stays ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python runs handlers in the main thread only
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()

    def _handle(self, signum: int, frame) -> None:
        self.received = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


# --- Held-out evaluation ------------------------------------------------------------------------------------

def loss_metrics(nats_per_token: float, characters: bool) -> dict[str, float]:
    """The loss in nats per token, plus BPC (characters) or perplexity (word pieces)."""
    return {"loss": nats_per_token, "bpc": bits(nats_per_token)} if characters else \
        {"loss": nats_per_token, "ppl": perplexity(nats_per_token), "bits_per_token": bits(nats_per_token)}


@torch.no_grad()
def evaluate_loss(accelerator: Accelerator, recipe, model: torch.nn.Module, loader, stage: Stage,
                  seed: int) -> float:
    """Mean −log-likelihood bound in nats per token over every block of `loader` (sharded across processes).

    TarFlowLM's z noise is drawn from an RNG seeded with `seed` and isolated from training, so successive
    evaluations are comparable and resuming a run reproduces them.
    """
    was_training = model.training
    model.eval()
    per_block, block_size = [], None
    with isolated_rng(seed, accelerator.device), accelerator.autocast():
        for batch in loader:
            input_ids = batch["input_ids"]
            block_size = input_ids.shape[1]
            per_block.append(accelerator.gather_for_metrics(recipe.block_nll(model, input_ids, stage).float()))
    model.train(was_training)
    if block_size is None:
        raise ValueError("the validation split has no blocks; lower --block_size or raise --max_eval_blocks")
    return torch.cat(per_block).double().mean().item() / block_size


# --- Logging ------------------------------------------------------------------------------------------------

class JsonLinesTracker(GeneralTracker):
    """An Accelerate tracker writing one JSON object per `accelerator.log` call: ``{"step": n, name: value, ...}``.

    Appends, so a resumed run continues the same file (a step logged twice, before and after a kill, keeps both
    lines; readers take the last one)."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | Path):
        super().__init__()
        self.path = Path(logging_dir) / METRICS_FILE

    @on_main_process
    def start(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict):
        (self.path.parent / "tracker_config.json").write_text(json.dumps(values, indent=2, default=str))

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        with self.path.open("a") as stream:
            stream.write(json.dumps({"step": step, **values}) + "\n")


class TrainingLog:
    """What one log line reports: means of the loss, of its parts and of the gradient norm since the previous
    line, and tokens per second over the time spent in optimizer steps (validation and checkpoints excluded).

    TarFlowLM's parts, nats per token, sum to its loss (Eq. 3): ``train/neg_log_p_x_given_z`` (−log p(x|z), the
    tied decoder's ambiguity), ``train/neg_log_p_z`` (−log p(z), the flow prior) and ``train/log_q_z``
    (log q(z|x), the encoder's density of its own draw, negative entropy)."""

    def __init__(self, characters: bool, tokens_per_step: int):
        self.characters, self.tokens_per_step = characters, tokens_per_step
        self.losses, self.grad_norms, self.seconds, self.parts = [], [], 0.0, []
        self.total_seconds, self.total_steps = 0.0, 0  # in this process, since it started or resumed

    def add(self, loss: float, grad_norm: float, seconds: float, parts: dict[str, float] | None = None) -> None:
        self.parts.append(parts or {})
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        self.seconds += seconds
        self.total_seconds += seconds
        self.total_steps += 1

    @property
    def tokens_per_second(self) -> float | None:
        return self.total_steps * self.tokens_per_step / self.total_seconds if self.total_steps else None

    def flush(self, learning_rate: float, stage: int, skipped_steps: int) -> dict:
        steps, seconds = len(self.losses), max(self.seconds, 1e-9)
        named = loss_metrics(sum(self.losses) / steps, self.characters)
        metrics = {**{f"train/{name}": value for name, value in named.items()},
                   "train/grad_norm": sum(self.grad_norms) / steps, "train/learning_rate": learning_rate,
                   "train/stage": stage, "train/tokens_per_second": steps * self.tokens_per_step / seconds,
                   "train/skipped_steps": skipped_steps,
                   **{f"train/{name}": sum(part[name] for part in self.parts) / steps for name in self.parts[-1]}}
        self.losses, self.grad_norms, self.seconds, self.parts = [], [], 0.0, []
        return metrics

    def postfix(self, metrics: dict) -> dict:
        """The progress bar's loss, BPC (characters) or perplexity, and tokens per second."""
        quality = {"bpc": f"{metrics['train/bpc']:.3f}"} if self.characters else \
            {"ppl": f"{metrics['train/ppl']:.2f}"}
        return {"loss": f"{metrics['train/loss']:.4f}", **quality,
                "tok/s": f"{metrics['train/tokens_per_second']:.0f}"}


def trackers(report_to: str, output_dir: str | Path) -> list:
    """The `log_with` list: the JSON-lines tracker, plus TensorBoard if asked for and importable."""
    if report_to not in ("tensorboard", "none"):
        raise SettingsError(f"--report_to must be 'tensorboard' or 'none', got {report_to!r}")
    chosen = [JsonLinesTracker("metrics", output_dir)]
    if report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        warnings.warn("--report_to tensorboard: tensorboard is not installed, so only metrics.jsonl is written "
                      "(pip install tensorboard, or pass --report_to none)", UserWarning, stacklevel=2)
    elif report_to == "tensorboard":
        chosen.append("tensorboard")
    return chosen


def hyperparameters(values: dict) -> dict:
    """Settings as TensorBoard's hparams accept them: scalars as they are, anything else as JSON text."""
    return {name: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            for name, value in values.items()}


# --- The loop -----------------------------------------------------------------------------------------------

def build_accelerator(settings: TrainingSettings, progressive: bool) -> Accelerator:
    """One `Accelerator` for the run. Progressive stages leave some parameters without gradients, which DDP must be
    told about (`find_unused_parameters`); the data order is a permutation seeded per epoch (`data_seed`).

    Several processes without a GPU (``accelerate launch --multi_gpu --num_processes 2`` or ``torchrun`` on a CPU
    machine) only form a gloo group when Accelerate is told to use the CPU; otherwise each would train alone.
    """
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if progressive else []
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(
        cpu=launched_processes > 1 and not torch.cuda.is_available(),
        mixed_precision="bf16" if settings.bf16 else "no",
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=settings.gradient_accumulation_steps, sync_with_dataloader=False),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=settings.seed),
        project_config=ProjectConfiguration(project_dir=settings.output_dir, logging_dir=settings.output_dir),
        log_with=trackers(settings.report_to, settings.output_dir),
        dynamo_backend="inductor" if settings.torch_compile else "no",
        kwargs_handlers=handlers)
    if accelerator.num_processes != launched_processes:
        raise RuntimeError(f"{launched_processes} processes were launched but Accelerate joined "
                           f"{accelerator.num_processes}; they would train independently")
    if accelerator.device.type == "cpu":
        use_local_cores()
    return accelerator


def use_local_cores() -> None:
    """Give each process on this machine its share of the cores it may run on (`taskset` and cgroup limits
    respected). `accelerate launch` exports OMP_NUM_THREADS=1 for a plain single-process CPU run, which would
    leave all but one core of a laptop idle (measured: 1.7x slower training on 2 cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def build_loaders(splits: dict, settings: TrainingSettings):
    """Train: shuffled, full batches only; validation: in order. The train loader's private generator keeps
    creating an iterator from drawing on the global RNG (which the latent noise uses), so resuming is exact."""
    train = torch.utils.data.DataLoader(
        splits["train"], batch_size=settings.per_device_train_batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(settings.seed))
    validation = torch.utils.data.DataLoader(splits["validation"], batch_size=settings.per_device_eval_batch_size)
    return train, validation


def micro_batches(accelerator: Accelerator, loader, position: int):
    """Train batches from data position `position` (micro-batches already consumed) on, endlessly: epoch e is the
    permutation seeded with seed + e, so the order depends on the position only."""
    epoch, skip = divmod(position, len(loader))
    while True:
        loader.set_epoch(epoch)
        yield from accelerator.skip_first_batches(loader, skip) if skip else loader
        epoch, skip = epoch + 1, 0


class Trainer:
    """Trains one model; `train()` runs (or resumes) the steps, `evaluate()` scores the EMA weights.

    `model` must have been built right after `set_seed(settings.seed)`, so every process starts from the same
    weights; `characters` says whether losses are reported as BPC (characters) or perplexity; `run_record`
    (`training.checkpointing.build_run_record`) is stored in every checkpoint.
    """

    def __init__(self, settings: TrainingSettings, accelerator: Accelerator, recipe, model: torch.nn.Module,
                 splits: dict, schedule: StageSchedule, characters: bool, run_record: dict):
        self.settings, self.accelerator, self.recipe, self.schedule = settings, accelerator, recipe, schedule
        self.characters, self.run_record = characters, run_record
        self.last_saved_step: int | None = None
        optimizer = build_optimizer(model, settings)
        self.lr_scheduler = build_lr_scheduler(optimizer, schedule, settings)
        self.model, self.optimizer, self.train_loader, self.eval_loader = accelerator.prepare(
            model, optimizer, *build_loaders(splits, settings))
        if len(self.train_loader) == 0:
            raise DataError(f"the train split holds {len(splits['train'])} blocks, fewer than one batch of "
                            f"--per_device_train_batch_size {settings.per_device_train_batch_size} blocks per process "
                            f"x {accelerator.num_processes} process(es); lower the batch size or --block_size, or "
                            "use more data")
        self.ema = build_ema(self.unwrapped_model, settings.ema_decay)
        self.progress = TrainingProgress()
        self.run_state = RunState(self.progress, self.lr_scheduler, self.ema)  # JSON and safetensors, no pickles
        self.guard = NonFiniteStepGuard(settings.max_nonfinite_steps)
        self.block_size = splits["train"][0]["input_ids"].shape[0]
        self.current_stage: int | None = None
        self.last_eval: dict | None = None
        self.log = TrainingLog(characters, self.tokens_per_step)
        self.data_digest = hashlib.sha256()  # of the blocks this process trained on, for `replica_fingerprints`
        set_seed(settings.seed, device_specific=True)  # each process draws its own latent noise

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def tokens_per_step(self) -> int:
        settings = self.settings
        return (settings.per_device_train_batch_size * settings.gradient_accumulation_steps
                * self.accelerator.num_processes * self.block_size)

    def train(self) -> None:
        settings, progress = self.settings, self.progress
        bar = tqdm(total=settings.max_steps, initial=progress.step, unit="step", dynamic_ncols=True,
                   disable=not self.accelerator.is_local_main_process, desc=f"training {self.recipe.kind}")
        batches = micro_batches(self.accelerator, self.train_loader, progress.micro_batches)
        with StopSignals() as signals, bar:  # the bar ends its line however the loop ends, before any error line
            while progress.step < settings.max_steps:
                stage = self.schedule.stage_at(progress.step)
                self._enter_stage(stage)
                started = time.perf_counter()
                loss, grad_norm, parts = self._optimizer_step(batches, stage)
                self.log.add(loss, grad_norm, time.perf_counter() - started, parts)
                bar.update(1)
                self._after_step(stage, bar)
                if self._stop_agreed(signals):
                    bar.close()
                    self._stop(signals.received or signal.SIGTERM)

    def _stop_agreed(self, signals: StopSignals) -> bool:
        """Whether any process received SIGTERM / SIGINT: all processes take the same decision at the same step
        (a launcher forwards the signal to each, but not at the same instant)."""
        received = torch.tensor([float(signals.received is not None)], device=self.accelerator.device)
        return self.accelerator.reduce(received, "sum").item() > 0

    def _stop(self, signum: int) -> None:
        step = self.progress.step
        if self.last_saved_step != step:
            self._save()
        checkpoint = checkpoints_root(self.settings.output_dir) / f"checkpoint-{step}"
        message = (f"{signal.Signals(signum).name}: stopped after step {step} of {self.settings.max_steps}, saved "
                   f"{checkpoint}; to continue, rerun the same command with --resume_from_checkpoint latest")
        self._report(message)
        raise TrainingStopped(message, exit_code=128 + signum)

    def _save(self) -> Path:
        step = self.progress.step
        check_finite_parameters(self.unwrapped_model, f"checkpoint at step {step}")
        path = save_checkpoint(self.accelerator, self.settings.output_dir, step, self.settings.save_total_limit,
                               self.run_record, self.run_state)
        self.last_saved_step = step
        return path

    def _enter_stage(self, stage: Stage) -> None:
        """Switch the trained / frozen parameters; at a stage boundary, freeze the EMA weights of the finished
        layers and log the validation loss before and after adding the new layers (equal: the new layers start
        as the identity)."""
        if stage.index == self.current_stage:
            return
        boundary = stage.index > 0 and self.progress.step == stage.start_step
        if boundary:
            freeze_averaged_weights(self.unwrapped_model, self.ema.module, stage)
            before = self._validation_loss(self.schedule.stages[stage.index - 1])
        if len(self.schedule) > 1:
            set_trainable(self.unwrapped_model, stage)
        if boundary:
            after = self._validation_loss(stage)
            self._log_stage(stage, {"stage/loss_before": before, "stage/loss_after": after})
            self._report(f"stage {stage.index + 1} at step {stage.start_step}: validation loss {before:.6f} with "
                         f"{stage.num_frozen_flow_layers} flow layers, {after:.6f} with {stage.num_flow_layers}")
        self.current_stage = self.progress.stage = stage.index

    def _log_stage(self, stage: Stage, losses: dict) -> None:
        """A ``stage/*`` line at a stage boundary (stage 2 on; the first starts at step 0): the stage's number
        (1-based), its flow layers and frozen ones, and the validation loss before and after the new layers are
        added (the curve plot marks these steps)."""
        self.accelerator.log({"stage/index": stage.index + 1, "stage/num_flow_layers": stage.num_flow_layers,
                              "stage/num_frozen_flow_layers": stage.num_frozen_flow_layers, **losses},
                             step=self.progress.step)

    def _validation_loss(self, stage: Stage) -> float:
        """Validation loss (nats per token) of the training weights, with the evaluation's fixed noise."""
        return evaluate_loss(self.accelerator, self.recipe, self.unwrapped_model, self.eval_loader, stage,
                             self.settings.seed)

    def _optimizer_step(self, batches, stage: Stage) -> tuple[float, float, dict[str, float]]:
        """Accumulate gradients over the micro-batches of one step, then apply it unless it is not finite. Returns
        the loss, the gradient norm and the loss's parts (nats per token, see `TrainingLog`)."""
        losses = []
        for _ in range(self.settings.gradient_accumulation_steps):
            input_ids = next(batches)["input_ids"]
            self.progress.micro_batches += 1
            self.data_digest.update(input_ids.cpu().numpy().tobytes())
            with self.accelerator.accumulate(self.model):
                terms = self.recipe.block_terms(self.model, input_ids, stage)
                loss = terms["nll"].mean() / input_ids.shape[1]
                self.accelerator.backward(loss)
            losses.append(torch.stack([value.detach().float().mean() for value in terms.values()]) / input_ids.shape[1])
        means = self.accelerator.reduce(torch.stack(losses).mean(0), "mean").tolist()  # one all-reduce for all terms
        loss, parts = means[0], dict(zip(list(terms)[1:], means[1:]))
        max_norm = self.settings.max_grad_norm or float("inf")
        grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm))
        if self.guard.step_is_finite(self.progress.step, loss, grad_norm):
            self.optimizer.step()
            self.ema.update_parameters(self.unwrapped_model)
        else:
            self.progress.skipped_steps += 1
            self._report(f"step {self.progress.step}: non-finite loss {loss} / gradient norm {grad_norm}: "
                         "step skipped")
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        self.progress.step += 1
        self.progress.tokens += self.tokens_per_step
        return loss, grad_norm, parts

    def _after_step(self, stage: Stage, bar) -> None:
        settings, step = self.settings, self.progress.step
        if step % settings.logging_steps == 0 or step == settings.max_steps:
            metrics = self.log.flush(self.lr_scheduler.get_last_lr()[0], stage.index + 1, self.progress.skipped_steps)
            self.accelerator.log(metrics, step=step)
            bar.set_postfix(self.log.postfix(metrics))
        if step % settings.eval_steps == 0 or step == settings.max_steps:
            self.last_eval = self.evaluate(stage)
            self.accelerator.log({f"eval/{name}": value for name, value in self.last_eval.items()}, step=step)
            self._report(f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in self.last_eval.items()))
        if settings.save_steps and step % settings.save_steps == 0:
            self._save()

    def _report(self, line: str) -> None:
        """A line above the progress bar, from the main process only."""
        if self.accelerator.is_main_process:
            tqdm.write(line)

    def evaluate(self, stage: Stage | None = None) -> dict:
        """Validation loss of the EMA weights (what is exported) with the stage's flow layers."""
        stage = stage or self.schedule.stages[-1]
        loss = evaluate_loss(self.accelerator, self.recipe, self.ema.module, self.eval_loader, stage,
                             self.settings.seed)
        return loss_metrics(loss, self.characters)
