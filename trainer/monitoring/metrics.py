"""Running training statistics kept on the device, read once per log interval, written to TensorBoard."""

from __future__ import annotations

import time

import torch

from trainer import distributed
from trainer.config import ConfigError
from trainer.step import StepResult

# The order of the running sums in Meter.sums.
_LOSS, _FINITE_LOSS, _NORM, _CLIPPED_NORM, _CLIPPED, _FINITE = range(6)


class Meter:
    """Sums over a log interval. ``add`` queues device work only; ``read`` is the one host sync."""

    def __init__(self, device: torch.device, capacity: int):
        self.sums = torch.zeros(6, device=device)
        # Each step's loss and pre-clip norm in this interval, for the spike guard and the controller.
        self.per_step = torch.zeros(2, capacity, device=device)
        self.skipped_total = torch.zeros((), device=device)
        self.clipped_total = torch.zeros((), device=device)
        self.steps = 0
        self.samples = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def start(self) -> None:
        """Time the first interval from here (the first step), not from the set-up before it: a
        resume, the writers, the MLflow store."""
        self.started = time.perf_counter()

    def add(self, r: StepResult, samples: int, tokens: int) -> None:
        # Non-finite values would turn every average into inf/NaN, so each average is over the steps
        # where its value is finite: the loss of an fp16 step skipped for overflowing gradients is
        # usually finite and counts; its norm is not. Skipped steps are counted instead.
        zero = torch.zeros((), device=r.loss.device)
        ok = r.finite
        loss_ok = torch.isfinite(r.loss)
        self.sums += torch.stack([
            torch.where(loss_ok, r.loss, zero),
            loss_ok.float(),
            torch.where(ok, r.norm, zero),
            torch.where(ok, r.clipped_norm, zero),
            (r.clipped & ok).float(),
            ok.float(),
        ])
        self.per_step[:, self.steps] = torch.stack([r.loss, r.norm])
        self.skipped_total += (~ok).float()
        self.clipped_total += (r.clipped & ok).float()
        self.steps += 1
        self.samples += samples
        self.tokens += tokens

    def state_dict(self) -> dict[str, object]:
        return {"sums": self.sums, "per_step": self.per_step, "skipped_total": self.skipped_total, "clipped_total": self.clipped_total,
                "steps": self.steps, "samples": self.samples, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, object]) -> None:
        for name in ("sums", "skipped_total", "clipped_total"):
            getattr(self, name).copy_(state[name])
        self.steps, self.samples, self.tokens = state["steps"], state["samples"], state["tokens"]
        if self.steps >= self.per_step.shape[1]:
            raise ConfigError(f"trainer.log_every={self.per_step.shape[1]}: the checkpoint is {self.steps} steps "
                              "into a log interval; resume with the trainer.log_every it was written with")
        self.per_step[:, :self.steps] = state["per_step"][:, :self.steps]

    def read(self) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Averages since the last read, and each step's loss and norm; then reset. One wait for the device."""
        counts = torch.tensor([float(self.samples), float(self.tokens)], device=self.sums.device)
        values = torch.cat([self.sums, self.skipped_total[None], self.clipped_total[None],
                            self.per_step[:, :self.steps].flatten(), counts])
        # Across ranks: the mean. Losses differ from rank to rank; norms, flags and counts are the
        # same on every rank (gradients are all-reduced before they are measured), so stay as they
        # are; samples and tokens are each rank's, so their mean times the ranks is the job's.
        world = distributed.world().size
        if world > 1:
            values = distributed.all_reduce_sum(values) / world
        host = values.tolist()
        sums, skipped, clipped = host[:6], host[6], host[7]
        per_step = {"loss": host[8:8 + self.steps], "norm": host[8 + self.steps:8 + 2 * self.steps]}
        samples, tokens = host[-2] * world, host[-1] * world
        elapsed = time.perf_counter() - self.started
        def mean(total: int, count: int) -> float:
            return sums[total] / sums[count] if sums[count] else float("nan")

        out = {
            "train/loss": mean(_LOSS, _FINITE_LOSS),
            "train/grad_norm": mean(_NORM, _FINITE),
            "train/grad_norm_clipped": mean(_CLIPPED_NORM, _FINITE),
            "train/clip_fraction": sums[_CLIPPED] / self.steps,
            "train/skipped_steps": skipped,
            "perf/step_ms": 1000 * elapsed / self.steps,
            "perf/samples_per_sec": samples / elapsed,  # of the job: all ranks
            "perf/tokens_per_sec": tokens / elapsed,
            "clipped_total": clipped,
        }
        self.sums.zero_()
        self.steps = self.samples = self.tokens = 0
        self.started = time.perf_counter()
        return out, per_step
