"""`trainer inspect-grads`: the distribution of the gradient norm, and a clip.max_norm to use.

Either runs a short probe of the configured training (the real train step; the pre-clip norm is
read every step, which is fine for a diagnostic) or reads an existing run's events (--from).
The suggestion is the 95th percentile of the norms after the first tenth of the steps: warm-up
norms are atypical, and a threshold at p95 clips the rare spikes while leaving ~95% of steps alone.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from trainer.config import ConfigError
from trainer.controller import percentile

SUGGEST_PERCENTILE = 95.0
SKIP_FRACTION = 0.1  # the first tenth of the steps counts as warm-up


def probe(overrides: list[str], steps: int) -> tuple[list[float], dict[str, float]]:
    """Per-step pre-clip norms of `steps` real training steps, and per-module norms of the last one."""
    from trainer.build import build
    from trainer.config import compose_config
    from trainer.monitoring.layers import LayerProbe
    from trainer.step import to_device
    from trainer.step import train_step

    run = build(compose_config([*overrides, f"trainer.max_steps={steps}"]), overrides)
    layers = LayerProbe(run.model)
    norms = []
    run.model.train()
    for step in range(1, steps + 1):
        micro = [to_device(next(run.train_batches), run.device) for _ in range(run.cfg.trainer.grad_accum)]
        result = train_step(run.model, run.optimizer, micro, run.cfg.trainer.grad_accum, run.precision, run.clip,
                            run.params, layers if step == steps else None)
        norms.append(result.norm.item())
    per_layer = {k.removeprefix("layers/grad_norm/"): v for k, v in layers.read().items()
                 if k.startswith("layers/grad_norm/")}
    return norms, per_layer


def from_run(run_dir: Path) -> tuple[list[float], dict[str, float]]:
    """train/grad_norm (interval means) and the last layers/grad_norm/* values of an existing run."""
    from trainer.monitoring.report import read_scalars

    scalars = read_scalars(run_dir)
    if "train/grad_norm" not in scalars:
        raise ConfigError(f"--from {run_dir}: no train/grad_norm in its events")
    norms = [v for _, v in scalars["train/grad_norm"]]
    per_layer = {t.removeprefix("layers/grad_norm/"): values[-1][1]
                 for t, values in scalars.items() if t.startswith("layers/grad_norm/")}
    return norms, per_layer


def analyse(norms: list[float]) -> dict[str, object]:
    """Percentiles, trend and the suggested threshold of a norm sequence."""
    finite = [x for x in norms if math.isfinite(x)]
    if len(finite) < 2:
        raise ConfigError("inspect-grads: fewer than 2 finite gradient norms to look at; probe more steps (--steps)")
    settled = finite[int(len(finite) * SKIP_FRACTION):]
    half = len(finite) // 2
    return {
        "n": len(finite),
        "non-finite": len(norms) - len(finite),
        "percentiles": {q: percentile(finite, q) for q in (5, 25, 50, 75, 90, 95, 99)},
        "max": max(finite),
        "trend": (statistics.median(finite[:half]), statistics.median(finite[half:])),
        "suggested": percentile(settled, SUGGEST_PERCENTILE),
        "settled": len(settled),
    }


def histogram(values: list[float], bins: int = 12, width: int = 40) -> list[str]:
    """A text histogram on a log scale (gradient norms span orders of magnitude)."""
    logs = [math.log10(v) for v in values if v > 0 and math.isfinite(v)]
    lo, hi = min(logs), max(logs)
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for x in logs:
        counts[min(bins - 1, int((x - lo) / span * bins))] += 1
    top = max(counts)
    return [f"{10 ** (lo + span * i / bins):>10.4g} | {'#' * round(width * c / top):<{width}} {c}"
            for i, c in enumerate(counts)]
