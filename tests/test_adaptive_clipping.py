"""AGC, ZClip, AutoClip, AdaGC and the controller against references written here with plain loops."""

import math

import pytest
import torch

import tests.poison
from tests.conftest import TINY, make_config, read_scalars
from trainer.adaptive_clipping import AGC, AdaGC, AutoClip, ZClip
from trainer.build import build
from trainer.controller import Controller
from trainer.monitoring.display import Display
from trainer.loop import train

# A norm sequence with a calm start, a spike at index 30 and a smaller one at 36.
NORMS = [1.0 + 0.1 * math.sin(i) for i in range(30)] + [9.0] + [1.05, 0.95] * 3 + [3.0, 1.0]
DIRECTION = [0.6, -0.8, 0.0]  # a unit vector: the gradient is norm * DIRECTION


def param_with_norm(norm):
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor([norm * d for d in DIRECTION], dtype=torch.float64)
    return p


def run_policy(policy, norms):
    out = []
    for n in norms:
        p = param_with_norm(n)
        policy([p])
        out.append(p.grad.tolist())
    return out


def scaled(norm, target):
    coef = min(1.0, target / (norm + 1e-6))
    return [norm * coef * d for d in DIRECTION]


def zclip_reference(norms, alpha, z_thresh, warmup):
    """ZClip as the paper describes it, in plain Python."""
    expected, buffer, mean, var = [], [], None, None
    for n in norms:
        if mean is None:
            buffer.append(n)
            if len(buffer) == warmup:
                mean = sum(buffer) / warmup
                var = sum((x - mean) ** 2 for x in buffer) / warmup
            expected.append(scaled(n, math.inf))
            continue
        std = math.sqrt(var)
        z = (n - mean) / (std + 1e-6)
        if z > z_thresh:
            clip_to = mean + z_thresh * std / (z / z_thresh)
            expected.append(scaled(n, clip_to))
            seen = clip_to
        else:
            expected.append(scaled(n, math.inf))
            seen = n
        mean = alpha * mean + (1 - alpha) * seen
        var = alpha * var + (1 - alpha) * (seen - mean) ** 2
    return expected


@pytest.mark.unit
def test_zclip_matches_the_paper_step_by_step():
    got = run_policy(ZClip(alpha=0.97, z_thresh=2.5, warmup_steps=25), NORMS)
    expected = zclip_reference(NORMS, 0.97, 2.5, 25)
    for step, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g == pytest.approx(e, rel=1e-6, abs=1e-9), step
    assert math.hypot(*got[30]) < 2.0  # the spike was clipped hard


@pytest.mark.unit
def test_autoclip_is_the_percentile_of_the_history():
    history = 8
    got = run_policy(AutoClip(percentile=25.0, history=history), NORMS)
    seen = []
    for step, n in enumerate(NORMS):
        seen = (seen + [n])[-history:]
        xs = sorted(seen)
        pos = (len(xs) - 1) * 0.25
        lo, hi = math.floor(pos), math.ceil(pos)
        threshold = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
        assert got[step] == pytest.approx(scaled(n, threshold), rel=1e-6, abs=1e-9), step


def adagc_reference(pairs, max_norm, ratio, beta, warmup):
    """AdaGC on two tensors, as the authors' PyTorch code does it (lishuai-97/AdaGC), in plain
    Python: each step's norm per tensor after clipping (None on a non-finite step, which leaves the
    references alone)."""
    reference, out = [math.inf, math.inf], []
    for step, norms in enumerate(pairs, start=1):
        if not all(math.isfinite(n) for n in norms):
            out.append(None)
            continue
        if step <= warmup:
            coef = min(1.0, max_norm / (math.hypot(*norms) + 1e-6))
            clipped = [n * coef for n in norms]
            reference = [min(r, c) for r, c in zip(reference, clipped)]
        else:
            thresholds = [ratio * r for r in reference]
            clipped = [n * t / (n + 1e-6) if n > t else n for n, t in zip(norms, thresholds)]
            seen = [min(n, t) for n, t in zip(norms, thresholds)]  # a clipped tensor enters at its threshold
            reference = [c if math.isinf(r) else beta * r + (1 - beta) * c for r, c in zip(reference, seen)]
        out.append(clipped)
    return out


@pytest.mark.unit
def test_adagc_clips_each_tensor_against_its_own_history():
    """Two tensors: the first spikes at 30 (9x), the second at 36 (12x), each clipped to 1.04 x its
    own EMA, the other kept at its own scale; warm-up clips the total; a non-finite step (step 20)
    changes no reference."""
    pairs = [(n, 0.5 + 0.05 * math.cos(i)) for i, n in enumerate(NORMS)]
    pairs[36] = (NORMS[36], 6.0)
    pairs[19] = (math.inf, 0.5)
    policy = AdaGC(max_norm=1.0, ratio=1.04, beta=0.99, warmup_steps=5)
    expected = adagc_reference(pairs, 1.0, 1.04, 0.99, 5)
    for step, (norms, want) in enumerate(zip(pairs, expected, strict=True)):
        params = [param_with_norm(n) for n in norms]
        result = policy(params)
        if want is None:
            assert not math.isfinite(result.norm.item())
            continue
        for p, n in zip(params, want):
            assert p.grad.tolist() == pytest.approx([n * d for d in DIRECTION], rel=1e-6, abs=1e-9), step
        assert result.clipped_norm.item() == pytest.approx(math.hypot(*want), rel=1e-6), step
    assert expected[30][0] < 1.2 and expected[36][1] < 1.0  # each spike clipped in its own tensor
    assert expected[30][1] > 0.4 and expected[36][0] > 0.9  # the other one kept near its own scale


@pytest.mark.unit
def test_agc_clips_each_unit_against_its_weight_norm():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    layer.weight.grad = torch.randn(3, 4) * torch.tensor([[0.001], [1.0], [0.02]])
    layer.bias.grad = torch.randn(3)
    w, gw, b, gb = (t.detach().clone().tolist() for t in (layer.weight, layer.weight.grad, layer.bias,
                                                           layer.bias.grad))
    clipping, eps = 0.05, 1e-3

    def clip_unit(weights, grads):
        wn = max(math.sqrt(sum(x * x for x in weights)), eps)
        gn = math.sqrt(sum(x * x for x in grads))
        limit = clipping * wn
        return [x * limit / max(gn, 1e-6) for x in grads] if gn > limit else list(grads)

    expected_w = [clip_unit(w[r], gw[r]) for r in range(3)]  # one unit per output row
    expected_b = clip_unit(b, gb)  # the bias is one unit
    policy = AGC(clipping=clipping, eps=eps)
    result = policy(list(layer.parameters()))
    assert layer.weight.grad.tolist() == [pytest.approx(row, rel=1e-6, abs=1e-9) for row in expected_w]
    assert layer.bias.grad.tolist() == pytest.approx(expected_b, rel=1e-6, abs=1e-9)
    assert expected_w[0] == pytest.approx(gw[0], rel=1e-6)  # the small row was left alone
    assert result.clipped.item()


@pytest.mark.unit
def test_agc_exclude_leaves_matching_parameters_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    policy = AGC(clipping=0.01, exclude=["1.*"])
    policy.bind(model)
    policy(list(model.parameters()))
    assert torch.all(model[1].weight.grad == 100.0) and torch.all(model[1].bias.grad == 100.0)
    assert torch.all(model[0].weight.grad < 1.0)


@pytest.mark.unit
def test_controller_decisions_on_a_scripted_sequence():
    c = Controller(patience=3, lr_factor=0.5, relax_after=4, percentile=50.0, warmup_steps=2)
    max_norm = 1.0
    script = [3.0, 3.0,          # warm-up: no rule counts these
              0.95, 0.95, 0.95,  # 3 in a row above 0.9: lower the lr at step 5
              0.95, 2.0, 0.95,   # 3 more in a row: lower again at step 8
              0.2, 0.4, 0.6,     # quiet (no clip since step 8)...
              0.8]               # ...4th quiet step: relax to the median of the last 4 norms
    decisions = {}
    for step, norm in enumerate(script, 1):
        d = c.observe(step, norm, max_norm)
        if d:
            decisions[step] = d
            if d[0] == "max_norm":
                max_norm = d[1]
    assert decisions == {5: ("lr", 0.5), 8: ("lr", 0.5), 12: ("max_norm", pytest.approx(0.5))}
    assert c.lr_scale == 0.25
    assert c.observe(13, math.nan, max_norm) is None  # a skipped step changes nothing


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["zclip", "autoclip", "adagc"])
def test_injected_explosion_stays_finite_and_is_clipped_at_that_step(tmp_path, monkeypatch, policy):
    monkeypatch.setattr(tests.poison.ScaledLossLM, "SCALE", {40: 1e4})
    cfg = make_config(*TINY, "model._target_=tests.poison.ScaledLossLM", f"clip={policy}", "optim=sgd",
                      "optim.lr=0.5", "optim.momentum=0", "trainer.max_steps=60", "trainer.log_every=1",
                      "trainer.eval_every=60")
    summary = train(build(cfg), tmp_path, Display(60, quiet=True))
    scalars = {tag: dict(v) for tag, v in read_scalars(tmp_path).items()}
    assert scalars["train/grad_norm"][40] > 100 * scalars["train/grad_norm"][39]
    assert scalars["train/clip_fraction"][40] == 1.0
    assert scalars["train/grad_norm_clipped"][40] < 10 * scalars["train/grad_norm"][39]
    assert math.isfinite(summary["final eval loss"]) and summary["final eval loss"] < math.log(16)
