"""The training loop: steps, periodic logging and eval, checkpoints, resume, the final summary."""

from __future__ import annotations

import itertools
import math
import shlex
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from trainer import checkpoint, distributed
from trainer.build import Run
from trainer.config import run_dir_override
from trainer.display import Display
from trainer.guard import Diverged, SpikeGuard
from trainer.layers import LayerProbe
from trainer.metrics import Meter
from trainer.preemption import Preempted, StopRequest
from trainer.state import capture, find_resume, restore, save_shards, sharded
from trainer.step import train_step


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Mean loss over up to trainer.eval_batches batches of the held-out set (of each rank's share);
    with labels, also accuracy and F1 (of class 1 with two classes, else the mean over classes)."""
    run.model.eval()
    classes = run.cfg.model.get("num_labels") or 0
    # loss sum, batches, then the confusion matrix (true x predicted) when there are labels
    total = torch.zeros(2 + classes * classes, device=run.device)
    for batch in itertools.islice(run.eval_loader, run.cfg.trainer.eval_batches):
        batch = to_device(batch, run.device)
        with run.precision.autocast():
            if classes and "labels" in batch:
                loss, logits = run.model(**batch, return_logits=True)
                pairs = batch["labels"] * classes + logits.argmax(-1)
                total[2:] += torch.bincount(pairs, minlength=classes * classes).float()
            else:
                loss = run.model(**batch)
        total[0] += loss.float()
        total[1] += 1
    run.model.train()
    host = distributed.all_reduce_sum(total).tolist()
    out = {"eval/loss": host[0] / max(host[1], 1)}
    if classes:
        out.update(classification_metrics(torch.tensor(host[2:]).view(classes, classes)))
    return out


def classification_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy and F1 from a confusion matrix (rows: true class, columns: predicted)."""
    tp = confusion.diag()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"eval/accuracy": float(tp.sum() / confusion.sum().clamp(min=1)),
            "eval/f1": float(f1[1] if len(f1) == 2 else f1.mean())}


def next_micro_batches(run: Run, n: int, positions: list[tuple[int, int]] | None
                       ) -> tuple[list[dict[str, torch.Tensor]], int, int]:
    """One step's n micro-batches, still on the host, and their samples and tokens (from shapes
    only: no device access); with `positions`, each batch's place in the data, for the guard."""
    micro, samples, tokens = [], 0, 0
    for _ in range(n):
        batch = next(run.train_batches)
        micro.append(batch)
        if positions is not None:
            positions.append(run.train_batches.last)
        ids = batch.get("input_ids")
        size = len(next(iter(batch.values())))
        samples, tokens = samples + size, tokens + (ids.numel() if ids is not None else size)
    return micro, samples, tokens


def _rollback(run: Run, ckpt_dir: Path, meter: Meter, guard: SpikeGuard, bad: list[int],
              positions: dict[int, list[tuple[int, int]]]) -> tuple[int, list[float]]:
    """Restore the newest checkpoint and never hand out the bad steps' batches again."""
    if guard.rollbacks >= guard.max_rollbacks:
        raise Diverged(f"loss spike at step {bad[0]} after {guard.rollbacks} rollbacks (guard.max_rollbacks): "
                       "training has diverged; lower optim.lr or clip harder")
    path, state = checkpoint.latest(ckpt_dir)
    skip = run.train_batches.skip | {p for s in bad for p in positions[s]}
    rollbacks = guard.rollbacks + 1
    restore(run, state, path, meter, guard)
    run.train_batches.skip, guard.rollbacks = skip, rollbacks
    return state["step"], state["eval_losses"]


def scale_lr(run: Run, factor: float) -> None:
    """Multiply the LR from now on, the schedule's base included, so the schedule keeps its shape."""
    for group in run.optimizer.param_groups:
        group["lr"] *= factor
    if hasattr(run.scheduler, "base_lrs"):
        run.scheduler.base_lrs = [lr * factor for lr in run.scheduler.base_lrs]


def steer(run: Run, first_step: int, norms: list[float], display: Display) -> None:
    """Feed the clip controller one interval's per-step norms and apply what it decides."""
    clip, controller = run.clip, run.clip.controller
    for step, norm in enumerate(norms, first_step):
        decision = controller.observe(step, norm, clip.max_norm)
        if decision is None:
            continue
        kind, value = decision
        if kind == "lr":
            scale_lr(run, value)
            display.note(f"clip controller, step {step}: norm above 0.9 x max_norm for {controller.patience} steps, "
                         f"lr x {value:g} (lr scale now {controller.lr_scale:g})")
        else:
            display.note(f"clip controller, step {step}: nothing clipped for {controller.relax_after} steps, "
                         f"max_norm {clip.max_norm:.4g} -> {value:.4g} (p{controller.q:g} of recent norms)")
            clip.max_norm = value


# The final metrics each run records for TensorBoard's HPARAMS tab and `trainer report`.
HPARAM_METRICS = {
    "hparams/final_eval_loss": "final eval loss",
    "hparams/best_eval_loss": "best eval loss",
    "hparams/clip_fraction": "clip fraction",
    "hparams/skipped_steps": "skipped steps",
    "hparams/tokens_per_sec": "mean tokens/s",
}


def write_hparams(writer: SummaryWriter, hparams: dict[str, object], summary: dict[str, object], step: int) -> None:
    """The run's settings and final metrics for the HPARAMS tab, in the run's own directory.

    SummaryWriter.add_hparams would start a separate run in a subdirectory; writing the plugin's
    summaries through this writer keeps one run per directory.
    """
    metrics = {tag: float(summary[key]) for tag, key in HPARAM_METRICS.items()}
    for s in hparams_summaries(hparams, metrics):
        writer.file_writer.add_summary(s)
    write_scalars(writer, metrics, step)


def write_scalars(writer: SummaryWriter | None, metrics: dict[str, float], step: int) -> None:
    """Each metric as a TensorBoard scalar at step; on ranks other than 0 (no writer), nothing."""
    if writer:
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)


def open_writer(run: Run, run_dir: Path, start_step: int) -> SummaryWriter:
    """The run's TensorBoard writer, with the config as text; config.yaml beside it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(run.cfg, run_dir / "config.yaml", resolve=True)
    # purge_step makes TensorBoard drop what an interrupted run logged after the checkpoint.
    writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1 if start_step else None)
    writer.add_text("config", "```\n" + OmegaConf.to_yaml(run.cfg, resolve=True) + "\n```")
    return writer


def policy_metrics(run: Run, lr: float, guard: SpikeGuard | None, probe: LayerProbe | None) -> dict[str, float]:
    """What a log interval records besides the meter's means: LR, loss scale, the guard, per-layer norms."""
    m = {"train/lr": lr, "train/loss_scale": run.precision.loss_scale()}
    if guard:
        m["train/rollbacks"] = guard.rollbacks
    if probe:
        m.update(probe.read())
    return m


def eval_summary(eval_losses: list[float], last_eval: dict[str, float]) -> dict[str, float]:
    """The summary's eval lines: final and best loss, and the last eval's other metrics."""
    finite = [x for x in eval_losses if math.isfinite(x)]
    return {
        "final eval loss": eval_losses[-1] if eval_losses else float("nan"),
        "best eval loss": min(finite) if finite else float("nan"),
        **{f"final {tag.replace('/', ' ')}": value for tag, value in last_eval.items() if tag != "eval/loss"},
    }


def train(run: Run, run_dir: Path, display: Display, hparams: dict[str, object] | None = None) -> dict[str, object]:
    """Train to trainer.max_steps optimizer steps; log to TensorBoard in run_dir; return the summary.

    hparams (the run's settings) are recorded with the final metrics for TensorBoard's HPARAMS tab.
    """
    t, c, g = run.cfg.trainer, run.cfg.checkpoint, run.cfg.guard
    world = distributed.world()  # rank 0 alone writes events, config.yaml and checkpoints
    shard = sharded(run)
    ckpt_dir = Path(c.dir) if c.dir else run_dir / "checkpoints"
    meter = Meter(run.device, t.log_every)
    guard = SpikeGuard(g.window, g.threshold, g.nonfinite_steps, g.max_rollbacks) if g.spike else None
    controller = getattr(run.clip, "controller", None)
    probe = LayerProbe(run.model) if run.cfg.log.per_layer else None
    eval_losses: list[float] = []
    start_step = 0
    found = find_resume(run, ckpt_dir, display)
    if found:
        path, state = found
        restore(run, state, path, meter, guard)
        start_step, eval_losses = state["step"], state["eval_losses"]
        display.print(f"resumed from {path} at step {start_step}")

    writer = open_writer(run, run_dir, start_step) if world.main else None
    per_step_schedule = not isinstance(run.scheduler, ReduceLROnPlateau)

    def save(step: int) -> Path:
        shards = save_shards(run, ckpt_dir, step) if shard else None
        state = capture(run, step, meter, eval_losses, guard, shards)  # on every rank: it gathers their RNGs
        path = checkpoint.save(ckpt_dir, step, state, c.keep_last) if world.main else checkpoint.path(ckpt_dir, step)
        distributed.barrier()  # no rank reads it (a rollback, a resume) before it is complete
        return path

    if guard and not checkpoint.checkpoints(ckpt_dir):
        save(start_step)  # something to roll back to before the first checkpoint is due

    m: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    speeds: list[float] = []  # tokens/s of each log interval
    clipped_total = 0.0
    positions: dict[int, list[tuple[int, int]]] = {}  # this interval's batch positions, for the guard
    start = time.perf_counter()
    run.model.train()
    display.step(start_step)
    step = start_step
    try:
        with StopRequest() as stop:
            while step < t.max_steps:
                step += 1
                where = positions.setdefault(step, []) if guard else None
                micro, samples, tokens = next_micro_batches(run, t.grad_accum, where)
                log_step = step % t.log_every == 0 or step == t.max_steps
                result = train_step(run.model, run.optimizer, (to_device(b, run.device) for b in micro),
                                    t.grad_accum, run.precision, run.clip, run.params, probe if log_step else None)
                lr = run.optimizer.param_groups[0]["lr"]  # the lr this step used
                if per_step_schedule:
                    run.scheduler.step()
                meter.add(result, samples, tokens)
                display.step(step)

                if log_step:
                    m, per_step = meter.read()
                    losses, first = per_step["loss"], step - len(per_step["loss"]) + 1
                    bad = guard.bad_steps(list(range(first, step + 1)), losses) if guard else []
                    if bad:
                        spike = losses[bad[0] - first]
                        step, eval_losses = _rollback(run, ckpt_dir, meter, guard, bad, positions)
                        positions.clear()
                        # Tell TensorBoard the steps after the checkpoint are being redone.
                        if writer:
                            writer.file_writer.add_event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))
                        display.note(f"loss {spike:.4g} at step {bad[0]}: rolled back to step {step}, skipping "
                                     f"its batches (rollback {guard.rollbacks}/{guard.max_rollbacks})")
                        continue
                    positions.clear()
                    clipped_total = m.pop("clipped_total")
                    m.update(policy_metrics(run, lr, guard, probe))
                    if controller:
                        steer(run, first, per_step["norm"], display)
                        m["clip/max_norm"], m["clip/lr_scale"] = run.clip.max_norm, controller.lr_scale
                    write_scalars(writer, m, step)
                    display.log(step, m, m["train/loss_scale"], lr)
                    speeds.append(m["perf/tokens_per_sec"])
                    if m["train/loss_scale"] < run.precision.min_scale:
                        raise Diverged(f"loss scale {m['train/loss_scale']:g} fell below amp.min_scale="
                                       f"{run.precision.min_scale:g} at step {step}: training has diverged; "
                                       "lower optim.lr or use amp=bf16")
                if step % t.eval_every == 0 or step == t.max_steps:
                    metrics = last_eval = evaluate(run)
                    loss = metrics["eval/loss"]
                    eval_losses.append(loss)
                    write_scalars(writer, metrics, step)
                    display.eval(step, metrics)
                    if not per_step_schedule:
                        run.scheduler.step(loss)
                # With more than one process, all ranks must stop after the same step: they agree at
                # log steps (one tiny collective there), never with a collective on every step.
                if world.size > 1 and log_step:
                    stop.signum = distributed.agreed_signal(stop.signum)
                if stop.signum and (world.size == 1 or log_step):
                    if writer:
                        writer.flush()
                    path = save(step)
                    raise Preempted(stop.signum, (
                        f"stopped by {stop.name} after step {step}; checkpoint: {path}; to resume, run the same "
                        f"command with checkpoint.resume=auto {shlex.quote(run_dir_override(run_dir))}"))
                if step == t.max_steps or (c.every and step % c.every == 0):
                    save(step)
        summary = {
            **eval_summary(eval_losses, last_eval),
            "final train loss": m.get("train/loss", float("nan")),
            "clip fraction": clipped_total / t.max_steps,
            "skipped steps": int(m.get("train/skipped_steps", 0)),
            "rollbacks": guard.rollbacks if guard else 0,
            "final loss scale": m.get("train/loss_scale", run.precision.loss_scale()),
            "mean tokens/s": sum(speeds) / len(speeds) if speeds else float("nan"),
            "time (s)": time.perf_counter() - start,
            "steps": t.max_steps,
            "checkpoints": str(ckpt_dir),
        }
        if hparams is not None and writer:
            write_hparams(writer, hparams, summary, step)
    finally:
        display.close()
        if writer:
            writer.close()
    return summary
