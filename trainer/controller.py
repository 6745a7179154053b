"""The clip-threshold / LR controller for ``clip=norm`` (``clip.controller=true``).

It automates two rules practitioners apply by hand, reading each step's pre-clip norm:

- the norm stays above 0.9 x max_norm for ``patience`` steps in a row: clipping is hiding an LR
  that is too high, so the LR is multiplied by ``lr_factor``;
- nothing was clipped for ``relax_after`` steps: the threshold is doing nothing, so max_norm
  moves to the ``percentile``-th percentile of the last ``relax_after`` norms, where it will
  catch the next spike.

Both wait for ``warmup_steps`` finite steps: early norms are large whatever the LR.

The loop feeds it the per-step norms at each log interval (the one host read of the interval),
so its decisions take effect from the next interval; each is logged as a line and as the
``clip/max_norm`` and ``clip/lr_scale`` scalars.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from trainer.clipping import NormClip
    from trainer.schedule import Schedule


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of host values, interpolated linearly (torch.quantile, as numpy's default)."""
    return torch.quantile(torch.tensor(values, dtype=torch.float64), q / 100.0).item()


class Controller:
    def __init__(self, patience: int, lr_factor: float, relax_after: int, percentile: float, warmup_steps: int):
        self.patience, self.lr_factor = patience, lr_factor
        self.relax_after, self.q, self.warmup_steps = relax_after, percentile, warmup_steps
        self.recent: deque[float] = deque(maxlen=relax_after)
        self.steps = 0  # finite steps seen
        self.high = 0  # steps in a row with norm > 0.9 * max_norm
        self.quiet = 0  # steps in a row, after warm-up, that did not clip
        self.lr_scale = 1.0

    def observe(self, step: int, norm: float, max_norm: float) -> tuple[str, float] | None:
        """One step's pre-clip norm; returns ("lr", factor) or ("max_norm", new value) when it acts."""
        if not math.isfinite(norm):
            return None
        self.steps += 1
        self.recent.append(norm)
        if self.steps <= self.warmup_steps:
            # Neither rule yet: a fresh model's norms are large at any LR (the instability
            # benchmark: counted from step 1, the LR rule halved a good LR at step 50).
            return None
        self.high = self.high + 1 if norm > 0.9 * max_norm else 0
        if self.high >= self.patience:
            self.high = 0
            self.lr_scale *= self.lr_factor
            return "lr", self.lr_factor
        self.quiet = 0 if norm > max_norm else self.quiet + 1
        if self.quiet >= self.relax_after:
            self.quiet = 0
            return "max_norm", percentile(list(self.recent), self.q)
        return None

    def state_dict(self) -> dict[str, object]:
        return {"recent": list(self.recent), "steps": self.steps, "high": self.high, "quiet": self.quiet,
                "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.recent.clear()
        self.recent.extend(state["recent"])
        self.steps, self.high, self.quiet, self.lr_scale = (state["steps"], state["high"], state["quiet"],
                                                            state["lr_scale"])


def steer(clip: "NormClip", schedule: "Schedule", first_step: int, norms: list[float], note: Callable[[str], None]) -> None:
    """Feed clip's controller one interval's per-step norms and apply what it decides."""
    controller = clip.controller
    for step, norm in enumerate(norms, first_step):
        decision = controller.observe(step, norm, clip.max_norm)
        if decision is None:
            continue
        kind, value = decision
        if kind == "lr":
            schedule.scale(value)
            note(f"clip controller, step {step}: norm above 0.9 x max_norm for {controller.patience} steps, "
                 f"lr x {value:g} (lr scale now {controller.lr_scale:g})")
        else:
            note(f"clip controller, step {step}: nothing clipped for {controller.relax_after} steps, "
                 f"max_norm {clip.max_norm:.4g} -> {value:.4g} (p{controller.q:g} of recent norms)")
            clip.max_norm = value
