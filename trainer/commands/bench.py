"""`trainer bench`: trainer's loop against a hand-written loop on the same model, data and device."""

from __future__ import annotations

import argparse
import sys

from trainer.config import ConfigError

NAME = "bench"
# Settings where a loop's own per-step cost is not hidden by the model's compute (issue #18's):
# +debug=tiny is a 1-layer x 32 GPT on synthetic sequences of 16 tokens.
PRESETS = {"tiny": {"overrides": ["+debug=tiny", "data.batch_size=4", "optim.fused=true",
                                  "amp=fp32", "trainer.log_every=10"],
                    "steps": 50, "repeats": 20}}
USAGE = """\
  bench [--preset tiny] [--steps N] [--repeats N] [--variant OVERRIDES] [overrides]
                          time trainer's loop against a hand-written loop (median, ratio,
                          paired CPU-time ratio, aten ops per step)"""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trainer bench", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="tiny: a 1-layer x 32 GPT (seq 16, batch 4, fused AdamW, norm clipping, fp32), "
                             "where the loop's own per-step cost is what shows; its defaults are 50 steps x 20 "
                             "repeats; overrides follow it")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 30)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 5)")
    parser.add_argument("--variant", action="append", default=[], metavar="OVERRIDES",
                        help="also time trainer with these extra overrides (repeatable), e.g. --variant clip=zclip")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for MFU (default: looked up for known GPUs)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for trainer train")
    args = parser.parse_args(argv)
    preset = PRESETS.get(args.preset, {"overrides": [], "steps": 30, "repeats": 5})
    title = " ".join([*([f"--preset {args.preset}"] if args.preset else []), *args.overrides]) or "(defaults)"
    args.overrides = [*preset["overrides"], *args.overrides]
    args.steps = args.steps if args.steps is not None else preset["steps"]
    args.repeats = args.repeats if args.repeats is not None else preset["repeats"]
    for flag, value in (("--steps", args.steps), ("--repeats", args.repeats)):
        if value < 1:
            raise ConfigError(f"{flag}={value}: must be >= 1")
    from trainer.bench import measure

    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    rows, notes = measure(args.overrides, args.steps, args.repeats, args.variant, peak)
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)  # a log file does not wrap
    table = Table(title=f"trainer bench: {title}, {args.steps} steps x {args.repeats} repeats")
    for column in rows[0]:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    for note in notes:
        console.print(note)
