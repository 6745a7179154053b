"""Every config group option composes, builds and trains, and each key lands where it should."""

import math
import re

import pytest
import torch

from tests.conftest import TINY, make_config
from trainer.build import build, param_groups
from trainer.config import ConfigError
from trainer.monitoring.display import Display
from trainer.loop import train
from trainer.schedule import cosine

OPTIONS = ["model=bert", "optim=sgd", "sched=constant", "sched=plateau", "amp=bf16", "amp=fp16", "clip=value",
           "clip=none", "clip.norm_type=inf", "trainer.grad_accum=2"]


@pytest.mark.integration
@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_trains(tmp_path, option):
    cfg = make_config(*TINY, option, "trainer.max_steps=4", "trainer.log_every=2", "trainer.eval_every=2",
                      "model.max_seq_len=16")
    summary = train(build(cfg), tmp_path, Display(4, quiet=True))
    assert math.isfinite(summary["final eval loss"]) and summary["skipped steps"] == 0


@pytest.mark.integration
def test_plateau_lowers_lr_when_eval_loss_stalls(tmp_path):
    # lr so small the eval loss cannot improve by the 10% threshold: after patience=0 evals, lr must drop by factor each eval.
    cfg = make_config(*TINY, "sched=plateau", "sched.patience=0", "sched.factor=0.5", "optim.lr=1e-4",
                      "trainer.max_steps=6", "trainer.eval_every=2", "sched.threshold=0.1")
    run = build(cfg)
    train(run, tmp_path, Display(6, quiet=True))
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.5 ** 2)


@pytest.mark.unit
def test_cosine_warms_up_then_decays_to_min_ratio():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = cosine(opt, max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.integration
def test_weight_decay_skips_biases_and_norms():
    run = build(make_config(*TINY))
    decay, no_decay = param_groups(run.model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(run.model.parameters()))


@pytest.mark.integration
def test_model_vocab_follows_the_data():
    run = build(make_config(*TINY))
    assert run.model.net.tok.num_embeddings == 16


@pytest.mark.unit
@pytest.mark.parametrize("override, message", [
    ("+foo=1", "foo: unknown top-level key (known: "),
    ("+trainr=1", "trainr: unknown top-level key (did you mean trainer?)"),
    ("+trainer.max_stepz=5", "trainer.max_stepz: unknown key in 'trainer' (did you mean trainer.max_steps?)"),
    ("+clip.z_thresh=2", "clip.z_thresh: unknown key in 'clip' (known: _target_, max_norm,"),
])
def test_keys_no_schema_has_are_refused_even_with_plus(override, message):
    from trainer.config import check_keys

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_keys(make_config(*TINY, override))
    check_keys(make_config("+recipes=gpt-text"))  # a recipe merges into known groups
    check_keys(make_config(*TINY))  # and so does +debug=tiny


@pytest.mark.unit
@pytest.mark.parametrize("asked", ["auto", "cuda"])
def test_a_rank_beyond_the_nodes_gpus_is_one_line(monkeypatch, asked):
    """Two processes on a one-GPU node: rank 1 has no cuda:1. Refused in one line, not a CUDA
    'invalid device ordinal' traceback; rank 0 gets its GPU."""
    from trainer.build import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device(asked, local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=rf"^trainer.device={asked}: local rank 1 has no GPU of its own \(this node "
                                          r"has 1\); start at most that many processes per node"):
        resolve_device(asked, local_rank=1)


@pytest.mark.integration
def test_a_user_model_without_z_loss_builds_while_it_is_zero_and_is_refused_otherwise(tmp_path):
    """tests/user_model.StrictLM takes exactly the keys the README listed before model.z_loss: it is
    built without z_loss (0 by default) and trains; model.z_loss=1e-4 for it is one line."""
    run = build(make_config(*TINY, "model._target_=tests.user_model.StrictLM", "trainer.max_steps=2"))
    assert type(run.model).__name__ == "StrictLM"
    assert train(run, tmp_path, Display(2, quiet=True))["steps"] == 2
    with pytest.raises(ConfigError, match=r"^model.z_loss=0.0001: model._target_=tests.user_model.StrictLM takes no "
                                          r"z_loss argument; compute a z-loss in the model, or set model.z_loss=0$"):
        build(make_config(*TINY, "model._target_=tests.user_model.StrictLM", "model.z_loss=1e-4"))
