"""trainer/preemption.py: how a stop signal is recorded and agreed on across ranks."""

import signal

import pytest

from trainer import distributed, preemption


@pytest.mark.unit
def test_a_signal_that_arrives_during_the_ranks_agreement_is_kept_for_the_next_log_step(monkeypatch):
    """The launcher signals every rank at once, so the signal often lands while the ranks are in
    the all-reduce that agrees on one: the "none" agreed before it came must not erase it (it did:
    both workers trained on and the launcher killed them 30 s later, without a checkpoint)."""
    stop = preemption.StopRequest()
    stop.processes = 2
    contributed = []

    def all_reduce_max(signum):  # the other rank has had no signal
        contributed.append(signum)
        if len(contributed) == 1:
            stop._handle(signal.SIGTERM, None)  # arrives after this rank's value went into the collective
        return signum

    monkeypatch.setattr(distributed, "agreed_signal", all_reduce_max)
    assert not stop.requested(log_step=True)  # agreed on none: no rank stops at this step
    assert not stop.requested(log_step=False)  # no collective between log steps
    assert stop.requested(log_step=True) and stop.signum == signal.SIGTERM
    assert contributed == [None, signal.SIGTERM]
    assert stop.name == "SIGTERM"
