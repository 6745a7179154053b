"""`trainer report --stability PATH...`: a sweep's runs grouped by stability policy, one row each.

A policy is what a run's overrides set apart from the other runs', less the learning rate and the
seed (`optim.lr=`, `trainer.seed=`): all the learning rates and seeds of `clip=zclip guard.skip=true`
make one row. Each run is judged from its own TensorBoard events and its config.yaml:

- diverged: a logged training or eval loss was not finite, the run stopped before trainer.max_steps,
  or its final eval loss is above its initial loss: log(model.vocab_size) where the config has one
  (a language model's loss when it guesses uniformly, where a fresh one starts), else the first
  logged training loss (an average over the first interval, which an early blow-up inflates);
- spikes: the steps that train/spike_score counted (its share times the interval's steps);
- final eval loss: a diverged run counts as its initial loss, as Wortsman et al. (2023) cap a
  diverged run's loss, so that one NaN does not hide the other runs;
- LR sensitivity: for each seed, the spread (max - min) of the final eval loss across learning
  rates, averaged over seeds: how much choosing the LR matters under this policy (Wortsman et al.
  take the mean excess over the best LR; the spread is the same idea, simpler to read);
- what the helpers did: non-finite steps skipped, spikes skipped (guard.skip), rollbacks
  (guard.spike), LR cuts and threshold moves (clip.controller).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from trainer.config import ConfigError
from trainer.monitoring.report import (NoScalars, cell, console, find_runs, read_scalars, root_of, run_name,
                                      run_overrides)

SWEPT = ("optim.lr=", "trainer.seed=")  # the keys a policy's row spans


@dataclass
class Outcome:
    """What one run of a stability sweep did."""

    run: str
    policy: str  # its overrides less SWEPT (and less those every run shares: see policies())
    lr: float
    seed: int
    diverged: bool
    final_eval: float  # the initial loss if diverged
    best_eval: float
    steps: int
    spikes: int
    skipped: int
    skipped_spikes: int
    rollbacks: int
    lr_cuts: int
    threshold_moves: int


def outcome(run: Path, root: Path) -> Outcome:
    """The outcome of one run directory, from its events and its config.yaml."""
    scalars = read_scalars(run)
    losses = [v for _, v in scalars.get("train/loss", [])]
    if not losses:
        raise NoScalars(run)
    config = run / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{config}: missing; --stability reads each run's learning rate, seed and max_steps from it")
    cfg = OmegaConf.load(config)
    evals = [v for _, v in scalars.get("eval/loss", [])]
    last_step = scalars["train/loss"][-1][0]
    vocab = OmegaConf.select(cfg, "model.vocab_size")
    initial = math.log(vocab) if isinstance(vocab, int) and vocab > 1 else losses[0]
    final = evals[-1] if evals else math.nan
    diverged = (not all(math.isfinite(x) for x in losses + evals) or last_step < cfg.trainer.max_steps
                or not final <= initial)

    def last(tag: str) -> int:
        values = scalars.get(tag, [])
        return int(values[-1][1]) if values else 0

    def changes(tag: str, down_only: bool = False) -> int:
        values = [v for _, v in scalars.get(tag, [])]
        return sum(b < a if down_only else b != a for a, b in zip(values, values[1:]))

    spikes, prev = 0, 0
    for step, share in scalars.get("train/spike_score", []):
        spikes, prev = spikes + round(share * (step - prev)), step
    finite_evals = [x for x in evals if math.isfinite(x)]
    return Outcome(
        run=run_name(run, root), policy=" ".join(x for x in run_overrides(run).split() if not x.startswith(SWEPT)),
        lr=float(cfg.optim.lr), seed=int(cfg.trainer.seed), diverged=diverged,
        final_eval=initial if diverged else final, best_eval=min(finite_evals) if finite_evals else math.nan,
        steps=last_step, spikes=spikes, skipped=last("train/skipped_steps"),
        skipped_spikes=last("train/skipped_spikes"), rollbacks=last("train/rollbacks"),
        lr_cuts=changes("clip/lr_scale", down_only=True), threshold_moves=changes("clip/max_norm"))


COLUMNS = ["policy", "runs", "diverged", "spikes", "spike score", "final eval loss", "best eval loss",
           "LR sensitivity", "skipped", "skipped spikes", "rollbacks", "LR cuts", "threshold moves"]


def sensitivity(runs: list[Outcome]) -> float:
    """Per seed, max - min of the (capped) final eval loss across learning rates; the mean over
    seeds. NaN when no seed has runs at two learning rates."""
    spreads = []
    for seed in sorted({r.seed for r in runs}):
        by_lr: dict[float, list[float]] = {}
        for r in runs:
            if r.seed == seed:
                by_lr.setdefault(r.lr, []).append(r.final_eval)
        if len(by_lr) > 1:
            finals = [statistics.fmean(v) for v in by_lr.values()]
            spreads.append(max(finals) - min(finals))
    return statistics.fmean(spreads) if spreads else math.nan


def shared(outcomes: list[Outcome]) -> list[str]:
    """The policy overrides every run has (a recipe's, say): left out of the row names."""
    return sorted(set.intersection(*(set(o.policy.split()) for o in outcomes))) if outcomes else []


def policies(outcomes: list[Outcome]) -> list[dict[str, object]]:
    """One row per policy, in the order policies first appear."""
    common = set(shared(outcomes))
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(" ".join(x for x in o.policy.split() if x not in common) or "(as configured)", []).append(o)
    rows = []
    for name, runs in groups.items():
        steps = sum(r.steps for r in runs)
        rows.append({
            "policy": name,
            "runs": len(runs),
            "diverged": sum(r.diverged for r in runs),
            "spikes": sum(r.spikes for r in runs),
            "spike score": sum(r.spikes for r in runs) / steps if steps else math.nan,
            "final eval loss": statistics.fmean(r.final_eval for r in runs),
            "best eval loss": min((r.best_eval for r in runs if math.isfinite(r.best_eval)), default=math.nan),
            "LR sensitivity": sensitivity(runs),
            "skipped": sum(r.skipped for r in runs),
            "skipped spikes": sum(r.skipped_spikes for r in runs),
            "rollbacks": sum(r.rollbacks for r in runs),
            "LR cuts": sum(r.lr_cuts for r in runs),
            "threshold moves": sum(r.threshold_moves for r in runs),
            "learning rates": sorted({r.lr for r in runs}),
            "seeds": sorted({r.seed for r in runs}),
        })
    return rows


def outcomes(paths: list[Path]) -> tuple[list[Outcome], list[str]]:
    """Every run's outcome under paths, in the order the sweep ran them, and the runs left out as
    they have no training scalars yet (a sweep still running); if none has any, the first's error."""
    root = root_of(paths)
    found, empty = [], []
    for run in find_runs(paths):
        try:
            found.append(outcome(run, root))
        except NoScalars as e:
            empty.append((run_name(run, root), e))
    if empty and not found:
        raise empty[0][1]
    return found, [name for name, _ in empty]


def print_table(rows: list[dict[str, object]], common: list[str]) -> None:
    from rich.table import Table

    lrs = sorted({lr for r in rows for lr in r["learning rates"]})
    seeds = sorted({s for r in rows for s in r["seeds"]})
    table = Table(title=f"trainer report --stability: {sum(r['runs'] for r in rows)} runs, "
                        f"LR {', '.join(f'{x:g}' for x in lrs)} x seeds {', '.join(map(str, seeds))}"
                        + (f", all with {' '.join(common)}" if common else ""))
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "policy" else "right")
    for r in rows:
        table.add_row(*[cell(r[c]) for c in COLUMNS])
    console().print(table)
