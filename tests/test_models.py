"""Built-in models' objectives, and a user model plugged in by _target_."""

import math

import pytest
import torch

from tests.conftest import TINY, make_config, read_scalars
from trainer.build import build
from trainer.data.tokens import FIRST_REGULAR_ID, MASK_ID
from trainer.monitoring.display import Display
from trainer.loop import train
from trainer.models import GPT, Bert

SHAPE = dict(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, dropout=0.0, max_seq_len=32,
             vocab_size=50)


@pytest.mark.unit
def test_gpt_is_causal():
    torch.manual_seed(0)
    net = GPT(**SHAPE).net
    ids = torch.randint(FIRST_REGULAR_ID, 50, (2, 10))
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1 - FIRST_REGULAR_ID) % (50 - FIRST_REGULAR_ID) + FIRST_REGULAR_ID
    a, b = net(ids), net(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.unit
def test_gpt_loss_at_init_is_near_uniform():
    torch.manual_seed(0)
    loss = GPT(**SHAPE)(torch.randint(FIRST_REGULAR_ID, 50, (8, 16)))
    assert abs(loss.item() - math.log(50)) < 0.3


@pytest.mark.unit
def test_gpt_z_loss_is_the_weighted_mean_square_log_normaliser_in_training_only():
    """z_loss=0.01: the loss is cross-entropy + 0.01 x mean(log(sum(exp(logits)))^2), computed here
    in float64 from the network's logits; evaluation, and z_loss=0, return the cross-entropy alone."""
    torch.manual_seed(0)
    model = GPT(**SHAPE, z_loss=0.01)
    ids = torch.randint(FIRST_REGULAR_ID, 50, (4, 12))
    logits = model.net(ids[:, :-1]).double()
    log_z = logits.exp().sum(-1).log()
    ce = (log_z - logits.gather(-1, ids[:, 1:, None]).squeeze(-1)).mean()
    z = 0.01 * log_z.square().mean()
    out = model(ids)
    assert out.keys() == {"loss", "z_loss"} and not out["z_loss"].requires_grad
    torch.testing.assert_close(out["z_loss"].double(), z, rtol=1e-5, atol=0)
    torch.testing.assert_close(out["loss"].double(), ce + z, rtol=1e-5, atol=0)
    model.eval()
    torch.testing.assert_close(model(ids).double(), ce, rtol=1e-5, atol=0)
    model.train()
    model.z_loss = 0.0
    torch.testing.assert_close(model(ids).double(), ce, rtol=1e-5, atol=0)


@pytest.mark.unit
def test_bert_masks_fifteen_percent_eighty_ten_ten():
    torch.manual_seed(0)
    model = Bert(**SHAPE, mask_prob=0.15, mask_token_id=MASK_ID)
    ids = torch.randint(FIRST_REGULAR_ID, 50, (64, 512))
    inputs, labels = model.mask(ids)
    chosen = labels != -100
    assert torch.equal(labels[chosen], ids[chosen])
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    as_mask = (inputs[chosen] == MASK_ID).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02
    assert abs(kept - (0.1 + 0.1 / 50)) < 0.02  # random draws (over the vocabulary) can equal the original
    assert torch.equal(inputs[~chosen], ids[~chosen])
    # Padding and special tokens are never chosen.
    pad = torch.zeros_like(ids)
    pad[:, :256] = 1
    special = torch.zeros_like(ids)
    special[:, 0] = 1
    _, labels = model.mask(ids, attention_mask=pad, special_tokens_mask=special)
    assert (labels[:, 256:] == -100).all() and (labels[:, 0] == -100).all()
    assert abs((labels[:, 1:256] != -100).float().mean().item() - 0.15) < 0.01
    # Eval masking is the same every call, so eval losses are comparable.
    model.eval()
    assert torch.equal(model.mask(ids)[0], model.mask(ids)[0])


@pytest.mark.integration
def test_user_model_by_target_trains(tmp_path):
    cfg = make_config(*TINY, "model._target_=tests.user_model.BigramLM", "trainer.max_steps=60",
                      "trainer.log_every=10", "trainer.eval_every=60", "optim.lr=0.01")
    run = build(cfg)
    assert type(run.model).__name__ == "BigramLM"
    summary = train(run, tmp_path, Display(60, quiet=True))
    losses = [v for _, v in read_scalars(tmp_path)["train/loss"]]
    assert losses[-1] < losses[0] - 1.0
    assert summary["final eval loss"] < math.log(16) - 1.0
