"""Running training statistics kept on the device, read once per log interval, written to TensorBoard."""

from __future__ import annotations

import time

import torch

from trainer import distributed
from trainer.config import ConfigError
from trainer.step import StepResult

# The order of the interval's sums (Meter._sums).
_LOSS, _FINITE_LOSS, _NORM, _CLIPPED_NORM, _CLIPPED, _FINITE = range(6)


class Meter:
    """Each step's values over a log interval, in one device buffer; ``add`` queues device work only
    (one stack and one copy per step: on a GPU, two kernel launches), and ``read``, the one host
    sync, derives the interval's sums from the buffer in a few ops over all its steps."""

    def __init__(self, device: torch.device, capacity: int):
        # One column per step of the interval: loss, pre-clip norm, post-clip norm, clipped, finite.
        # The spike guard and the controller read the losses and norms.
        self.per_step = torch.zeros(5, capacity, device=device)
        # Running sums a checkpoint of an earlier release holds (it summed each step as it went, and
        # kept only loss and norm per step): added at the next read, for the steps before
        # `counted_from`, whose columns hold loss and norm only.
        self.carried = torch.zeros(6, device=device)
        self.counted_from = 0
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
        self.per_step[:, self.steps] = torch.stack([r.loss, r.norm, r.clipped_norm, r.clipped, r.finite])
        self.steps += 1
        self.samples += samples
        self.tokens += tokens

    def _sums(self) -> torch.Tensor:
        """The interval's sums (in _LOSS.. order), and the running totals brought up to date.

        Non-finite values would turn every average into inf/NaN, so each average is over the steps
        where its value is finite: the loss of an fp16 step skipped for overflowing gradients is
        usually finite and counts; its norm is not. Skipped steps are counted instead."""
        loss, norm, clipped_norm, clipped, finite = self.per_step[:, self.counted_from:self.steps]
        loss_ok, ok = torch.isfinite(loss), finite.bool()
        clipped_ok = clipped.bool() & ok
        sums = torch.stack([torch.where(loss_ok, loss, 0.0).sum(), loss_ok.sum(), torch.where(ok, norm, 0.0).sum(),
                            torch.where(ok, clipped_norm, 0.0).sum(), clipped_ok.sum(), ok.sum()]) + self.carried
        self.skipped_total += (~ok).sum()
        self.clipped_total += clipped_ok.sum()
        return sums

    def state_dict(self) -> dict[str, object]:
        return {"per_step": self.per_step, "carried": self.carried, "counted_from": self.counted_from,
                "skipped_total": self.skipped_total, "clipped_total": self.clipped_total,
                "steps": self.steps, "samples": self.samples, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, object]) -> None:
        for name in ("skipped_total", "clipped_total"):
            getattr(self, name).copy_(state[name])
        self.steps, self.samples, self.tokens = state["steps"], state["samples"], state["tokens"]
        if self.steps >= self.per_step.shape[1]:
            raise ConfigError(f"trainer.log_every={self.per_step.shape[1]}: the checkpoint is {self.steps} steps "
                              "into a log interval; resume with the trainer.log_every it was written with")
        saved = state["per_step"]
        self.per_step[:saved.shape[0], :self.steps] = saved[:, :self.steps]
        if "carried" in state:
            self.carried.copy_(state["carried"])
            self.counted_from = state["counted_from"]
        else:  # an older checkpoint: running sums of the steps so far, and their losses and norms
            self.carried.copy_(state["sums"])
            self.counted_from = self.steps

    def read(self) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Averages since the last read, and each step's loss and norm; then reset. One wait for the device."""
        counts = torch.tensor([float(self.samples), float(self.tokens)], device=self.per_step.device)
        values = torch.cat([self._sums(), self.skipped_total[None], self.clipped_total[None],
                            self.per_step[:2, :self.steps].flatten(), counts])  # the loss and norm rows
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
        self.carried.zero_()
        self.steps = self.samples = self.tokens = self.counted_from = 0
        self.started = time.perf_counter()
        return out, per_step
