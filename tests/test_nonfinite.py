"""Naming the parameter tensors of a skipped step whose gradients were not finite."""

import math

import pytest
import torch
from torch.nn.utils import get_total_norm

from tests.conftest import TINY, make_config, run_cli
from trainer.build import build
from trainer.clipping import NormClip, TensorNorms, measure
from trainer.loop import train
from trainer.monitoring.display import Display
from trainer.monitoring.metrics import Meter
from trainer.monitoring.nonfinite import NOT_KEPT, NOT_MEASURED, describe, nonfinite_positions
from trainer.step import StepResult, not_finite

POLICIES = ["none", "norm", "value", "zclip", "autoclip", "agc", "adagc"]


def _model_with_grads():
    torch.manual_seed(0)
    run = build(make_config(*TINY))
    run.model(**next(run.train_batches)).backward()
    return run


@pytest.mark.unit
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_measure_is_get_total_norm_and_keeps_each_tensors_norm(norm_type):
    """The total is torch's get_total_norm to the bit; each norm is the tensor's own vector_norm."""
    run = _model_with_grads()
    total, tensors = measure(run.params, norm_type)
    grads = [p.grad for p in run.params]
    assert torch.equal(total, get_total_norm(grads, norm_type, foreach=True))
    assert torch.equal(tensors.norms, torch.stack([torch.linalg.vector_norm(g, norm_type) for g in grads]))
    assert tensors.present is None


@pytest.mark.unit
def test_parameters_without_a_gradient_are_skipped_and_their_positions_kept():
    run = _model_with_grads()
    for i in (0, 3):
        run.params[i].grad = None
    total, tensors = measure(run.params)
    kept = [i for i in range(len(run.params)) if i not in (0, 3)]
    assert tensors.present == tuple(kept)
    assert torch.equal(tensors.norms, torch.stack([run.params[i].grad.norm() for i in kept]))
    # A NaN in params[5]'s gradient, the fourth gradient measured: named by its position in params.
    run.params[5].grad[0] = math.nan
    assert nonfinite_positions(measure(run.params)[1]) == [5]


@pytest.mark.unit
def test_describe_names_the_first_five_in_parameter_order_with_the_count():
    run = _model_with_grads()
    names = [name for name, p in run.model.named_parameters() if p.requires_grad]
    bad = [1, 2, 4, 6, 7, 9, 10]
    line = describe(run.model, run.params, 24, bad, 2)
    assert line == (f"step 24: gradients not finite in 7 of {len(names)} parameter tensors (first 5): "
                    f"{', '.join(names[i] for i in bad[:5])}; update skipped; 1 more skipped steps in this interval")
    assert describe(run.model, run.params, 1, NOT_MEASURED, 1) == (
        "step 1: gradients not finite, update skipped (which tensors: the clip policy returned no per-tensor norms)")


@pytest.mark.unit
def test_the_meter_finds_the_first_skipped_step_and_keeps_it_across_a_checkpoint():
    """Steps 2 and 3 of 4 skipped, step 2 with NaN in tensors 1 and 4 of 6: (index 1, [1, 4], 2
    skipped), read whole or from a checkpoint taken after step 2, whose gradients are gone by then;
    a checkpoint from before this was kept says so."""
    norms = torch.ones(6)
    norms[[1, 4]] = math.nan
    steps = [StepResult(torch.tensor(1.0), torch.tensor(n), None, None, not_finite(torch.tensor(n)),
                        tensors=TensorNorms(norms if i == 1 else torch.ones(6), None))
             for i, n in enumerate([1.0, math.nan, math.inf, 1.0])]
    clip = NormClip(1.0)
    whole = Meter(torch.device("cpu"), 4, clip.clipped_stats)
    for r in steps:
        whole.add(r, 1, 1)
    assert whole.read()[1]["nonfinite"] == (1, [1, 4], 2)
    first = Meter(torch.device("cpu"), 4, clip.clipped_stats)
    for r in steps[:2]:
        first.add(r, 1, 1)
    saved = first.state_dict()
    for state, expected in ((saved, (1, [1, 4], 2)), ({**saved, "nonfinite": None}, (1, NOT_KEPT, 2))):
        resumed = Meter(torch.device("cpu"), 4, clip.clipped_stats)
        resumed.load_state_dict(state)
        for r in steps[2:]:
            resumed.add(r, 1, 1)
        assert resumed.read()[1]["nonfinite"] == expected


POISONED = {"NAN_GRADS": "7=out.bias;23=emb.weight,out.bias"}
NAMED = ["step 7: gradients not finite in 1 of 3 parameter tensors: out.bias; update skipped",
         "step 23: gradients not finite in 2 of 3 parameter tensors: emb.weight, out.bias; update skipped"]
RUN = [*TINY, "model._target_=tests.poison.NaNGradLM", "trainer.max_steps=30", "trainer.log_every=10",
       "trainer.eval_every=30"]


@pytest.mark.integration
@pytest.mark.parametrize("clip", POLICIES)
def test_the_log_step_after_a_nan_gradient_names_its_tensors(tmp_path, monkeypatch, caplog, clip):
    """Steps 7 (out.bias) and 23 (emb.weight and out.bias) have NaN gradients, made so by the model;
    the log step after each names those tensors, whatever the clip policy; the interval between,
    with none, has no line."""
    monkeypatch.setenv("NAN_GRADS", POISONED["NAN_GRADS"])
    caplog.set_level("INFO", logger="trainer")
    summary = train(build(make_config(*RUN, f"clip={clip}")), tmp_path, Display(30, quiet=True))
    assert summary["skipped steps"] == 2
    assert [r.getMessage() for r in caplog.records if "not finite" in r.getMessage()] == NAMED


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["single", "fsdp"])
def test_the_cli_prints_the_names_and_writes_them_to_train_log(tmp_path, strategy):
    """As `trainer train` runs it: on the terminal and in train.log. Under FSDP2 (two gloo ranks)
    each rank holds shards of each gradient, whose norms are reduced before they are judged."""
    extra = ["data.batch_size=4", "trainer.nproc_per_node=2", "strategy=fsdp"] if strategy == "fsdp" else []
    done = run_cli("train", *RUN, "trainer.device=cpu", *extra, f"hydra.run.dir={tmp_path}", env=POISONED)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line for line in done.stdout.splitlines() if "not finite" in line] == NAMED
    log = (tmp_path / "train.log").read_text()
    assert all(line in log for line in NAMED)


@pytest.mark.integration
def test_a_run_preempted_between_the_nan_step_and_its_log_step_names_it_after_the_resume(
        tmp_path, monkeypatch, caplog):
    """SIGTERM during step 9, after the NaN step 7 and before the log step 10: the checkpoint keeps
    step 7's tensors (its gradients are gone by then), and the resumed run's log step names them
    as the uninterrupted run does."""
    from tests.conftest import sigterm_during_step
    from trainer.preemption import Preempted

    monkeypatch.setenv("NAN_GRADS", "7=out.bias")
    run_cfg = [*RUN[:-3], "trainer.max_steps=10", "trainer.log_every=10", "trainer.eval_every=10"]
    caplog.set_level("INFO", logger="trainer")
    sigterm_during_step(monkeypatch, 9)
    with pytest.raises(Preempted, match="after step 9"):
        train(build(make_config(*run_cfg)), tmp_path, Display(10, quiet=True))
    monkeypatch.undo()
    monkeypatch.setenv("NAN_GRADS", "")  # the resumed model counts its calls from 1 again
    assert not [r for r in caplog.records if "not finite" in r.getMessage()]
    train(build(make_config(*run_cfg, "checkpoint.resume=auto")), tmp_path, Display(10, quiet=True))
    assert [r.getMessage() for r in caplog.records if "not finite" in r.getMessage()] == NAMED[:1]
