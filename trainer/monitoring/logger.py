"""TensorBoard (and with log.mlflow, MLflow) for one run: when to log, what a log step records,
and the final HParams.

Rank 0 alone writes, into the run dir itself (one run per directory, which TensorBoard's run
list, `trainer report` and the HPARAMS tab all rely on); other ranks hold no writer.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure_masked_crc32c
from tensorboard.summary.writer import record_writer
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from trainer.build import Run
from trainer.guard import SpikeGuard
from trainer.monitoring.layers import LayerProbe

try:  # Google's C CRC-32C, a dependency: see use_c_checksum
    import google_crc32c
except ImportError:
    google_crc32c = None

# The final metrics each run records for TensorBoard's HPARAMS tab and `trainer report`.
HPARAM_METRICS = {
    "hparams/final_eval_loss": "final eval loss",
    "hparams/best_eval_loss": "best eval loss",
    "hparams/clip_fraction": "clip fraction",
    "hparams/skipped_steps": "skipped steps",
    "hparams/tokens_per_sec": "mean tokens/s",
}


# A log step's event waits for TensorBoard's writer until this many wait or the first of them is
# this old, and goes at once at the run's last step, before a checkpoint, a rollback, a stop, and at
# the end (Logger.log). Each hand-over wakes the writer's thread once for all of them: woken per
# event, beside a training step, it cost about 2.5% of the tiny bench preset's CPU (interleaved
# blocks, three runs: 1.043, 1.049, 1.062 against 1.018, 1.036, 1.028 handed over five at a time).
HAND_OVER_EVENTS = 10
HAND_OVER_SECONDS = 2.0


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of data (what TensorBoard's event files hold per record), by
    google-crc32c's C implementation."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def use_c_checksum() -> bool:
    """Have TensorBoard's event writer checksum its records in C; True if it does.

    Its record writer (torch.utils.tensorboard writes through it) computes each record's CRC-32C
    in pure Python: about 60 us for a log step's event of 12 scalars, in the writer's thread, 0.6%
    of the instructions of a step of the tiny bench preset (cachegrind). TensorBoard's issue #4354
    asks for a C checksum; tensorboardX uses a C library where one is installed. This points the
    record writer's lookup at masked_crc32c above, once it gives TensorBoard's own result on a
    test string; without google-crc32c's C extension, or a TensorBoard whose writer no longer
    looks it up there, the writer is left as it is.
    """
    if google_crc32c is None or google_crc32c.implementation != "c":
        return False
    current = record_writer.__dict__.get("masked_crc32c")
    if current is masked_crc32c:
        return True
    check = bytes(range(256)) * 2
    if current is not pure_masked_crc32c or masked_crc32c(check) != pure_masked_crc32c(check):
        return False
    record_writer.masked_crc32c = masked_crc32c
    return True


def wait_to_sort_last(run_dir: Path) -> None:
    """Return once a new event file in run_dir will sort after those there.

    TensorBoard reads a dir's event files in name order: the second each was opened, the host, the
    pid, then a per-process counter compared as text (".10" before ".9"). A file opened in the same
    second as one there could sort before it, and the older file's purge_step would then drop the
    newer steps: so wait for a later second. Only a resume in the same process and second as the
    run it resumes (the tests' in-process resumes) ever waits.
    """
    seconds = [int(part) for p in run_dir.glob("events.out.tfevents.*") if (part := p.name.split(".")[3]).isdigit()]
    if seconds and (wait := max(seconds) + 1 - time.time()) > 0:
        time.sleep(wait)


class Logger:
    def __init__(self, run: Run, run_dir: Path, start_step: int, main: bool):
        self.every, self.max_steps = run.cfg.trainer.log_every, run.cfg.trainer.max_steps
        self.writer: SummaryWriter | None = None
        self.tags: tuple[str, ...] = ()  # of the summary log() reuses
        self.summary = Summary()
        self.pending: list[Event] = []  # log steps' events not yet handed to the writer (HAND_OVER_EVENTS)
        self.first_pending = 0.0  # time.monotonic() when the first of them was logged
        self.mlflow = None
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            config = OmegaConf.to_yaml(run.cfg, resolve=True)  # once, for the file and the event: 3 ms each
            (run_dir / "config.yaml").write_text(config, encoding="utf-8")  # what OmegaConf.save writes
            # purge_step makes TensorBoard drop what an interrupted run logged after the checkpoint, or
            # (a fresh start in a dir a killed run left events in) everything it logged.
            wait_to_sort_last(run_dir)
            use_c_checksum()
            # (max_queue: room for a whole hand-over, so handing it over never waits for the writer)
            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1, max_queue=2 * HAND_OVER_EVENTS)
            self.writer.add_text("config", "```\n" + config + "\n```")
            # Written before the first step: the writer's thread would otherwise checksum and append
            # the config's event during the first steps.
            self.writer.flush()
            if run.cfg.log.get("mlflow"):
                from trainer.monitoring.mlflow_run import MLflowRun

                self.mlflow = MLflowRun(run.cfg, run_dir, resumed=start_step > 0)

    def should_log(self, step: int) -> bool:
        """Log steps: every trainer.log_every steps, and the last step."""
        return step % self.every == 0 or step == self.max_steps

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Each metric as a TensorBoard scalar at step (nothing on ranks other than 0), handed to the
        writer with the other pending log steps' (HAND_OVER_EVENTS) within 10 log steps or 2 seconds.

        All of them in one event, as add_scalar would write each (a simple_value): one summary of
        eleven values costs a seventh of eleven add_scalar calls (120 against 900 us measured here),
        and TensorBoard reads either the same. The summary is kept and only its values set while
        the tags stay the same (every log step but the first, as a rule): 3 us against 13 to build
        it; the event copies it.
        """
        if self.writer:
            if tuple(metrics) != self.tags:
                self.tags = tuple(metrics)
                self.summary = Summary(value=[Summary.Value(tag=tag) for tag in self.tags])
            for slot, value in zip(self.summary.value, metrics.values()):
                slot.simple_value = float(value)
            if not self.pending:
                self.first_pending = time.monotonic()
            self.pending.append(Event(step=step, wall_time=time.time(), summary=self.summary))
            if (len(self.pending) >= HAND_OVER_EVENTS or step >= self.max_steps
                    or time.monotonic() - self.first_pending >= HAND_OVER_SECONDS):
                self.hand_over()
        if self.mlflow:
            self.mlflow.log(step, metrics)

    def hand_over(self) -> None:
        """Give TensorBoard's writer the pending events, in order; its thread writes them."""
        for event in self.pending:
            self.writer.file_writer.add_event(event, event.step, event.wall_time)
        self.pending.clear()

    def restarted_at(self, step: int) -> None:
        """Tell TensorBoard the steps after `step` are being redone (a rollback): it drops the old ones."""
        if self.writer:
            self.hand_over()  # the steps before it first, so the restart drops them too
            self.writer.file_writer.add_event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))

    def hparams(self, hparams: dict[str, object], summary: dict[str, object], step: int) -> None:
        """The run's settings and final metrics for the HPARAMS tab, in the run's own directory.

        SummaryWriter.add_hparams would start a separate run in a subdirectory; writing the plugin's
        summaries through this writer keeps one run per directory.
        """
        if not self.writer:
            return
        self.hand_over()
        metrics = {tag: float(summary[key]) for tag, key in HPARAM_METRICS.items()}
        for s in hparams_summaries(hparams, metrics):
            self.writer.file_writer.add_summary(s)
        self.log(step, metrics)

    def flush(self) -> None:
        """Every event logged so far in the event file (before a checkpoint, at a stop)."""
        if self.writer:
            self.hand_over()
            self.writer.flush()

    def close(self, error: BaseException | None = None) -> None:
        """error: what ended the run early, if anything (MLflow records the run's status)."""
        if self.writer:
            self.hand_over()
            self.writer.close()
        if self.mlflow:
            self.mlflow.end(error)


def policy_metrics(run: Run, lr: float, guard: SpikeGuard | None, probe: LayerProbe | None) -> dict[str, float]:
    """What a log interval records besides the meter's means: LR, loss scale, the guard, per-layer norms."""
    m = {"train/lr": lr, "train/loss_scale": run.precision.loss_scale()}
    if guard:
        m["train/rollbacks"] = guard.rollbacks
    if probe:
        m.update(probe.read())
    if getattr(run.clip, "controller", None):
        m["clip/max_norm"], m["clip/lr_scale"] = run.clip.max_norm, run.clip.controller.lr_scale
    return m
