"""`trainer bench`: trainer's loop against a hand-written loop on the same model, data and device."""

from __future__ import annotations

import argparse
import sys

from trainer.config import ConfigError

NAME = "bench"
USAGE = """\
  bench [--steps N] [--repeats N] [--variant OVERRIDES] [overrides]
                          time trainer's loop against a hand-written loop (median, ratio)"""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trainer bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side (default 5)")
    parser.add_argument("--variant", action="append", default=[], metavar="OVERRIDES",
                        help="also time trainer with these extra overrides (repeatable), e.g. --variant clip=zclip")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for MFU (default: looked up for known GPUs)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for trainer train")
    args = parser.parse_args(argv)
    for flag, value in (("--steps", args.steps), ("--repeats", args.repeats)):
        if value < 1:
            raise ConfigError(f"{flag}={value}: must be >= 1")
    from trainer.bench import measure

    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    rows, notes = measure(args.overrides, args.steps, args.repeats, args.variant, peak)
    from rich.console import Console
    from rich.table import Table

    cfg = " ".join(args.overrides) or "(defaults)"
    console = Console(width=None if sys.stdout.isatty() else 160)  # a log file does not wrap
    table = Table(title=f"trainer bench: {cfg}, {args.steps} steps x {args.repeats} repeats")
    for column in rows[0]:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    for note in notes:
        console.print(note)
