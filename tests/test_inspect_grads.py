"""`trainer inspect-grads` against a model whose gradient-norm distribution is known in closed form."""

import re

import pytest

from tests.conftest import TINY, run_cli
from tests.poison import HalfNormalGradLM
from trainer.monitoring.inspect_grads import analyse

ANALYTIC_P95 = HalfNormalGradLM.SIGMA * 1.959964  # half-normal p95 = sigma * Phi^-1(0.975)


@pytest.mark.slow
def test_suggests_the_analytic_percentile_of_a_known_distribution():
    out = run_cli("inspect-grads", "--steps", "400", *TINY, "model._target_=tests.poison.HalfNormalGradLM",
                  "optim=sgd", "optim.lr=1e-6", "optim.momentum=0", "clip=none")
    assert out.returncode == 0, out.stderr
    suggested = float(re.search(r"suggested clip.max_norm=([\d.e+-]+)", out.stdout)[1])
    assert suggested == pytest.approx(ANALYTIC_P95, rel=0.10)
    assert f"clip.max_norm={suggested:.3g}" in out.stdout.splitlines()[-1]  # the command to use it
    assert "histogram" in out.stdout and "largest per-module gradient norms" in out.stdout


@pytest.mark.unit
def test_analyse_skips_warmup_and_non_finite_norms():
    norms = [100.0] * 10 + [float(i) for i in range(1, 91)] + [float("nan")]
    a = analyse(norms)
    assert a["non-finite"] == 1 and a["settled"] == 90
    assert a["suggested"] == pytest.approx(1 + 0.95 * 89)  # p95 of 1..90, the warm-up 100s left out
    assert a["trend"] == (25.5, 65.5)  # medians of the first and second halves
