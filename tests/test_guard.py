"""The loss-spike guard: its decisions on scripted losses, and a real rollback past a poisoned batch."""

import math

import pytest
import torch

import tests.poison
from tests.conftest import TINY, make_config, read_scalars, sigterm_during_step
from trainer.build import build
from trainer.monitoring.display import Display
from trainer.guard import Diverged, SpikeGuard
from trainer.loop import train


@pytest.mark.unit
def test_spike_is_judged_against_the_running_window():
    guard = SpikeGuard(window=6, threshold=3.0, nonfinite_steps=2, max_rollbacks=1)
    calm = [2.0, 2.1, 1.9, 2.0, 2.05, 1.95]  # mean 2.0, std ~0.065: the bar is ~2.19
    assert guard.bad_steps(list(range(1, 7)), calm) == []
    assert guard.bad_steps([7, 8, 9], [2.1, 2.5, 2.0]) == [8]
    assert list(guard.history)[-1] == 2.1  # the spike did not join the history


@pytest.mark.unit
def test_no_verdict_before_half_a_window_and_nan_runs():
    guard = SpikeGuard(window=10, threshold=3.0, nonfinite_steps=2, max_rollbacks=1)
    assert guard.bad_steps([1, 2, 3], [5.0, 1.0, 50.0]) == []  # too little history to judge
    assert guard.bad_steps([4, 5, 6], [math.nan, 1.0, math.inf]) == []  # not two in a row (yet)
    assert guard.bad_steps([7, 8], [math.nan, math.inf]) == [6, 7]  # the run goes on across calls


GUARDED = [*TINY, "model._target_=tests.poison.PoisonableLM", "data._target_=tests.poison.PoisonedData",
           "data.num_samples=800", "optim=sgd", "optim.lr=0.5", "optim.momentum=0", "sched=constant",
           "clip=none", "trainer.max_steps=60", "trainer.log_every=5", "trainer.eval_every=60",
           "checkpoint.every=5"]
POISON_STEP = 21


def run(tmp_path, monkeypatch, *extra):
    # The first sample of step 21's batch: the epoch-0 order is a permutation seeded by trainer.seed=0.
    order = torch.randperm(800, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(tests.poison, "POISON_INDEX", int(order[8 * (POISON_STEP - 1)]))
    cfg = make_config(*GUARDED, *extra)
    return train(build(cfg), tmp_path, Display(60, quiet=True))


@pytest.mark.slow
def test_poisoned_batch_is_rolled_back_and_skipped(tmp_path, monkeypatch):
    clean = run(tmp_path / "clean", monkeypatch, "data._target_=trainer.data.SyntheticData",
                "model._target_=tests.user_model.BigramLM")
    unguarded = run(tmp_path / "unguarded", monkeypatch)
    guarded = run(tmp_path / "guarded", monkeypatch, "guard.spike=true", "guard.window=10")

    assert guarded["rollbacks"] == 1
    rollbacks = dict(read_scalars(tmp_path / "guarded")["train/rollbacks"])
    assert rollbacks[POISON_STEP - 1] == 0 and rollbacks[60] == 1
    assert guarded["final eval loss"] == pytest.approx(clean["final eval loss"], rel=0.05)
    # Without the guard the poisoned step wrecks the run: the test can tell the difference.
    assert not unguarded["final eval loss"] < 2 * clean["final eval loss"]


@pytest.mark.slow
def test_gives_up_after_max_rollbacks(tmp_path, monkeypatch):
    with pytest.raises(Diverged, match="guard.max_rollbacks"):
        run(tmp_path, monkeypatch, "guard.spike=true", "guard.window=10", "guard.max_rollbacks=0")


@pytest.mark.unit
def test_checkpoints_must_follow_checked_intervals():
    from trainer.config import ConfigError, validate

    with pytest.raises(ConfigError, match="checkpoint.every=7 must be a multiple of trainer.log_every=5"):
        validate(make_config(*GUARDED, "guard.spike=true", "checkpoint.every=7"))


@pytest.mark.integration
def test_fp16_stops_when_the_loss_scale_collapses(tmp_path):
    cfg = make_config(*TINY, "model._target_=tests.poison.OverflowingLM", "amp=fp16", "amp.init_scale=8",
                      "amp.min_scale=1", "trainer.max_steps=50", "trainer.log_every=5")
    with pytest.raises(Diverged, match=r"loss scale 0.25 fell below amp.min_scale=1 at step 5"):
        train(build(cfg), tmp_path, Display(50, quiet=True))


@pytest.mark.unit
def test_a_run_of_non_finite_losses_counts_across_log_intervals():
    """With trainer.log_every=1 each check sees one loss; a run crossing a boundary is one run."""
    one_per_interval = SpikeGuard(window=10, threshold=3.0, nonfinite_steps=3, max_rollbacks=1)
    assert [one_per_interval.check(s, [math.nan]) for s in (1, 2)] == [{}, {}]
    assert list(one_per_interval.check(3, [math.nan])) == [1, 2, 3]

    crossing = SpikeGuard(window=10, threshold=3.0, nonfinite_steps=3, max_rollbacks=1)
    for step in (1, 2):
        crossing.record(step, (0, step))
    assert crossing.check(2, [1.0, math.nan]) == {}
    assert crossing.positions == {2: [(0, 2)]}  # kept: step 2 may still turn out bad
    restored = SpikeGuard(window=10, threshold=3.0, nonfinite_steps=3, max_rollbacks=1)
    restored.load_state_dict(crossing.state_dict())  # a checkpoint inside the run
    assert restored.nonfinite == [2] and restored.positions == {2: [(0, 2)]}
    for step in (3, 4):
        restored.record(step, (0, step))
    assert list(restored.check(4, [math.nan, math.nan])) == [2, 3, 4]
    assert sorted(restored.positions) == [2, 3, 4]  # every bad step's batches can be skipped

    finite_breaks_it = SpikeGuard(window=10, threshold=3.0, nonfinite_steps=3, max_rollbacks=1)
    assert finite_breaks_it.check(2, [math.nan, math.nan]) == {}
    assert finite_breaks_it.check(4, [1.0, math.nan]) == {} and finite_breaks_it.nonfinite == [4]


@pytest.mark.integration
def test_nan_steps_one_per_log_interval_trigger_a_rollback(tmp_path, monkeypatch):
    """trainer.log_every=1: three NaN steps in a row are three checks of one loss each."""
    monkeypatch.setattr(tests.poison.ScaledLossLM, "SCALE", dict.fromkeys((12, 13, 14), math.nan))
    cfg = make_config(*TINY, "model._target_=tests.poison.ScaledLossLM", "trainer.max_steps=20", "trainer.log_every=1",
                      "trainer.eval_every=20", "checkpoint.every=5", "guard.spike=true", "guard.nonfinite_steps=3")
    summary = train(build(cfg), tmp_path, Display(20, quiet=True))
    assert summary["rollbacks"] == 1
    losses = dict(read_scalars(tmp_path)["train/loss"])
    assert sorted(losses) == list(range(1, 21))  # the undone steps 11-14 were redone: one value each
    assert all(math.isfinite(v) for v in losses.values())


@pytest.mark.slow
def test_a_stop_signal_mid_interval_checks_the_interval_before_it_checkpoints(tmp_path, monkeypatch):
    """SIGTERM during step 23, two steps after the poisoned step 21 and before the guard's log step
    25: the checkpoint must not hold the unchecked spike. The guard checks 21-23 at once, rolls back
    to 20, redoes step 21 without the poisoned batch, and only then checkpoints and stops; the
    resumed run ends where the uninterrupted guarded run ends."""
    from trainer import loop
    from trainer.preemption import Preempted
    from trainer.step import train_step

    guarded = ["guard.spike=true", "guard.window=10"]
    reference = run(tmp_path / "ref", monkeypatch, *guarded)
    sigterm_during_step(monkeypatch, 23)
    with pytest.raises(Preempted, match="after step 21;"):
        run(tmp_path / "run", monkeypatch, *guarded)
    monkeypatch.setattr(loop, "train_step", train_step)
    resumed = run(tmp_path / "run", monkeypatch, *guarded, "checkpoint.resume=auto")
    assert resumed["rollbacks"] == 1
    assert resumed["final eval loss"] == pytest.approx(reference["final eval loss"], rel=1e-6)
