"""Skip-step (guard.skip): the device-side decision against a plain-Python reference, its exact
resume, and an injected spike in a real run."""

import io
import math
import statistics
from collections import deque

import pytest
import torch

import tests.poison
from tests.conftest import TINY, make_config
from trainer.build import build
from trainer.loop import train
from trainer.monitoring.display import Display
from trainer.monitoring.report import read_scalars
from trainer.skip_step import SkipStep

CPU = torch.device("cpu")
SIGMA, WINDOW = 3.0, 8


def reference(steps, sigma=SIGMA, window=WINDOW):
    """Each step's spike flag, by the rule in plain Python: judged against the sample mean and
    standard deviation of the last `window` finite steps' losses and norms (spiked ones too, as
    OLMo-core's), once half of it is there; a non-finite step is skipped as such, not as a spike."""
    held, flags = deque(maxlen=window), []
    for loss, norm in steps:
        spiked = False
        if len(held) >= max(2, window // 2) and math.isfinite(norm):
            for i, x in enumerate((loss, norm)):
                past = [h[i] for h in held]
                spiked |= x - statistics.fmean(past) > sigma * statistics.stdev(past)
        flags.append(spiked)
        if math.isfinite(norm):
            held.append((loss, norm))
    return flags


def scripted(n=40, seed=0):
    """Losses and norms with noise, three spikes (one in the loss only, one in the norm only, one
    while the window is still filling: not judged) and a non-finite norm, which never joins."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 2, generator=gen).tolist()
    steps = [(2.0 - 0.01 * i + 0.1 * a, 1.0 + 0.2 * b) for i, (a, b) in enumerate(noise)]
    steps[2] = (50.0, 1.0)
    steps[15] = (9.0, steps[15][1])
    steps[22] = (steps[22][0], 40.0)
    steps[30] = (steps[30][0], math.inf)
    return steps


def flags(skip, steps):
    out = []
    for loss, norm in steps:
        norm_t = torch.tensor(norm)
        found_inf = torch.tensor(0.0 if math.isfinite(norm) else 1.0)
        spiked, flag = skip(torch.tensor(loss), norm_t, found_inf)
        assert flag.item() == max(spiked.item(), found_inf.item())
        out.append(bool(spiked.item()))
    return out


@pytest.mark.unit
def test_spikes_are_flagged_as_the_plain_python_rule_says():
    steps = scripted()
    expected = reference(steps)
    assert expected[15] and expected[22] and not expected[2]  # the script does what it says
    assert sum(expected) == 2
    assert flags(SkipStep(SIGMA, WINDOW, CPU), steps) == expected


@pytest.mark.unit
def test_a_lasting_rise_is_skipped_for_a_while_then_trained_on():
    """The loss settles 10x higher (a run diverging, as in the instability benchmark): the first
    steps of the new level are spikes, then the window has taken them in and steps apply again.
    A window of good steps only flagged every step after the rise, and the run never moved again."""
    gen = torch.Generator().manual_seed(1)
    noise = torch.rand(60, 2, generator=gen).tolist()
    steps = [(2.0 + 0.1 * a, 1.0 + 0.1 * b) for a, b in noise[:20]]
    steps += [(20.0 + a, 10.0 + b) for a, b in noise[20:]]
    expected = reference(steps)
    assert expected[20] and not any(expected[30:])  # skipped at first, not for good
    assert flags(SkipStep(SIGMA, WINDOW, CPU), steps) == expected


@pytest.mark.unit
def test_a_resumed_skip_step_flags_the_same_steps():
    """State saved after 20 steps (through torch.save and a weights_only load, as checkpoints are)
    and loaded into a new one: the same flags as one that ran on; a smaller window keeps the most
    recent steps."""
    steps = scripted(seed=1)
    whole = flags(SkipStep(SIGMA, WINDOW, CPU), steps)
    first = SkipStep(SIGMA, WINDOW, CPU)
    flags(first, steps[:20])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = SkipStep(SIGMA, WINDOW, CPU)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert flags(resumed, steps[20:]) == whole[20:]
    smaller = SkipStep(SIGMA, 4, CPU)
    smaller.load_state_dict(first.state_dict())
    assert smaller.recent() == first.recent()[-4:]


def _run(tmp_path, name, monkeypatch, scale, *extra):
    monkeypatch.setattr(tests.poison.ScaledLossLM, "SCALE", scale)
    # A constant LR: runs of 29 and 30 steps take the same steps (a cosine would depend on max_steps).
    cfg = make_config(*TINY, "model._target_=tests.poison.ScaledLossLM", "sched=constant", "guard.skip_window=16",
                      "trainer.log_every=10", "trainer.eval_every=100", *extra)
    run = build(cfg)
    train(run, tmp_path / name, Display(cfg.trainer.max_steps, quiet=True))
    return run, read_scalars(tmp_path / name)


@pytest.mark.integration
@pytest.mark.parametrize("amp", ["fp32", "fp16"])
def test_an_injected_spike_never_reaches_the_weights(tmp_path, monkeypatch, amp):
    """Step 30's loss, and so its gradients, x50: with guard.skip the weights and AdamW's state
    after 30 steps equal those after 29; counted once in train/skipped_spikes, not as a non-finite
    step. Without guard.skip the same spike is applied. fp16 goes through the scaler (scale 1: no
    overflow, so the skip is the spike's)."""
    precision = [f"amp={amp}", *(["amp.init_scale=1.0"] if amp == "fp16" else [])]
    before, _ = _run(tmp_path, "29", monkeypatch, {}, "guard.skip=true", "trainer.max_steps=29", *precision)
    skipped, scalars = _run(tmp_path, "30", monkeypatch, {30: 50.0}, "guard.skip=true", "trainer.max_steps=30",
                            *precision)
    applied, _ = _run(tmp_path, "off", monkeypatch, {30: 50.0}, "trainer.max_steps=30", *precision)
    for a, b, c in zip(before.model.parameters(), skipped.model.parameters(), applied.model.parameters()):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    for state_a, state_b in zip(before.optimizer.state.values(), skipped.optimizer.state.values()):
        for key in state_a:
            assert torch.equal(torch.as_tensor(state_a[key]), torch.as_tensor(state_b[key])), key
    assert scalars["train/skipped_spikes"] == [(10, 0.0), (20, 0.0), (30, 1.0)]
    assert scalars["train/skipped_steps"][-1] == (30, 0.0)
