"""Learning-rate schedules, chosen by the ``sched`` config group; each returns a torch scheduler,
which build() puts behind Schedule.

Per-step schedules are stepped once per optimizer step (skipped fp16 steps included, as in
every mainstream trainer); ``plateau`` is stepped with the eval loss at each eval.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def cosine(optimizer: Optimizer, max_steps: int, warmup_steps: int, min_lr_ratio: float) -> LRScheduler:
    """Linear warm-up over warmup_steps, then cosine decay to min_lr_ratio * lr at max_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, max_steps: int, warmup_steps: int) -> LRScheduler:
    """The configured lr, after an optional linear warm-up."""
    return LambdaLR(optimizer, lambda step: _warmup(step, warmup_steps))


def plateau(optimizer: Optimizer, max_steps: int, factor: float, patience: int, threshold: float,
            min_lr: float) -> ReduceLROnPlateau:
    """Multiply lr by factor when eval/loss has not improved for patience evals."""
    return ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience, threshold=threshold,
                             min_lr=min_lr)


class Schedule:
    """Any torch LR scheduler behind one interface: the loop calls after_step() after each optimizer
    step and after_eval(loss) after each eval; each scheduler moves on the one it is made for
    (ReduceLROnPlateau on the eval loss, every other one per step)."""

    def __init__(self, scheduler: LRScheduler | ReduceLROnPlateau):
        self.scheduler = scheduler
        self.on_eval = isinstance(scheduler, ReduceLROnPlateau)

    def after_step(self) -> None:
        if not self.on_eval:
            self.scheduler.step()

    def after_eval(self, loss: float) -> None:
        if self.on_eval:
            self.scheduler.step(loss)

    def scale(self, factor: float) -> None:
        """Multiply the LR from now on, the schedule's base included, so the schedule keeps its shape."""
        for group in self.scheduler.optimizer.param_groups:
            group["lr"] *= factor
        if hasattr(self.scheduler, "base_lrs"):  # ReduceLROnPlateau has none: it works from the current lr
            self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)
