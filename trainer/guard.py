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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.checkpointing.checkpointer import Checkpointer
    from trainer.data.stream import BatchStream
    from trainer.monitoring.display import Display
    from trainer.monitoring.logger import Logger


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
        # The current run of non-finite losses (its steps): it may span log intervals (or be one step
        # per interval with trainer.log_every=1), so it lives here, not in one check.
        self.nonfinite: list[int] = []
        # Batch positions, by step, of the steps not yet judged good: this interval's and the run's.
        self.positions: dict[int, list[tuple[int, int]]] = {}

    @classmethod
    def from_config(cls, g: Any) -> "SpikeGuard | None":
        """The guard the `guard` group asks for; None when guard.spike is off."""
        return cls(g.window, g.threshold, g.nonfinite_steps, g.max_rollbacks) if g.spike else None

    def record(self, step: int, position: tuple[int, int]) -> None:
        """A batch handed out for step: if the step turns out bad, it is never handed out again."""
        self.positions.setdefault(step, []).append(position)

    def check(self, last_step: int, losses: list[float]) -> dict[int, float]:
        """The bad steps of the interval ending at last_step (given its per-step losses), with their
        losses; empty if none."""
        first = last_step - len(losses) + 1
        bad = self.bad_steps(list(range(first, last_step + 1)), losses)
        if not bad:  # judged good, but for a run of non-finite losses that may still grow
            self.positions = {s: p for s, p in self.positions.items() if s in self.nonfinite}
        return {s: losses[s - first] if s >= first else math.nan for s in bad}

    def roll_back(self, bad: dict[int, float], checkpointer: "Checkpointer", batches: "BatchStream",
                  logger: "Logger", display: "Display") -> int:
        """Restore the newest checkpoint (always from before the bad steps), never hand out the bad
        steps' batches again, and return the step training goes on from."""
        first = min(bad)
        if self.rollbacks >= self.max_rollbacks:
            raise Diverged(f"loss spike at step {first} after {self.rollbacks} rollbacks (guard.max_rollbacks): "
                           "training has diverged; lower optim.lr or clip harder")
        skip = batches.skip | {p for s in bad for p in self.positions[s]}
        rollbacks = self.rollbacks + 1
        step = checkpointer.restore_latest()  # restores this guard too
        batches.skip, self.rollbacks = skip, rollbacks
        self.positions.clear()
        self.nonfinite = []  # the checkpoint may be from inside the run; its batches are skipped now
        logger.restarted_at(step)
        display.note(f"loss {bad[first]:.4g} at step {first}: rolled back to step {step}, skipping "
                     f"its batches (rollback {self.rollbacks}/{self.max_rollbacks})")
        return step

    def bad_steps(self, steps: list[int], losses: list[float]) -> list[int]:
        """The steps to undo among these (empty if none); good losses join the history."""
        for step, loss in zip(steps, losses, strict=True):
            if not math.isfinite(loss):
                self.nonfinite.append(step)
                if len(self.nonfinite) >= self.nonfinite_steps:
                    bad, self.nonfinite = self.nonfinite, []
                    return bad
                continue
            self.nonfinite = []
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
        return {"history": list(self.history), "rollbacks": self.rollbacks, "nonfinite": list(self.nonfinite),
                "positions": {s: [list(p) for p in ps] for s, ps in self.positions.items() if s in self.nonfinite}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.history.clear()
        self.history.extend(state["history"])
        self.rollbacks = state["rollbacks"]
        self.nonfinite = list(state.get("nonfinite", []))  # 0.1.0 checkpoints have neither
        self.positions = {s: [tuple(p) for p in ps] for s, ps in state.get("positions", {}).items()}
