"""The training loop: after each optimizer step, one call per concern, in the order they happen.

step (trainer/step.py; with guard.skip it asks SkipStep, skip_step.py) -> schedule -> meter -> at log
steps: guard, controller, TensorBoard -> eval -> stop signal -> checkpoint. Each concern is its own
component: Logger (monitoring/logger.py), Meter (monitoring/metrics.py), SpikeGuard (guard.py), steer
(controller.py), evaluate and EvalHistory (evaluate.py), Checkpointer (checkpointing/checkpointer.py),
Schedule (schedule.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from trainer import distributed
from trainer.checkpointing import state
from trainer.build import Run, unwrap
from trainer.checkpointing.checkpointer import Checkpointer
from trainer.controller import steer
from trainer.monitoring import nonfinite
from trainer.monitoring.display import Display
from trainer.evaluate import EvalHistory, evaluate
from trainer.guard import Diverged, SpikeGuard
from trainer.monitoring.layers import LayerProbe
from trainer.monitoring.logger import Logger, policy_metrics
from trainer.monitoring.metrics import Meter
from trainer.preemption import StopRequest
from trainer.skip_step import SkipStep
from trainer.step import to_device, train_step


def train(run: Run, run_dir: Path, display: Display, hparams: dict[str, object] | None = None,
          on_start: Callable[[], None] | None = None) -> dict[str, object]:
    """Train to trainer.max_steps optimizer steps; log to TensorBoard in run_dir; return the summary.

    hparams (the run's settings) are recorded with the final metrics for TensorBoard's HPARAMS tab;
    on_start runs once the run is accepted (resumed, or starting fresh), before anything is written.
    """
    t = run.cfg.trainer
    # Plain ints for the hot loop: each access to the config object costs about 10 us.
    max_steps, grad_accum, eval_every = t.max_steps, t.grad_accum, t.eval_every
    skip = SkipStep.from_config(run.cfg.guard, run.device)
    meter = Meter(run.device, t.log_every, getattr(run.clip, "clipped_stats", None), spikes=skip is not None,
                  spike_window=run.cfg.log.spike_window, spike_sigma=run.cfg.log.spike_sigma,
                  check_ranks=run.cfg.log.check_ranks)
    history, guard = EvalHistory(), SpikeGuard.from_config(run.cfg.guard)
    probe = LayerProbe(unwrap(run.model)) if run.cfg.log.per_layer else None
    parts = state.components(run, meter=meter, eval_losses=history, guard=guard, skip_step=skip)
    checkpointer = Checkpointer(run, run_dir, parts, display)
    step = checkpointer.resume()
    if on_start and distributed.world().main:
        on_start()
    logger = Logger(run, run_dir, step, distributed.world().main)  # rank 0 alone writes
    if guard:
        checkpointer.ensure_one(step)  # something to roll back to before the first checkpoint is due
    totals = Totals()
    run.model.train()
    display.step(step)
    meter.start()
    error: BaseException | None = None
    try:
        with StopRequest() as stop:
            while step < max_steps:
                step += 1
                log_step = logger.should_log(step)
                micro, samples, tokens = next_micro_batches(run, grad_accum, guard, step)
                result = train_step(run.model, run.optimizer, (to_device(b, run.device) for b in micro),
                                    grad_accum, run.precision, run.clip, run.params, probe if log_step else None, skip)
                lr = run.optimizer.param_groups[0]["lr"]  # the lr this step used
                run.schedule.after_step()
                meter.add(result, samples, tokens)
                display.step(step)
                if guard and stop.signum and stop.processes == 1:
                    # A checkpoint is due now: the guard checks what it would hold first. (With more
                    # processes a stop waits for a log step, which the guard checks anyway.)
                    log_step = True
                if log_step:
                    metrics, per_step = meter.read()  # the interval's one wait for the device
                    if guard and (bad := guard.check(step, per_step["loss"])):
                        step = guard.roll_back(bad, checkpointer, run.train_batches, logger, display)
                        continue  # redo the steps after the checkpoint, without the bad batches
                    log_interval(run, step, lr, metrics, per_step, logger, display, guard, probe, totals)
                if step % eval_every == 0 or step == max_steps:
                    log_eval(run, step, history, logger, display)
                if stop.requested(log_step):
                    logger.flush()
                    checkpointer.preempt(step, stop.name, stop.signum)
                if checkpointer.due(step):
                    logger.flush()  # TensorBoard holds every step a checkpoint resumes after
                    checkpointer.save(step)
        summary = totals.summary(run, history, guard, checkpointer.dir)
        if hparams is not None:
            logger.hparams(hparams, summary, step)
    except BaseException as e:
        error = e
        raise
    finally:
        display.close()
        logger.close(error)
    return summary


def next_micro_batches(run: Run, n: int, guard: SpikeGuard | None, step: int
                       ) -> tuple[list[dict[str, torch.Tensor]], int, int]:
    """One step's n micro-batches, still on the host, and their samples and tokens (from shapes
    only: no device access); the guard records where each came from, to skip them if the step is bad."""
    micro, samples, tokens = [], 0, 0
    for _ in range(n):
        batch = next(run.train_batches)
        micro.append(batch)
        if guard:
            guard.record(step, run.train_batches.last)
        ids = batch.get("input_ids")
        size = next(iter(batch.values())).shape[0]  # (len() of a tensor goes through torch's Python layer)
        samples, tokens = samples + size, tokens + (ids.numel() if ids is not None else size)
    return micro, samples, tokens


@dataclass
class Totals:
    """What the summary needs from the log steps: the last interval's metrics, every interval's speed."""

    last: dict[str, float] = field(default_factory=dict)
    clipped: float = 0.0  # steps clipped since the start (the meter's running total)
    speeds: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def summary(self, run: Run, history: EvalHistory, guard: SpikeGuard | None, ckpt_dir: Path) -> dict[str, object]:
        t, m = run.cfg.trainer, self.last
        return {
            **history.summary(),
            "final train loss": m.get("train/loss", float("nan")),
            "clip fraction": self.clipped / t.max_steps,
            "skipped steps": int(m.get("train/skipped_steps", 0)),
            **({"skipped spikes": int(m["train/skipped_spikes"])} if "train/skipped_spikes" in m else {}),
            "rollbacks": guard.rollbacks if guard else 0,
            "final loss scale": m.get("train/loss_scale", run.precision.loss_scale()),
            "mean tokens/s": sum(self.speeds) / len(self.speeds) if self.speeds else float("nan"),
            "time (s)": time.perf_counter() - self.started,
            "steps": t.max_steps,
            "checkpoints": str(ckpt_dir),
        }


def log_interval(run: Run, step: int, lr: float, m: dict[str, float], per_step: dict[str, list], logger: Logger,
                 display: Display, guard: SpikeGuard | None, probe: LayerProbe | None, totals: Totals) -> None:
    """A checked log interval: ranks that disagree (log.check_ranks), the tensors of a step skipped for
    non-finite gradients, the clip controller's decisions, then every metric to TensorBoard and the
    display; a collapsed fp16 loss scale stops the run."""
    totals.clipped = m.pop("clipped_total")
    norms = per_step["norm"]
    first = step - len(norms) + 1  # the interval's first step: per_step's index 0
    for rank, i, theirs, ref in per_step["differing_ranks"]:
        display.note(f"log.check_ranks: rank {rank}'s gradient norm at step {first + i} is "
                     f"{theirs:.8g}, rank 0's {ref:.8g}: the ranks do not hold the same gradients")
    if per_step["nonfinite"]:
        index, positions, skipped = per_step["nonfinite"]
        display.note(nonfinite.describe(unwrap(run.model), run.params, first + index, positions, skipped))
    if getattr(run.clip, "controller", None):
        steer(run.clip, run.schedule, first, norms, display.note)
    m.update(policy_metrics(run, lr, guard, probe))
    logger.log(step, m)
    display.log(step, m, m["train/loss_scale"], lr)
    totals.last = m
    totals.speeds.append(m["perf/tokens_per_sec"])
    if m["train/loss_scale"] < run.precision.min_scale:
        raise Diverged(f"loss scale {m['train/loss_scale']:g} fell below amp.min_scale={run.precision.min_scale:g} "
                       f"at step {step}: training has diverged; lower optim.lr or use amp=bf16")


def log_eval(run: Run, step: int, history: EvalHistory, logger: Logger, display: Display) -> None:
    """Evaluate, record it, and let a plateau schedule see the loss."""
    metrics = evaluate(run)
    history.add(metrics)
    logger.log(step, metrics)
    display.eval(step, metrics)
    run.schedule.after_eval(metrics["eval/loss"])
