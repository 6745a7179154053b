"""The meter: each step's values kept as the step returned them, the interval's averages taken at the log step."""

import math
import random
import statistics

import pytest
import torch

from trainer.clipping import NormClip
from trainer.monitoring.metrics import Meter, SpikeScore
from trainer.step import StepResult, not_finite

CPU = torch.device("cpu")


def result(loss, norm, clipped_norm, clipped, finite):
    return StepResult(torch.tensor(loss), torch.tensor(norm), torch.tensor(clipped_norm), torch.tensor(clipped),
                      torch.tensor(0.0 if finite else 1.0))


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
    """Saved after two of four steps and loaded into a new meter: this code's state, and by hand the
    states earlier code wrote: from 6cfab1e a device buffer of every value per step (finite as 1/0),
    before it running sums with only loss and norm per step."""
    whole = Meter(CPU, 4)
    for r in STEPS:
        whole.add(r, 8, 128)
    expected = whole.read()
    first = Meter(CPU, 4)
    for r in STEPS[:2]:
        first.add(r, 8, 128)
    sums_before = {"sums": torch.tensor([6.0, 2.0, 3.0, 1.0, 1.0, 1.0]), "per_step": torch.tensor([[2.0, 4.0, 0, 0],
             [3.0, math.inf, 0, 0]]), "skipped_total": torch.tensor(1.0), "clipped_total": torch.tensor(1.0),
             "steps": 2, "samples": 16, "tokens": 256}
    buffer_6cfab1e = {"per_step": torch.tensor([[2.0, 4.0, 0, 0], [3.0, math.inf, 0, 0], [1.0, math.nan, 0, 0],
                                             [1.0, 0.0, 0, 0], [1.0, 0.0, 0, 0]]),
                   "carried": torch.zeros(6), "counted_from": 0, "skipped_total": torch.tensor(0.0),
                   "clipped_total": torch.tensor(0.0), "steps": 2, "samples": 16, "tokens": 256}
    for state in (first.state_dict(), buffer_6cfab1e, sums_before):
        resumed = Meter(CPU, 4)
        resumed.load_state_dict(state)
        for r in STEPS[2:]:
            resumed.add(r, 8, 128)
        m, per_step = resumed.read()
        for tag in ("train/loss", "train/grad_norm", "train/grad_norm_clipped", "train/clip_fraction",
                    "train/skipped_steps", "clipped_total"):
            assert m[tag] == pytest.approx(expected[0][tag]), tag
        assert per_step["norm"] == expected[1]["norm"]


@pytest.mark.unit
def test_the_models_extras_are_averaged_where_finite_and_resume_mid_interval():
    """A model's extra outputs (the GPT's z_loss) per step 0.5, 1.5, NaN, 2.5: train/z_loss is 1.5,
    by hand, read whole or saved after two steps and resumed; a checkpoint from before extras (no
    "extras" in it) resumes to the mean of the steps after it (2.5)."""
    extras = [0.5, 1.5, math.nan, 2.5]
    steps = [r._replace(extras={"z_loss": torch.tensor(z)}) for r, z in zip(STEPS, extras)]
    whole = Meter(CPU, 4)
    for r in steps:
        whole.add(r, 8, 128)
    assert whole.read()[0]["train/z_loss"] == pytest.approx(1.5)
    first = Meter(CPU, 4)
    for r in steps[:2]:
        first.add(r, 8, 128)
    saved = first.state_dict()
    older = {k: v for k, v in saved.items() if k != "extras"}
    for state, expected in ((saved, 1.5), (older, 2.5)):
        resumed = Meter(CPU, 4)
        resumed.load_state_dict(state)
        for r in steps[2:]:
            resumed.add(r, 8, 128)
        assert resumed.read()[0]["train/z_loss"] == pytest.approx(expected)


@pytest.mark.unit
def test_a_model_whose_extras_change_from_step_to_step_is_named():
    from trainer.config import ConfigError

    meter = Meter(CPU, 4)
    meter.add(STEPS[0]._replace(extras={"z_loss": torch.tensor(1.0)}), 8, 128)
    meter.add(STEPS[2], 8, 128)
    with pytest.raises(ConfigError, match="^model._target_: forward.*returned z_loss at one step and other entries"):
        meter.read()


@pytest.mark.unit
def test_norm_clip_post_clip_values_are_derived_at_the_read_as_measured_on_the_gradients():
    """NormClip returns only the pre-clip norm; the meter derives the post-clip norm and the clipped
    flag at the log step. Reference: the clipped gradients' norm, summed by hand in float64."""
    clip = NormClip(1.0)
    meter = Meter(CPU, 4, clip.clipped_stats)
    measured = []
    for scale in (3.0, 0.5, 1.0 + 1e-3, math.inf):
        p = torch.zeros(3, requires_grad=True)
        p.grad = torch.tensor([1.0, 2.0, 2.0]) / 3 * scale  # norm: scale
        r = clip([p])
        assert r.clipped_norm is None and r.clipped is None
        meter.add(StepResult(torch.tensor(1.0), r.norm, None, None, not_finite(r.norm)), 4, 64)
        measured.append(math.sqrt(sum(float(g) ** 2 for g in p.grad.tolist())))
    state = meter.state_dict()  # mid-interval too: the derived values are what a checkpoint holds
    m, _ = meter.read()
    assert m["train/grad_norm_clipped"] == pytest.approx(sum(measured[:3]) / 3, rel=1e-6)
    assert m["train/clip_fraction"] == 0.5 and m["train/skipped_steps"] == 1  # 3.0 and 1.001 clipped; inf skipped, not counted
    assert state["per_step"][2, :3].tolist() == pytest.approx(measured[:3], rel=1e-6)
    assert state["per_step"][3].tolist() == [1.0, 0.0, 1.0, 1.0] and state["per_step"][4].tolist() == [1, 1, 1, 0]


@pytest.mark.unit
def test_spike_score_counts_steps_above_mean_plus_sigma_std_of_the_steps_before():
    """By hand, window 4 (judged from 2 steps on), sigma 1: losses 1, 1, 1, 1, 5, 1 and norms 1
    except 3 at the sixth step. Step 5: the four before are all 1 (std 0): 5 spikes. Step 6: the
    four before are 1, 1, 1, 5 (mean 2, population std sqrt(3) = 1.73), loss 1 does not, norm 3
    against 1, 1, 1, 1 (std 0) does. 2 of 6 steps; the next interval judges against the last four."""
    score = SpikeScore(window=4, sigma=1.0)
    assert score([1, 1, 1, 1, 5, 1], [1, 1, 1, 1, 1, 3]) == pytest.approx(2 / 6)
    # The window is now (1, 1), (1, 1), (5, 1), (1, 3): losses 1, 1, 5, 1 give 2 + 1.73 = 3.73, so
    # 3.7 does not spike; it joins, and 1, 5, 1, 3.7 give 2.675 + 1.737 = 4.41, which 4.5 exceeds.
    assert score([3.7, 4.5], [1, 1]) == pytest.approx(1 / 2)
    assert score([math.nan], [math.inf]) == 0.0  # not finite: no spike, and never joins the window
    assert len(score.history) == 4 and (math.nan, math.inf) not in score.history


def spikes_by_definition(steps, window, sigma):
    """Each step's spike flag (None: not finite, not judged), straight from the definition, one step
    at a time: against statistics.fmean and pstdev of the finite steps before it, at most `window`
    of them and at least half as many."""
    past, flags = [], []
    for loss, norm in steps:
        if not (math.isfinite(loss) and math.isfinite(norm)):
            flags.append(None)
            continue
        last = past[-window:]
        flags.append(len(last) >= max(2, window // 2) and any(
            x > statistics.fmean(col) + sigma * statistics.pstdev(col) for x, col in zip((loss, norm), zip(*last))))
        past.append((loss, norm))
    return flags


@pytest.mark.unit
@pytest.mark.parametrize("window", [4, 7, 20])
def test_spike_score_agrees_with_the_definition_step_by_step_while_the_window_fills_and_when_full(window):
    """300 steps of noisy losses and norms with spikes and non-finite steps, in intervals of 1 to 13
    steps: each interval's score is its share of steps the definition flags (spikes_by_definition),
    both while the window fills and once full (numpy's windows at once)."""
    rng = random.Random(window)
    steps = [(rng.lognormvariate(0, 0.3), rng.lognormvariate(0, 0.5)) for _ in range(300)]
    for i in rng.sample(range(300), 12):
        steps[i] = (steps[i][0] * 20, steps[i][1])
    for i in rng.sample(range(300), 6):
        steps[i] = (math.nan, math.inf) if i % 2 else (steps[i][0], math.nan)
    flags = spikes_by_definition(steps, window, sigma=2.0)
    score, start, seen = SpikeScore(window, sigma=2.0), 0, 0
    while start < len(steps):
        interval = steps[start:start + rng.randint(1, 13)]
        expected = sum(1 for f in flags[start:start + len(interval)] if f) / len(interval)
        assert score([s[0] for s in interval], [s[1] for s in interval]) == pytest.approx(expected, abs=1e-12)
        start, seen = start + len(interval), seen + expected * len(interval)
    assert seen >= 10  # the spikes were there to find


@pytest.mark.unit
def test_loss_max_is_the_largest_finite_step_loss_of_the_interval():
    meter = Meter(CPU, 4)
    for r in STEPS:  # losses 2, 4, 6, NaN
        meter.add(r, 8, 128)
    assert meter.read()[0]["train/loss_max"] == 6.0
