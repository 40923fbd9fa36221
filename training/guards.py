"""Run safety: a non-finite step is skipped and reported, a run that keeps producing them stops clearly, weights
that are not finite are never written to a checkpoint, and SIGTERM / SIGINT stop the run at a step boundary."""

import math
import signal
import threading

import torch
from torch import nn


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
