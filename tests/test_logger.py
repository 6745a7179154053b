"""The logger: what a log step writes, read back with TensorBoard's own readers."""

import os
import socket
import time

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch.utils.tensorboard import SummaryWriter

from tests.conftest import TINY, make_config
from trainer.build import build
from trainer.monitoring.logger import Logger, masked_crc32c, use_c_checksum
from trainer.monitoring.report import read_scalars

pytestmark = pytest.mark.integration

METRICS = [{"train/loss": 2.5, "train/grad_norm": 1.25, "train/lr": 3e-4, "train/skipped_steps": 0.0},
           {"train/loss": 2.0, "train/grad_norm": float("inf"), "train/lr": 2.5e-4, "train/skipped_steps": 1.0},
           # other tags (a step that adds one), then the first ones again: the logger reuses its summary
           {"train/loss": 1.5, "train/grad_norm": 0.5, "train/z_loss": 0.25, "train/lr": 2e-4, "train/skipped_steps": 1.0},
           {"train/loss": 1.0, "train/grad_norm": 0.75, "train/lr": 1.5e-4, "train/skipped_steps": 2}]
STEPS = (10, 20, 30, 40)


def events(run_dir):
    [path] = run_dir.glob("events.out.tfevents.*")
    return [e for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]


def test_a_log_step_is_one_event_holding_what_add_scalar_would_write(tmp_path):
    """Read by TensorBoard's reader: every tag at its steps with its value; in the file, one event
    per log step whose values equal those SummaryWriter.add_scalar writes one event each."""
    run = build(make_config(*TINY))
    logger = Logger(run, tmp_path / "ours", start_step=0, main=True)
    reference = SummaryWriter(str(tmp_path / "add_scalar"))
    for step, metrics in zip(STEPS, METRICS):
        logger.log(step, metrics)
        for tag, value in metrics.items():
            reference.add_scalar(tag, value, step)
    logger.close()
    reference.close()

    scalars = read_scalars(tmp_path / "ours")
    for tag in METRICS[0]:
        assert scalars[tag] == [(step, pytest.approx(m[tag])) for step, m in zip(STEPS, METRICS)]
    assert scalars["train/z_loss"] == [(30, 0.25)]
    ours = [e for e in events(tmp_path / "ours") if e.summary.value[0].tag.startswith("train/")]
    assert [(e.step, len(e.summary.value)) for e in ours] == [(10, 4), (20, 4), (30, 5), (40, 4)]
    theirs = events(tmp_path / "add_scalar")
    assert [v for e in ours for v in e.summary.value] == [v for e in theirs for v in e.summary.value]


def test_a_resumed_runs_events_sort_after_the_interrupted_runs_in_the_same_second(tmp_path):
    """TensorBoard reads a dir's files in name order, and the per-process counter at the end of a
    name compares as text: an interrupted run's file stamped this second (here the next, so that the
    test does not depend on the clock) with counter 9999 sorted after a resumed run's, whose
    purge_step then dropped nothing and the old file's dropped the new steps (only 1..6 left)."""
    run = build(make_config(*TINY))
    first = Logger(run, tmp_path, start_step=0, main=True)
    for step in range(1, 7):
        first.log(step, {"train/loss": float(step)})
    first.close()
    [path] = tmp_path.glob("events.out.tfevents.*")
    path.rename(tmp_path / f"events.out.tfevents.{int(time.time()) + 1}.{socket.gethostname()}.{os.getpid()}.9999")
    resumed = Logger(run, tmp_path, start_step=6, main=True)
    for step in range(7, 13):
        resumed.log(step, {"train/loss": float(step)})
    resumed.close()
    assert read_scalars(tmp_path)["train/loss"] == [(s, float(s)) for s in range(1, 13)]


def test_the_c_checksum_is_tensorboards_and_its_writer_uses_it(tmp_path):
    """masked_crc32c against TensorBoard's own pure-Python one on strings of every length to 600 (and
    CRC-32C's standard check value, 0xE3069283 for "123456789"); after a Logger starts, TensorBoard's
    record writer uses it, and TensorBoard's reader, which checks every record's checksum with its
    own function, reads the events back."""
    # Skipped only where trainer's dependencies were not installed (the GPU check's bare python).
    google_crc32c = pytest.importorskip("google_crc32c")
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure
    from tensorboard.summary.writer import record_writer

    assert google_crc32c.value(b"123456789") == 0xE3069283
    data = os.urandom(600)
    assert all(masked_crc32c(data[:n]) == pure(data[:n]) for n in range(601))
    logger = Logger(build(make_config(*TINY)), tmp_path, start_step=0, main=True)
    for step, metrics in zip(STEPS, METRICS):
        logger.log(step, metrics)
    logger.close()
    assert record_writer.masked_crc32c is masked_crc32c
    assert [e.step for e in events(tmp_path)] == [0, *STEPS]  # the config's text, then the log steps


def test_without_the_c_library_tensorboards_own_checksum_stays(monkeypatch):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure
    from tensorboard.summary.writer import record_writer

    from trainer.monitoring import logger

    monkeypatch.setattr(record_writer, "masked_crc32c", pure)
    monkeypatch.setattr(logger, "google_crc32c", None)  # as when its import failed
    assert use_c_checksum() is False and record_writer.masked_crc32c is pure


def test_log_steps_reach_the_event_file_in_hand_overs(tmp_path, monkeypatch):
    """A log step's event waits until HAND_OVER_EVENTS wait (then all go, in order), or the first
    has waited HAND_OVER_SECONDS; it goes at once at the run's last step, and the waiting ones go
    before a rollback's restart and at close."""
    from trainer.monitoring import logger as logger_module

    logger = Logger(build(make_config(*TINY, "trainer.max_steps=100")), tmp_path, start_step=0, main=True)

    def written():
        logger.writer.flush()  # what the writer was handed, in the file (not the pending events)
        return [(e.step, e.session_log.status) if e.HasField("session_log") else e.step
                for e in EventFileLoader(str(next(tmp_path.glob("events.out.tfevents.*")))).Load()
                if e.HasField("summary") or e.HasField("session_log")]

    start = written()  # the purge's restart marker and the config's text
    for step in range(1, 10):
        logger.log(step, {"train/loss": float(step)})
    assert written() == start
    logger.log(10, {"train/loss": 10.0})
    assert written() == [*start, *range(1, 11)]
    logger.log(11, {"train/loss": 11.0})
    logger.restarted_at(5)
    assert written() == [*start, *range(1, 12), (6, 1)]  # 11 before the restart at 6 (SessionLog.START)
    logger.log(6, {"train/loss": 6.0})
    monkeypatch.setattr(logger_module, "HAND_OVER_SECONDS", 0.0)  # the first has waited long enough
    logger.log(7, {"train/loss": 7.0})
    assert written()[-2:] == [6, 7]
    monkeypatch.undo()
    logger.log(8, {"train/loss": 8.0})
    logger.log(100, {"train/loss": 100.0})  # the last step
    assert written()[-2:] == [8, 100]
    logger.log(9, {"train/loss": 9.0})  # waits
    logger.close()
    assert [e.step for e in events(tmp_path)][-2:] == [100, 9]
