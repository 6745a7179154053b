"""Naming the parameter tensors of a skipped step whose gradients were not finite."""

import math

import pytest
import torch
from torch.nn.utils import get_total_norm

from tests.conftest import TINY, make_config, run_cli
from trainer.build import build
from trainer.clipping import TensorNorms, measure
from trainer.loop import train
from trainer.monitoring.display import Display
from trainer.monitoring.nonfinite import describe, nonfinite_positions

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
    norms = torch.ones(len(run.params))
    norms[bad] = torch.tensor([math.inf, math.nan] * 3 + [-math.inf])
    line = describe(run.model, run.params, 21, [(3, TensorNorms(norms, None)), (5, TensorNorms(norms, None))])
    assert line == (f"step 24: gradients not finite in 7 of {len(names)} parameter tensors (first 5): "
                    f"{', '.join(names[i] for i in bad[:5])}; update skipped; 1 more skipped steps in this interval")
    unmeasured = describe(run.model, run.params, 1, [(0, None)])
    assert unmeasured.startswith("step 1: gradients not finite, update skipped (the clip policy measured no")


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
