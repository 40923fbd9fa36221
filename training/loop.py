"""The training loop: Accelerate does devices, processes, mixed precision, accumulation and checkpoint I/O; this
module decides what happens at each optimizer step (stage, NaN guard, EMA, logging, validation, checkpoints)."""

import hashlib
import os
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from training.arguments import TrainingSettings
from training.checkpointing import TrainingProgress, checkpoints_root, save_checkpoint
from training.ema import build_ema
from training.errors import TrainingStopped
from training.guards import NonFiniteStepGuard, StopSignals, check_finite_parameters
from training.optimization import build_lr_scheduler, build_optimizer
from training.stages import Stage, StageSchedule, freeze_averaged_weights, set_trainable
from training.tracking import TrainingLog, trackers
from training.validation import evaluate_loss, loss_metrics


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


def resume_training(accelerator: Accelerator, checkpoint: Path | None, progress: TrainingProgress) -> None:
    """Continue from `checkpoint` (weights, optimizer, schedule, EMA, RNGs, data position, stage), if any."""
    if checkpoint is None:
        return
    accelerator.load_state(str(checkpoint))
    accelerator.print(f"resumed from {checkpoint} at step {progress.step} (stage {progress.stage + 1}, "
                      f"micro-batch {progress.micro_batches})")


class Trainer:
    """Trains one model; `train()` runs (or resumes) the steps, `evaluate()` scores the EMA weights.

    `model` must have been built right after `set_seed(settings.seed)`, so every process starts from the same
    weights; `characters` says whether losses are reported as BPC (characters) or perplexity; `run_record`
    (`training.run_record`) is stored in every checkpoint.
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
            raise ValueError(f"the train split ({len(splits['train'])} blocks) holds no full batch of "
                             f"{settings.per_device_train_batch_size} blocks per process")
        self.ema = build_ema(self.unwrapped_model, settings.ema_decay)
        self.progress = TrainingProgress()
        accelerator.register_for_checkpointing(self.lr_scheduler, self.ema, self.progress)
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
        with StopSignals() as signals:
            while progress.step < settings.max_steps:
                stage = self.schedule.stage_at(progress.step)
                self._enter_stage(stage)
                started = time.perf_counter()
                loss, grad_norm = self._optimizer_step(batches, stage)
                self.log.add(loss, grad_norm, time.perf_counter() - started)
                bar.update(1)
                self._after_step(stage, bar)
                if self._stop_agreed(signals):
                    bar.close()
                    self._stop(signals.received or signal.SIGTERM)
        bar.close()

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
                               self.run_record)
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
            self.accelerator.log({"stage/loss_before": before, "stage/loss_after": after}, step=self.progress.step)
            self._report(f"stage {stage.index + 1} at step {stage.start_step}: validation loss {before:.6f} with "
                         f"{stage.num_frozen_flow_layers} flow layers, {after:.6f} with {stage.num_flow_layers}")
        self.current_stage = self.progress.stage = stage.index

    def _validation_loss(self, stage: Stage) -> float:
        """Validation loss (nats per token) of the training weights, with the evaluation's fixed noise."""
        return evaluate_loss(self.accelerator, self.recipe, self.unwrapped_model, self.eval_loader, stage,
                             self.settings.seed)

    def _optimizer_step(self, batches, stage: Stage) -> tuple[float, float]:
        """Accumulate gradients over the micro-batches of one step, then apply it unless it is not finite."""
        losses = []
        for _ in range(self.settings.gradient_accumulation_steps):
            input_ids = next(batches)["input_ids"]
            self.progress.micro_batches += 1
            self.data_digest.update(input_ids.cpu().numpy().tobytes())
            with self.accelerator.accumulate(self.model):
                loss = self.recipe.block_nll(self.model, input_ids, stage).mean() / input_ids.shape[1]
                self.accelerator.backward(loss)
            losses.append(loss.detach().float())
        loss = self.accelerator.reduce(torch.stack(losses).mean(), "mean").item()
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
        return loss, grad_norm

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
