"""Running training statistics kept on the device, read once per log interval, written to TensorBoard."""

from __future__ import annotations

import time

import torch

from trainer.step import StepResult

# The order of the running sums in Meter.sums.
_LOSS, _NORM, _CLIPPED_NORM, _CLIPPED, _FINITE = range(5)


class Meter:
    """Sums over a log interval. ``add`` queues device work only; ``read`` is the one host sync."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(5, device=device)
        self.skipped_total = torch.zeros((), device=device)
        self.clipped_total = torch.zeros((), device=device)
        self.steps = 0
        self.samples = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def add(self, r: StepResult, samples: int, tokens: int) -> None:
        # Skipped steps would put inf/NaN into every average, so averages are over finite steps;
        # the skipped ones are counted instead.
        zero = torch.zeros((), device=r.loss.device)
        ok = r.finite
        self.sums += torch.stack([
            torch.where(ok, r.loss, zero),
            torch.where(ok, r.norm, zero),
            torch.where(ok, r.clipped_norm, zero),
            (r.clipped & ok).float(),
            ok.float(),
        ])
        self.skipped_total += (~ok).float()
        self.clipped_total += (r.clipped & ok).float()
        self.steps += 1
        self.samples += samples
        self.tokens += tokens

    def read(self) -> dict[str, float]:
        """Averages since the last read, then reset. Waits for the device."""
        *sums, skipped, clipped = torch.cat([self.sums, self.skipped_total[None], self.clipped_total[None]]).tolist()
        elapsed = time.perf_counter() - self.started
        finite = sums[_FINITE]
        avg = (lambda i: sums[i] / finite) if finite else (lambda i: float("nan"))
        out = {
            "train/loss": avg(_LOSS),
            "train/grad_norm": avg(_NORM),
            "train/grad_norm_clipped": avg(_CLIPPED_NORM),
            "train/clip_fraction": sums[_CLIPPED] / self.steps,
            "train/skipped_steps": skipped,
            "perf/step_ms": 1000 * elapsed / self.steps,
            "perf/samples_per_sec": self.samples / elapsed,
            "perf/tokens_per_sec": self.tokens / elapsed,
            "clipped_total": clipped,
        }
        self.sums.zero_()
        self.steps = self.samples = self.tokens = 0
        self.started = time.perf_counter()
        return out
