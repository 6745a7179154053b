"""The logger: what a log step writes, read back with TensorBoard's own readers."""

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch.utils.tensorboard import SummaryWriter

from tests.conftest import TINY, make_config
from trainer.build import build
from trainer.monitoring.logger import Logger
from trainer.monitoring.report import read_scalars

pytestmark = pytest.mark.integration

METRICS = [{"train/loss": 2.5, "train/grad_norm": 1.25, "train/lr": 3e-4, "train/skipped_steps": 0.0},
           {"train/loss": 2.0, "train/grad_norm": float("inf"), "train/lr": 2.5e-4, "train/skipped_steps": 1.0}]


def events(run_dir):
    [path] = run_dir.glob("events.out.tfevents.*")
    return [e for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]


def test_a_log_step_is_one_event_holding_what_add_scalar_would_write(tmp_path):
    """Read by TensorBoard's reader: every tag at its steps with its value; in the file, one event
    per log step whose values equal those SummaryWriter.add_scalar writes one event each."""
    run = build(make_config(*TINY))
    logger = Logger(run, tmp_path / "ours", start_step=0, main=True)
    reference = SummaryWriter(str(tmp_path / "add_scalar"))
    for step, metrics in zip((10, 20), METRICS):
        logger.log(step, metrics)
        for tag, value in metrics.items():
            reference.add_scalar(tag, value, step)
    logger.close()
    reference.close()

    scalars = read_scalars(tmp_path / "ours")
    for tag in METRICS[0]:
        assert scalars[tag] == [(10, pytest.approx(METRICS[0][tag])), (20, pytest.approx(METRICS[1][tag]))]
    ours = [e for e in events(tmp_path / "ours") if e.summary.value[0].tag.startswith("train/")]
    assert [(e.step, len(e.summary.value)) for e in ours] == [(10, 4), (20, 4)]
    theirs = events(tmp_path / "add_scalar")
    assert [v for e in ours for v in e.summary.value] == [v for e in theirs for v in e.summary.value]
