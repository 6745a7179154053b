"""`trainer report PATH...`: one row per run, read from its TensorBoard events."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

NAME = "report"
USAGE = """\
  report PATH... [--csv | --json] [--plot OUT.png]
                          one row per run found under PATH: final/best eval loss, norms, clip fraction...
  report --stability PATH... [--csv | --json]
                          one row per stability policy of a sweep (recipes/stability.yaml): runs diverged,
                          spikes, final/best eval loss, LR sensitivity, what skip-step/guard/controller did"""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trainer report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs, multirun dirs, or trees of them")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--csv", action="store_true", help="CSV on stdout")
    form.add_argument("--json", action="store_true", help="JSON on stdout")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="also draw the runs' curves into a PNG")
    parser.add_argument("--stability", action="store_true",
                        help="one row per policy (the overrides less optim.lr and trainer.seed), across LRs and seeds")
    args = parser.parse_args(argv)
    if args.stability:
        return _stability(args)
    from trainer.monitoring.report import COLUMNS, plot, print_table, report

    rows = report(args.paths)
    if args.plot:
        plot(args.paths, rows, args.plot)
    if args.json:
        print(_json(rows))
    elif args.csv:
        out = csv.DictWriter(sys.stdout, fieldnames=[*COLUMNS, "best", "note"])
        out.writeheader()
        out.writerows(rows)
    else:
        print_table(rows)
    if args.plot:
        print(f"plot: {args.plot}")


def _json(rows: list[dict[str, object]]) -> str:
    """JSON has no NaN: a value that is not a number is null."""
    return json.dumps([{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
                       for r in rows], indent=2, allow_nan=False)


def _stability(args: argparse.Namespace) -> None:
    from trainer.config import ConfigError
    from trainer.monitoring import stability
    from trainer.monitoring.report import NO_SCALARS

    if args.plot:
        raise ConfigError("--plot draws per-run curves: use it without --stability")
    outcomes, empty = stability.outcomes(args.paths)
    rows = stability.policies(outcomes)
    if args.json:
        print(_json(rows))
    elif args.csv:
        out = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(rows)
    else:
        stability.print_table(rows, stability.shared(outcomes))
    for name in empty:
        print(f"note: {name}: {NO_SCALARS}; left out", file=sys.stderr)
