"""The loop: reads device values only at log intervals, logs averages of the right steps."""

import math

import pytest
import torch

from trainer import loop, precision
from trainer.checkpointing import checkpoint
from tests.conftest import TINY, make_config, read_scalars
from tests.hostreads.sitecustomize import METHODS, counting
from trainer.build import build
from trainer.monitoring.display import Display
from trainer.loop import train
from trainer.monitoring.metrics import Meter
from trainer.precision import Precision


@pytest.mark.integration
@pytest.mark.parametrize("accelerator", [False, True], ids=["cpu", "accelerator-path"])
@pytest.mark.parametrize("extra", [[], ["guard.skip=true"], ["model._target_=tests.poison.NaNGradLM"],
                                   ["model.z_loss=1e-4"]], ids=["default", "skip-step", "nan-step", "z-loss"])
def test_host_reads_happen_only_at_log_intervals(tmp_path, monkeypatch, extra, accelerator):
    """Count every way trainer's code brings a tensor to the host; only log intervals and evals may,
    and on a CPU the non-finite flag (precision.step_if_finite: the device is the host there).

    accelerator-path: the step as on a GPU, the flag handed to fused AdamW (step_on_device); then
    not one read per step. Calls from the data pipeline (host-side index tensors in trainer/data and
    the DataLoader) are not device reads and are not counted. A step with NaN gradients (step 15,
    nan-step) costs one read more, at the log step after it, to name its tensors.
    """
    monkeypatch.setenv("NAN_GRADS", "15=out.bias")
    if accelerator:
        monkeypatch.setattr(precision, "step_if_finite", precision.step_on_device)
    steps, log_every = 40, 10
    cfg = make_config(*TINY, f"trainer.max_steps={steps}", f"trainer.log_every={log_every}",
                      f"trainer.eval_every={steps}", *extra)
    run = build(cfg)
    calls = []
    for name in METHODS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name), calls))
    train(run, tmp_path, Display(steps, quiet=True))
    monkeypatch.undo()
    flag = [c for c in calls if c.startswith("item precision.py:")]
    assert len(flag) == (steps if run.device.type == "cpu" and not accelerator else 0), flag
    # One read per log interval (meter) and one per eval; fp32 has no scaler to read.
    others = [c for c in calls if c not in flag]
    assert len(others) == steps // log_every + 1 + ("NaNGradLM" in str(extra)), others


@pytest.mark.integration
def test_logged_loss_is_the_interval_average(tmp_path):
    """train/loss at step 10 is the mean of the 10 step losses, recomputed here from the same batches."""
    cfg = make_config(*TINY, "trainer.max_steps=10", "trainer.log_every=10", "trainer.eval_every=10",
                      "optim=sgd", "optim.lr=1e-9", "optim.momentum=0", "sched=constant")
    run = build(cfg)
    # With lr ~ 0 the weights stay put, so the reference is the initial model on the same batches.
    reference = build(cfg)
    with torch.no_grad():
        expected = sum(reference.model(**b).item() for b, _ in zip(reference.train_batches, range(10))) / 10
    train(run, tmp_path, Display(10, quiet=True))
    (_, logged), = read_scalars(tmp_path)["train/loss"]
    assert abs(logged - expected) < 1e-5


@pytest.mark.integration
def test_a_models_extras_are_logged_as_the_interval_average(tmp_path):
    """A model returning {"loss", "mean_logit"} (tests/user_model.ExtrasLM), 2 micro-batches a step:
    train/mean_logit at step 5 is the mean of the 10 micro-batches' mean logits, recomputed here."""
    cfg = make_config(*TINY, "model._target_=tests.user_model.ExtrasLM", "trainer.max_steps=5", "trainer.grad_accum=2",
                      "trainer.log_every=5", "trainer.eval_every=5", "optim=sgd", "optim.lr=1e-9", "optim.momentum=0",
                      "sched=constant")
    run, reference = build(cfg), build(cfg)
    with torch.no_grad():  # with lr ~ 0 the weights stay put: the initial model on the same batches
        expected = sum(reference.model.out(reference.model.emb(b["input_ids"][:, :-1])).mean().item()
                       for b, _ in zip(reference.train_batches, range(10))) / 10
    train(run, tmp_path, Display(5, quiet=True))
    (_, logged), = read_scalars(tmp_path)["train/mean_logit"]
    assert logged == pytest.approx(expected, rel=1e-5)


@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_no_host_sync_outside_log_intervals_on_cuda(tmp_path, monkeypatch, amp):
    """torch.cuda.set_sync_debug_mode("error") raises on any synchronizing call: it stays on for the
    whole loop, except inside the interval read, the eval and the checkpoint write."""
    steps = 20
    cfg = make_config(*TINY, "trainer.device=cuda", f"amp={amp}", f"trainer.max_steps={steps}",
                      "trainer.log_every=10", f"trainer.eval_every={steps}", "data.pin_memory=true")
    run = build(cfg)

    def sync_allowed(fn):
        def wrapped(*args, **kwargs):
            torch.cuda.set_sync_debug_mode(0)
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        return wrapped

    monkeypatch.setattr(Meter, "read", sync_allowed(Meter.read))
    monkeypatch.setattr(Precision, "loss_scale", sync_allowed(Precision.loss_scale))
    monkeypatch.setattr(loop, "evaluate", sync_allowed(loop.evaluate))
    monkeypatch.setattr(checkpoint, "save", sync_allowed(checkpoint.save))
    torch.cuda.set_sync_debug_mode("error")
    try:
        summary = train(run, tmp_path, Display(steps, quiet=True))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert summary["steps"] == steps and math.isfinite(summary["final train loss"])


@pytest.mark.slow
def test_compiled_model_trains_to_the_eager_loss(tmp_path):
    """trainer.compile=true on the default GPT and text data, the model and the norm clip both
    compiled: the same logged losses and gradient norms as eager."""
    common = ["trainer.max_steps=20", "trainer.log_every=10", "trainer.eval_every=20", "trainer.eval_batches=2",
              "data.batch_size=4", "data.seq_len=64", "trainer.device=cpu"]
    losses = {}
    for compiled in (False, True):
        run = build(make_config(*common, f"trainer.compile={str(compiled).lower()}"))
        train(run, tmp_path / str(compiled), Display(20, quiet=True))
        scalars = read_scalars(tmp_path / str(compiled))
        losses[compiled] = [v for tag in ("train/loss", "eval/loss", "train/grad_norm", "train/grad_norm_clipped")
                            for _, v in scalars[tag]]
    assert hasattr(run.model, "_orig_mod") and hasattr(run.clip._clip, "_torchdynamo_orig_callable")  # really compiled
    assert len(losses[True]) == 7
    for eager, compiled in zip(losses[False], losses[True]):
        assert abs(eager - compiled) < 1e-3 * eager, losses


@pytest.mark.integration
def test_a_checkpoint_finds_every_log_step_before_it_in_the_event_file(tmp_path, monkeypatch):
    """Log steps reach TensorBoard's writer in hand-overs (monitoring/logger.py); before each
    checkpoint every one so far is in the event file, so a run killed after it and resumed from it
    (which drops the later steps) has every step once."""
    from trainer.checkpointing.checkpointer import Checkpointer

    steps = 30
    run = build(make_config(*TINY, f"trainer.max_steps={steps}", "trainer.log_every=2", "checkpoint.every=12",
                            f"trainer.eval_every={steps}"))
    found, save = {}, Checkpointer.save

    def saving(self, step):
        found[step] = [s for s, _ in read_scalars(tmp_path)["train/loss"]]
        return save(self, step)

    monkeypatch.setattr(Checkpointer, "save", saving)
    train(run, tmp_path, Display(steps, quiet=True))
    assert found == {at: list(range(2, at + 1, 2)) for at in (12, 24, 30)}
