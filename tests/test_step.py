"""The train step against references computed by hand, outside trainer.step."""

import copy
import math

import pytest
import torch
from torch import nn

from trainer import precision as P
from trainer.clipping import NormClip
from trainer.monitoring.metrics import Meter
from trainer.models import GPT
from trainer.step import not_finite, train_step

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, dropout=0.0,
               max_seq_len=16, vocab_size=20)


def batch(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 20, (n, 12), generator=gen)


def grads_of(model):
    return [p.grad.clone() for p in model.parameters()]


def test_grad_accumulation_equals_one_large_batch():
    """k micro-batches of b == one batch of k*b: same pre-clip norm, same clipped update."""
    k, b, lr, max_norm = 4, 3, 0.1, 0.05
    ids = batch(k * b)

    # Reference: one full batch, torch autograd, clipping and SGD done by hand.
    ref = tiny_gpt()
    ref(ids).backward()
    grads = grads_of(ref)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    coef = min(1.0, max_norm / (norm.item() + 1e-6))
    expected = [p.detach() - lr * coef * g for p, g in zip(ref.parameters(), grads)]
    assert coef < 1.0  # the test must exercise clipping

    model = tiny_gpt()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    params = list(model.parameters())
    micro = [{"input_ids": ids[i * b:(i + 1) * b]} for i in range(k)]
    result = train_step(model, opt, micro, k, P.fp32(CPU), NormClip(max_norm), params)

    assert result.norm.item() == pytest.approx(norm.item(), rel=1e-5)
    assert result.loss.item() == pytest.approx(ref(ids).item(), rel=1e-5)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-7)


def test_fp16_norm_is_logged_in_unscaled_units():
    """With a GradScaler at 2**16 the first-step pre-clip norm equals the unscaled one."""
    ids = {"input_ids": batch(4)}
    norms = {}
    for name, prec in {
        "fp32": P.fp32(CPU),
        "fp16_no_scaler": P.Precision("fp16", "cpu", torch.float16),
        "fp16_scaler": P.fp16(CPU, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000),
    }.items():
        model = tiny_gpt()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        r = train_step(model, opt, [ids], 1, prec, NormClip(1e9), list(model.parameters()))
        norms[name] = r.norm.item()
    # Scaling by a power of two is exact in fp16, so with and without the scaler agree closely;
    # fp16 autocast against fp32 differs by fp16 rounding only.
    assert norms["fp16_scaler"] == pytest.approx(norms["fp16_no_scaler"], rel=1e-3)
    assert norms["fp16_scaler"] == pytest.approx(norms["fp32"], rel=2e-2)
    assert norms["fp16_scaler"] < 1e3  # a scaled norm would be ~65536x larger


class Poisonable(nn.Module):
    """y = w . x; a batch with poison=1 makes the gradient inf (or NaN)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 8))

    def forward(self, x, poison):
        loss = (self.w * x).sum(dim=-1).pow(2).mean()
        return loss * torch.where(poison.any(), torch.tensor(float("inf")), torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_not_finite_is_one_for_inf_and_nan_only(dtype):
    """Against math.isfinite, for the values a norm can take, in float32 as fused optimizers need."""
    values = [0.0, 1e-30, 3.5, 6e4, float("inf"), float("nan")]
    flags = [not_finite(torch.tensor(v, dtype=dtype)) for v in values]
    assert all(f.dtype == torch.float32 and f.dim() == 0 for f in flags)
    assert [f.item() for f in flags] == [0.0 if math.isfinite(float(torch.tensor(v, dtype=dtype))) else 1.0
                                         for v in values]


def snapshot(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize("amp", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("fused, on_device", [(True, False), (True, True), (False, False)],
                         ids=["fused", "fused-on-device", "unfused"])
def test_non_finite_step_leaves_weights_and_optimizer_untouched(amp, fused, on_device, monkeypatch):
    """On a CPU the flag is read on the host; fused-on-device takes an accelerator's path on the CPU
    (the flag handed to fused AdamW as found_inf), which CI has no GPU to take otherwise."""
    if on_device:
        monkeypatch.setattr(P, "step_if_finite", P.step_on_device)
    model = Poisonable()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused, foreach=None if fused else False)
    prec = {"fp32": P.fp32, "bf16": P.bf16}.get(amp) or (
        lambda d: P.fp16(d, init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000))
    prec = prec(CPU)
    clip, params, meter = NormClip(1.0), list(model.parameters()), Meter(CPU, capacity=4, clip_stats=NormClip(1.0).clipped_stats)
    x = torch.randn(4, 8)
    good = {"x": x, "poison": torch.zeros(4)}
    bad = {"x": x, "poison": torch.ones(4)}

    meter.add(train_step(model, opt, [good], 1, prec, clip, params), 4, 4)
    weights, state = snapshot(model, opt)
    scale = prec.loss_scale()

    r = train_step(model, opt, [bad], 1, prec, clip, params)
    meter.add(r, 4, 4)

    assert r.skipped.item() == 1.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k])
    after = opt.state_dict()["state"][0]
    for k, v in state["state"][0].items():
        assert torch.equal(torch.as_tensor(after[k]), torch.as_tensor(v)), k
    assert meter.read()[0]["train/skipped_steps"] == 1.0
    if amp == "fp16":
        assert prec.loss_scale() == scale * 0.5  # the scaler backed off
    # And a good step afterwards does update.
    assert train_step(model, opt, [good], 1, prec, clip, params).skipped.item() == 0.0
    assert not torch.equal(model.w.detach(), weights["w"])


class StepRecorder:
    """An optimizer as step_if_finite sees one: records each step() and the flag it held then."""

    _step_supports_amp_scaling = True

    def __init__(self):
        self.steps = []

    def step(self):
        self.steps.append(getattr(self, "found_inf", None))


@pytest.mark.parametrize("flag", [0.0, 1.0])
def test_the_flag_is_read_on_a_cpu_and_handed_to_the_optimizer_elsewhere(flag):
    """A CPU flag is read on the host: a step for 0, none for 1, no found_inf handed over. A flag on
    any other device (meta here: reading it would raise) goes to the optimizer unread, as found_inf,
    and is taken off it again afterwards."""
    cpu = StepRecorder()
    P.step_if_finite(cpu, torch.tensor(flag))
    assert cpu.steps == ([None] if flag == 0.0 else [])
    elsewhere, found_inf = StepRecorder(), torch.tensor(flag, device="meta")
    P.step_if_finite(elsewhere, found_inf)
    assert len(elsewhere.steps) == 1 and elsewhere.steps[0] is found_inf
    assert not hasattr(elsewhere, "found_inf") and not hasattr(elsewhere, "grad_scale")


def test_half_precision_on_a_cpu_without_it_is_said_once_with_a_measured_factor():
    """Here, where oneDNN says; tests/test_cli.py holds oneDNN to AVX2 to see the emulated case."""
    from trainer.precision import bf16, cpu_note, emulation_factor, fp16, fp32

    cpu = torch.device("cpu")
    assert emulation_factor(fp32(cpu), cpu) is None
    for policy, native in ((bf16(cpu), torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                           (fp16(cpu, 1024.0, 2.0, 0.5, 100), torch.ops.mkldnn._is_mkldnn_fp16_supported())):
        factor = emulation_factor(policy, cpu)
        assert (factor is None) == native, factor
        if factor:
            note = cpu_note(policy, factor)
            assert factor >= 1 and f"amp={policy.name}" in note and "amp=fp32" in note
