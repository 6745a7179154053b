"""Training statistics: each step's values kept on the device, read once per log interval."""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from operator import attrgetter
from typing import Callable

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided

from trainer import distributed
from trainer.config import ConfigError
from trainer.monitoring import nonfinite
from trainer.step import StepResult

# The rows of an interval's per-step values (Meter.columns) and of a checkpoint's "per_step" (the
# last since guard.skip; checkpoints before it have five).
_LOSS, _NORM, _CLIPPED_NORM, _CLIPPED, _FINITE, _SPIKED = range(6)


class SpikeScore:
    """train/spike_score: the share of an interval's steps whose loss or gradient norm is more than
    ``sigma`` (population) standard deviations above the mean of the ``window`` finite steps before
    it, judged once half a window is there; a non-finite step is no spike (it is a skipped step).
    On the host, at the log step, from the per-step values the meter reads anyway: no device work.

    With a full window (every log step after the first ``window`` steps) numpy takes the mean and
    std of every step's window at once, as strided views of one array: about 0.2 ms a log step of
    the tiny bench preset's loop, where statistics.fmean and pstdev (exact fractions), per step and
    value, took about 1.9 ms.
    """

    def __init__(self, window: int, sigma: float):
        self.sigma = sigma
        self.history: deque[tuple[float, float]] = deque(maxlen=window)

    def __call__(self, losses: list[float], norms: list[float]) -> float:
        # Non-finite steps are counted in train/skipped_steps, and kept out of the window.
        steps = [s for s in zip(losses, norms) if math.isfinite(s[0]) and math.isfinite(s[1])]
        window, past = self.history.maxlen, len(self.history)
        least = max(2, window // 2)  # values before a step for it to be judged
        if past + len(steps) <= least:  # no step has that many before it yet
            self.history.extend(steps)
            return 0.0
        values = np.array(tuple(zip(*self.history, *steps)), dtype=np.float64)  # rows: loss, norm
        spikes = 0
        if steps and past == window:  # each step's window is the `window` values before it
            # (2, steps, window) views into values, contiguous along the window (sliding_window_view's
            # result, without its checks: 4 us against 12)
            row, col = values.strides
            windows = as_strided(values, (2, len(steps), window), (row, col, col), writeable=False)
            mean = windows.mean(axis=-1)
            deviations = windows - mean[..., None]  # the population std by einsum: half the time of .std()
            std = np.sqrt(np.einsum("ijk,ijk->ij", deviations, deviations) / window)
            over = values[:, past:] > mean + self.sigma * std
            spikes = int(over.any(axis=0).sum())
        else:  # the window is still filling: each step against the i values before it
            for i in range(max(past, least), past + len(steps)):
                before = values[:, max(0, i - window):i]
                spikes += bool((values[:, i] > before.mean(axis=1) + self.sigma * before.std(axis=1)).any())
        self.history.extend(steps)
        return spikes / len(losses) if losses else 0.0


class Meter:
    """Each step's results over a log interval, read once per interval.

    ``add`` keeps the step's result as the step returned it (device tensors) and runs no device op:
    on a GPU, no kernel launch. ``read``, the interval's one host sync, stacks them in one op,
    brings them to the host in one copy, and averages them there. ``clip_stats`` is the clip
    policy's ``clipped_stats``, for the policies that leave a step's post-clip norm to the log step;
    ``spikes``: the steps carry guard.skip's flag, counted in train/skipped_spikes; ``spike_window``
    and ``spike_sigma``: train/spike_score's (SpikeScore); ``check_ranks``: log.check_ranks's comparison.
    """

    def __init__(self, device: torch.device, capacity: int,
                 clip_stats: Callable[[list[float]], tuple[list[float], list[bool]]] | None = None,
                 spikes: bool = False, spike_window: int = 100, spike_sigma: float = 3.0, check_ranks: bool = False):
        self.device, self.capacity, self.clip_stats, self.spikes = device, capacity, clip_stats, spikes
        self.check_ranks = check_ranks
        self.processes = distributed.world().size  # read once: each read of it parses the environment
        self.spike_score = SpikeScore(spike_window, spike_sigma)
        self.results: list[StepResult] = []
        # The interval's first steps as a checkpoint restored them, in the rows of _LOSS.._SPIKED,
        # and the model's extras (StepResult.extras) by name.
        self.restored: list[list[float]] = [[] for _ in range(6)]
        self.restored_extras: dict[str, list[float]] = {}
        self.restored_max: list[float] | None = None  # each restored step's largest loss of any rank
        # The interval's first skipped step, if a checkpoint restored it: [index, positions] (first_nonfinite).
        self.restored_nonfinite: list | None = None
        # Sums a checkpoint of an earlier release holds (it summed each step as it went, and kept only
        # loss and norm per step): added at the next read, for the steps before `counted_from`.
        self.carried = [0.0] * 6
        self.counted_from = 0
        self.skipped_total = 0.0
        self.clipped_total = 0.0
        self.spiked_total = 0.0
        self.steps = 0
        self.samples = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def start(self) -> None:
        """Time the first interval from here (the first step), not from the set-up before it: a
        resume, the writers, the MLflow store."""
        self.started = time.perf_counter()

    def add(self, r: StepResult, samples: int, tokens: int) -> None:
        self.results.append(r)
        self.steps += 1
        self.samples += samples
        self.tokens += tokens

    def columns(self, across_ranks: bool = False
                ) -> tuple[list[list[float]], list[float], list[tuple], dict[str, list[float]]]:
        """The interval's values so far on the host, one list per row (_LOSS.._SPIKED), each step's
        largest loss of any rank (restored steps: as saved), with check_ranks the ranks whose norms
        differ from rank 0's (distributed.differing_ranks; steps counted in the interval), and the
        model's extras by name (NaN for a step without one); a host sync.

        across_ranks: each step's values averaged over the ranks (the losses differ; norms and
        flags are the same on every rank, as gradients are all-reduced before they are measured).
        """
        rows = [list(r) for r in self.restored]
        restored = len(rows[_LOSS])
        restored_max = list(self.restored_max) if self.restored_max is not None else rows[_LOSS]
        extras = {k: list(v) for k, v in self.restored_extras.items()}
        if not self.results:
            return rows, restored_max, [], extras
        derived = self.results[0].clipped_norm is None
        if derived and self.clip_stats is None:
            raise ConfigError("clip._target_: the policy returned no clipped_norm and has no clipped_stats(norms) "
                              "to derive it from (see trainer/clipping.py)")
        names = ("loss", "norm", "skipped", *(() if derived else ("clipped_norm", "clipped")),
                 *(("spiked",) if self.spikes else ()))
        first = self.results[0].extras or {}
        extra_names = sorted(first)
        if any((r.extras or {}).keys() != first.keys() for r in self.results):
            raise ConfigError(f"model._target_: forward(**batch) returned {', '.join(extra_names) or 'only the loss'} "
                              "at one step and other entries at another; return the same entries every step")
        width = len(names) + len(extra_names)
        fields = attrgetter(*names)  # a step's values in names' order, one C call: 2 us an interval, 9 by getattr

        def step_values(r: StepResult) -> tuple[torch.Tensor, ...]:
            return (*fields(r), *(r.extras[k] for k in extra_names)) if extra_names else fields(r)

        values = torch.stack([v for r in self.results for v in step_values(r)])  # one op for the interval
        fresh_max, differing = None, []
        if across_ranks and self.processes > 1:
            if self.check_ranks:  # each rank's own norms, before the mean makes them alike
                differing = [(rank, restored + i, *pair) for rank, i, *pair
                             in distributed.differing_ranks(values[1::width].tolist())]
            # Each step's largest loss of any rank (torchtitan logs the global max loss), then the means.
            fresh_max = distributed.all_reduce_max(values.clone()).tolist()[0::width]
            values = distributed.all_reduce_sum(values) / self.processes
        host = values.tolist()
        row = {name: host[i::width] for i, name in enumerate((*names, *extra_names))}
        clipped_norm, clipped = self.clip_stats(row["norm"]) if derived else (row["clipped_norm"], row["clipped"])
        fresh = (row["loss"], row["norm"], clipped_norm, [float(c) for c in clipped], [1.0 - s for s in row["skipped"]],
                 row.get("spiked", [0.0] * len(self.results)))
        for k in sorted({*extras, *extra_names}):  # by name, as they are logged
            extras[k] = extras.get(k, [math.nan] * restored) + row.get(k, [math.nan] * len(self.results))
        step_max = restored_max + (fresh_max or row["loss"])
        return [old + new for old, new in zip(rows, fresh)], step_max, differing, extras

    def first_nonfinite(self, finite: list[float]) -> tuple[int, list[int] | str, int] | None:
        """The interval's first step skipped for non-finite gradients, given each step's finite flag
        (_FINITE): its index, the positions in params of its non-finite tensors (or why they are not
        known), and how many steps were skipped; None if none was. A host read, for a fresh step."""
        bad = [i for i in range(self.counted_from, len(finite)) if not finite[i]]
        if not bad:
            return None
        first, restored = bad[0], len(finite) - len(self.results)
        if first < restored:
            kept = self.restored_nonfinite
            positions = kept[1] if kept and kept[0] == first else nonfinite.NOT_KEPT
        else:
            tensors = self.results[first - restored].tensors
            positions = nonfinite.nonfinite_positions(tensors) if tensors is not None else nonfinite.NOT_MEASURED
        return first, positions, len(bad)

    def state_dict(self) -> dict[str, object]:
        """The interval so far as the log step will average it: each step's values over the ranks
        (every rank captures a checkpoint, so the collectives are reached), and its largest loss."""
        rows, step_max, _, extras = self.columns(across_ranks=True)
        first = self.first_nonfinite(rows[_FINITE])
        per_step = torch.zeros(6, self.capacity)  # the layout of checkpoints since 6cfab1e, and a row
        per_step[:, :self.steps] = torch.tensor(rows)
        return {"per_step": per_step, "loss_max": torch.tensor(step_max),
                "extras": {k: torch.tensor(v) for k, v in extras.items()},
                "nonfinite": list(first[:2]) if first else None,
                "carried": torch.tensor(self.carried), "counted_from": self.counted_from,
                "skipped_total": torch.tensor(self.skipped_total), "clipped_total": torch.tensor(self.clipped_total),
                "spiked_total": self.spiked_total, "spike_history": [list(h) for h in self.spike_score.history],
                "steps": self.steps, "samples": self.samples, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.skipped_total, self.clipped_total = float(state["skipped_total"]), float(state["clipped_total"])
        self.spiked_total = float(state.get("spiked_total", 0.0))  # not in checkpoints before guard.skip
        self.spike_score.history.clear()
        self.spike_score.history.extend(tuple(h) for h in state.get("spike_history", []))
        self.steps, self.samples, self.tokens = state["steps"], state["samples"], state["tokens"]
        if self.steps >= self.capacity:
            raise ConfigError(f"trainer.log_every={self.capacity}: the checkpoint is {self.steps} steps "
                              "into a log interval; resume with the trainer.log_every it was written with")
        saved = state["per_step"].cpu()[:, :self.steps].tolist()
        self.restored = saved + [[0.0] * self.steps for _ in range(6 - len(saved))]
        self.restored_extras = {k: v.tolist() for k, v in state.get("extras", {}).items()}  # none before z_loss
        self.restored_nonfinite = state.get("nonfinite")
        self.restored_max = state["loss_max"].tolist() if "loss_max" in state else None  # rank 0's losses before
        self.results = []
        if "carried" in state:
            self.carried, self.counted_from = state["carried"].tolist(), state["counted_from"]
        else:  # an older checkpoint: running sums of the steps so far, and their losses and norms
            self.carried, self.counted_from = state["sums"].tolist(), self.steps

    def read(self) -> tuple[dict[str, float], dict[str, list]]:
        """Averages since the last read, and each step's loss and norm; then reset. One wait for the device.

        Besides: "differing_ranks" (see columns) and "nonfinite" (first_nonfinite).

        Non-finite values would turn every average into inf/NaN, so each average is over the steps
        where its value is finite: the loss of an fp16 step skipped for overflowing gradients is
        usually finite and counts; its norm is not. Skipped steps are counted instead.
        """
        cols, step_max, differing, extras = self.columns(across_ranks=True)
        finite_max = [x for x in step_max if not math.isnan(x)]
        loss_sum, loss_n, norm_sum, clipped_norm_sum, clipped_n, ok_n = self.carried
        for i in range(self.counted_from, self.steps):
            if math.isfinite(cols[_LOSS][i]):
                loss_sum, loss_n = loss_sum + cols[_LOSS][i], loss_n + 1
            if cols[_FINITE][i]:
                norm_sum, clipped_norm_sum = norm_sum + cols[_NORM][i], clipped_norm_sum + cols[_CLIPPED_NORM][i]
                clipped_n, ok_n = clipped_n + cols[_CLIPPED][i], ok_n + 1
        self.skipped_total += self.steps - self.counted_from - sum(cols[_FINITE][self.counted_from:])
        self.clipped_total += sum(c for c, f in zip(cols[_CLIPPED][self.counted_from:], cols[_FINITE][self.counted_from:])
                                  if f)
        self.spiked_total += sum(cols[_SPIKED])
        samples, tokens = self.samples, self.tokens
        if self.processes > 1:  # of the job: every rank's (padded batches may differ in tokens)
            counts = torch.tensor([float(samples), float(tokens)], device=self.device)
            samples, tokens = distributed.all_reduce_sum(counts).tolist()
        elapsed = time.perf_counter() - self.started
        out = {
            "train/loss": loss_sum / loss_n if loss_n else math.nan,
            "train/grad_norm": norm_sum / ok_n if ok_n else math.nan,
            "train/grad_norm_clipped": clipped_norm_sum / ok_n if ok_n else math.nan,
            "train/clip_fraction": clipped_n / self.steps,
            "train/skipped_steps": self.skipped_total,
            "train/loss_max": max(finite_max) if finite_max else math.nan,
            "train/spike_score": self.spike_score(cols[_LOSS][self.counted_from:], cols[_NORM][self.counted_from:]),
            "perf/step_ms": 1000 * elapsed / self.steps,
            "perf/samples_per_sec": samples / elapsed,  # of the job: all ranks
            "perf/tokens_per_sec": tokens / elapsed,
            "clipped_total": self.clipped_total,
        }
        if self.spikes:
            out["train/skipped_spikes"] = self.spiked_total
        for name, values in extras.items():  # the model's, as train/loss: over the steps where finite
            finite = [x for x in values if math.isfinite(x)]
            out[f"train/{name}"] = statistics.fmean(finite) if finite else math.nan
        per_step = {"loss": cols[_LOSS], "norm": cols[_NORM], "differing_ranks": differing,
                    "nonfinite": self.first_nonfinite(cols[_FINITE])}
        self.carried, self.counted_from = [0.0] * 6, 0
        self.results, self.restored = [], [[] for _ in range(6)]
        self.restored_extras, self.restored_nonfinite, self.restored_max = {}, None, None
        self.steps = self.samples = self.tokens = 0
        self.started = time.perf_counter()
        return out, per_step
