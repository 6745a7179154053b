"""The loss-spike guard: decides, from each log interval's per-step losses, when to roll back.

A step is bad when its loss is more than ``threshold`` standard deviations above the mean of the
last ``window`` good losses (once half a window has been seen), or when ``nonfinite_steps``
steps in a row have a non-finite loss. The loop then restores the newest checkpoint (always
from before the bad step: with the guard on, checkpoints are written only after an interval has
been checked), skips the bad steps' batches for the rest of the run, and goes on. After
``max_rollbacks`` rollbacks it gives up: the run stops with a message rather than loop forever.
"""

from __future__ import annotations

import math
import statistics
from collections import deque


class Diverged(Exception):
    """Training cannot go on (too many rollbacks, or the fp16 loss scale collapsed); exit code 1."""

    exit_code = 1


class SpikeGuard:
    def __init__(self, window: int, threshold: float, nonfinite_steps: int, max_rollbacks: int):
        self.threshold = threshold
        self.nonfinite_steps = nonfinite_steps
        self.max_rollbacks = max_rollbacks
        self.history: deque[float] = deque(maxlen=window)
        self.rollbacks = 0

    def bad_steps(self, steps: list[int], losses: list[float]) -> list[int]:
        """The steps to undo among these (empty if none); good losses join the history."""
        nonfinite: list[int] = []
        for step, loss in zip(steps, losses, strict=True):
            if not math.isfinite(loss):
                nonfinite.append(step)
                if len(nonfinite) >= self.nonfinite_steps:
                    return nonfinite
                continue
            nonfinite = []
            if self.is_spike(loss):
                return [step]
            self.history.append(loss)
        return []

    def is_spike(self, loss: float) -> bool:
        if len(self.history) < max(2, self.history.maxlen // 2):
            return False
        mean, std = statistics.fmean(self.history), statistics.pstdev(self.history)
        return loss > mean + self.threshold * max(std, 1e-3 * abs(mean))

    def state_dict(self) -> dict[str, object]:
        return {"history": list(self.history), "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.history.clear()
        self.history.extend(state["history"])
        self.rollbacks = state["rollbacks"]
