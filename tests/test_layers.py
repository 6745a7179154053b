"""Per-layer diagnostics: one tag pair per module, on log steps only, and norms that add up to the total."""

import math

import pytest

from tests.conftest import TINY, make_config, read_scalars
from trainer.build import build
from trainer.monitoring.display import Display
from trainer.loop import train

pytestmark = pytest.mark.integration


def layer_scalars(tmp_path, *overrides):
    cfg = make_config(*TINY, "log.per_layer=true", "clip=none", *overrides)
    run = build(cfg)
    train(run, tmp_path, Display(cfg.trainer.max_steps, quiet=True))
    return run, {tag: dict(v) for tag, v in read_scalars(tmp_path).items()}


def test_one_grad_norm_and_update_ratio_per_module_on_log_steps(tmp_path):
    run, scalars = layer_scalars(tmp_path, "trainer.max_steps=4", "trainer.log_every=2")
    modules = {name.rpartition(".")[0] for name, _ in run.model.named_parameters()}
    for kind in ("grad_norm", "update_ratio"):
        tags = {t for t in scalars if t.startswith(f"layers/{kind}/")}
        assert tags == {f"layers/{kind}/{m}" for m in modules}
        for tag in tags:
            assert set(scalars[tag]) == {2, 4}  # measured on log steps only
            assert all(v > 0 for v in scalars[tag].values())


def test_layer_norms_square_sum_to_the_total(tmp_path):
    _, scalars = layer_scalars(tmp_path, "trainer.max_steps=3", "trainer.log_every=1")
    for step in (1, 2, 3):
        layers = [v[step] for t, v in scalars.items() if t.startswith("layers/grad_norm/")]
        assert math.sqrt(sum(x * x for x in layers)) == pytest.approx(scalars["train/grad_norm"][step], rel=1e-5)
