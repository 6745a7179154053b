"""The meter: each step's values in one device buffer, the interval's averages taken at the log step."""

import math

import pytest
import torch

from trainer.monitoring.metrics import Meter
from trainer.step import StepResult

CPU = torch.device("cpu")


def result(loss, norm, clipped_norm, clipped, finite):
    return StepResult(torch.tensor(loss), torch.tensor(norm), torch.tensor(clipped_norm), torch.tensor(clipped),
                      torch.tensor(finite))


STEPS = [result(2.0, 3.0, 1.0, True, True), result(4.0, math.inf, math.nan, False, False),
         result(6.0, 2.0, 1.0, True, True), result(math.nan, 0.5, 0.5, False, True)]


@pytest.mark.unit
def test_averages_are_over_the_steps_where_each_value_is_finite():
    """By hand: losses 2, 4, 6 (NaN left out); norms 3, 2, 0.5 (the non-finite step's left out);
    clipped 2 of 4 steps; one skipped step."""
    meter = Meter(CPU, 4)
    for r in STEPS:
        meter.add(r, 8, 128)
    m, per_step = meter.read()
    assert m["train/loss"] == pytest.approx(4.0) and m["train/grad_norm"] == pytest.approx(5.5 / 3)
    assert m["train/grad_norm_clipped"] == pytest.approx(2.5 / 3) and m["train/clip_fraction"] == 0.5
    assert m["train/skipped_steps"] == 1 and m["clipped_total"] == 2
    assert per_step["loss"][:3] == [2.0, 4.0, 6.0] and math.isnan(per_step["loss"][3])
    assert per_step["norm"] == [3.0, math.inf, 2.0, 0.5]
    meter.add(STEPS[1], 8, 128)  # the totals run on across intervals
    assert meter.read()[0]["train/skipped_steps"] == 2


@pytest.mark.unit
def test_a_checkpoint_mid_interval_resumes_to_the_same_averages_in_both_formats():
    """Saved after two of four steps and loaded into a new meter: this release's state, and the
    state earlier releases wrote (running sums; per step only loss and norm), as written by hand."""
    whole = Meter(CPU, 4)
    for r in STEPS:
        whole.add(r, 8, 128)
    expected = whole.read()
    first = Meter(CPU, 4)
    for r in STEPS[:2]:
        first.add(r, 8, 128)
    older = {"sums": torch.tensor([6.0, 2.0, 3.0, 1.0, 1.0, 1.0]), "per_step": torch.tensor([[2.0, 4.0, 0, 0],
             [3.0, math.inf, 0, 0]]), "skipped_total": torch.tensor(1.0), "clipped_total": torch.tensor(1.0),
             "steps": 2, "samples": 16, "tokens": 256}
    for state in (first.state_dict(), older):
        resumed = Meter(CPU, 4)
        resumed.load_state_dict(state)
        for r in STEPS[2:]:
            resumed.add(r, 8, 128)
        m, per_step = resumed.read()
        for tag in ("train/loss", "train/grad_norm", "train/grad_norm_clipped", "train/clip_fraction",
                    "train/skipped_steps", "clipped_total"):
            assert m[tag] == pytest.approx(expected[0][tag]), tag
        assert per_step["norm"] == expected[1]["norm"]
