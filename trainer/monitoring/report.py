"""`trainer report PATH...`: one row per run, read from its TensorBoard events with tensorboard's own reader.

A run is a directory holding an events file; PATH may be a run, a multirun sweep, or any tree of
them. The best run (lowest best eval loss) is marked.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer.config import ConfigError
from trainer.controller import percentile

COLUMNS = ["run", "overrides", "final eval loss", "best eval loss", "final train loss", "grad norm mean",
           "grad norm p95", "clip fraction", "skipped steps", "rollbacks", "final loss scale", "tokens/s"]


def _job_order(run: Path) -> list[object]:
    """Sort key: numbers by value, so that a sweep's job 10 comes after job 9, not after job 1."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(run))]


def find_runs(paths: list[Path]) -> list[Path]:
    """Directories under paths that hold an events file, in the order a sweep ran them (by job number)."""
    runs = set()
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
        candidates = [path] if path.is_file() else path.rglob("events.out.tfevents.*")
        runs.update(p.parent for p in candidates if p.name.startswith("events.out.tfevents."))
    if not runs:
        raise ConfigError(f"{' '.join(map(str, paths))}: no TensorBoard events files found")
    return sorted(runs, key=_job_order)


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run dir's events, by tag, as (step, value): TensorBoard's own reader, all
    events kept (no sampling). The one place trainer opens event files."""
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    # A rollback (guard.spike) logs steps again from the checkpoint's; the reader keeps the redone
    # ones, as wanted, and warns about "a TensorFlow restart" on stderr, which would only mislead.
    tb_log = logging.getLogger("tensorboard")
    level = tb_log.level
    tb_log.setLevel(logging.ERROR)
    try:
        acc.Reload()
    finally:
        tb_log.setLevel(level)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def run_name(run: Path, root: Path) -> str:
    """A run's name in the report: its path under root, else as given."""
    return str(run.relative_to(root)) if run != root and run.is_relative_to(root) else str(run)


def run_overrides(run: Path) -> str:
    """The run's command-line overrides, from the file Hydra writes beside it."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    lines = [line.removeprefix("- ").strip() for line in path.read_text().splitlines() if line.startswith("- ")]
    return " ".join(x for x in lines if not x.startswith("hydra."))


class NoScalars(ConfigError):
    """A run dir whose events hold no training scalars (yet)."""

    def __init__(self, run: Path):
        super().__init__(f"{run}: its events file holds no training scalars (corrupt, empty or not a trainer run)")


def root_of(paths: list[Path]) -> Path:
    """What run names are relative to: the one directory given, else the working directory."""
    return paths[0] if len(paths) == 1 and paths[0].is_dir() else Path.cwd()


def summarize(run: Path, root: Path) -> dict[str, object]:
    """The report row of one run directory."""
    scalars = read_scalars(run)
    if "train/loss" not in scalars:
        raise NoScalars(run)

    def values(tag: str) -> list[float]:
        return [v for _, v in scalars.get(tag, [])]

    def last(tag: str, default: float = math.nan) -> float:
        v = values(tag)
        return v[-1] if v else default

    evals = [x for x in values("eval/loss") if math.isfinite(x)]
    norms = [x for x in values("train/grad_norm") if math.isfinite(x)]
    speeds = values("perf/tokens_per_sec")
    fractions = values("train/clip_fraction")
    return {
        "run": run_name(run, root),
        "overrides": run_overrides(run),
        "final eval loss": last("eval/loss"),
        "best eval loss": min(evals) if evals else math.nan,
        "final train loss": last("train/loss"),
        "grad norm mean": statistics.fmean(norms) if norms else math.nan,
        "grad norm p95": percentile(norms, 95.0) if norms else math.nan,
        "clip fraction": last("hparams/clip_fraction", statistics.fmean(fractions) if fractions else math.nan),
        "skipped steps": int(last("train/skipped_steps", 0)),
        "rollbacks": int(last("train/rollbacks", 0)),
        "final loss scale": last("train/loss_scale"),
        "tokens/s": statistics.fmean(speeds) if speeds else math.nan,
    }


NO_SCALARS = "no training scalars yet (just started, or stopped before its first log step)"


def report(paths: list[Path]) -> list[dict[str, object]]:
    """Rows for every run under paths; the best one (lowest best eval loss) gets best=True.

    A run without training scalars gets a row of empty values and a note, unless no run has any:
    then the first such run's error is raised (one path that is not a run is an error).
    """
    root = root_of(paths)
    rows, empty = [], []
    for run in find_runs(paths):
        try:
            rows.append({**summarize(run, root), "note": ""})
        except NoScalars as e:
            empty.append(e)
            rows.append({**dict.fromkeys(COLUMNS), "run": run_name(run, root), "overrides": run_overrides(run), "note": NO_SCALARS})
    if len(empty) == len(rows):
        raise empty[0]
    scored = [r for r in rows if r["best eval loss"] is not None and math.isfinite(r["best eval loss"])]
    best = min(scored, key=lambda r: r["best eval loss"]) if scored else None
    for r in rows:
        r["best"] = r is best
    return rows


def labels(rows: list[dict[str, object]]) -> tuple[list[str], set[str]]:
    """Each run's name by the overrides that set it apart, and the overrides every run shares."""
    split = [str(r["overrides"]).split() for r in rows]
    shared = set(split[0]).intersection(*split[1:]) if split else set()
    names = [" ".join(x for x in items if x not in shared) or str(r["run"]) for r, items in zip(rows, split, strict=True)]
    return names, shared


PLOTS = [("eval/loss", "eval loss"), ("train/grad_norm", "grad norm before clipping"),
         ("train/grad_norm_clipped", "grad norm after clipping"), ("train/loss_scale", "loss scale")]


def plot(paths: list[Path], rows: list[dict[str, object]], out: Path,
         size: tuple[int, int] = (1200, 900)) -> dict[str, int]:
    """The curves that matter, one line per run, in a 2 x 2 figure saved as a PNG of `size` pixels.

    Returns how many lines each panel got.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib") from None
    dpi = 100
    fig, axes = plt.subplots(2, 2, figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    for run, label in zip(find_runs(paths), labels(rows)[0], strict=True):
        scalars = read_scalars(run)
        for ax, (tag, title) in zip(axes.flat, PLOTS, strict=True):
            ax.set_title(title)
            if tag in scalars:
                steps, values = zip(*scalars[tag])
                ax.plot(steps, values, label=label, marker="o", markersize=3)
    for ax in axes.flat:
        ax.set_xlabel("step")
    axes[0, 1].set_yscale("log")
    axes[1, 0].set_yscale("log")
    axes[1, 1].set_yscale("log", base=2)
    axes[0, 0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return {title: len(ax.lines) for ax, (_, title) in zip(axes.flat, PLOTS, strict=True)}


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


# Terminal headers: short, so that a row fits on a line.
SHORT = {"final eval loss": "final eval", "best eval loss": "best eval", "final train loss": "train loss",
         "grad norm mean": "norm mean", "grad norm p95": "norm p95", "clip fraction": "clip frac",
         "skipped steps": "skipped", "final loss scale": "scale", "tokens/s": "tok/s"}


def console():
    """rich's console; 200 columns wide when stdout is not a terminal, so that a row fits on a line."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=200)


def print_table(rows: list[dict[str, object]]) -> None:
    """A rich table; overrides that all runs share go in the title, the rest name each row."""
    from rich.table import Table

    names, shared = labels(rows)
    table = Table(title=f"trainer report: {len(rows)} runs" + (f", all with {' '.join(sorted(shared))}" if shared else "")
                  + "  (* lowest best eval loss)")
    table.add_column("run")
    for column in COLUMNS[2:]:
        table.add_column(SHORT.get(column, column), justify="right")
    for r, name in zip(rows, names, strict=True):
        table.add_row(("* " if r["best"] else "") + name, *[cell(r[c]) for c in COLUMNS[2:]])
    out = console()
    out.print(table)
    for r, name in zip(rows, names, strict=True):
        if r["note"]:
            out.print(f"note: {name}: {r['note']}")
