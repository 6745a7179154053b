"""How long `trainer` takes to answer: --help, config errors of each kind, and a one-step run.

Each command is a whole process, run --repeats times; the table gives the median wall and CPU
(user + system) seconds and their spread (max - min). With --against DIR the same commands also
run with PYTHON (another environment's interpreter, e.g. one with the previous commit installed),
interleaved with this one in blocks, so that both see the same machine load:

    .venv/bin/python benchmarks/startup.py --repeats 7
    .venv/bin/python benchmarks/startup.py --against /tmp/before-venv/bin/python
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "trainer --help": ["--help"],
    "train --help": ["train", "--help"],
    "no such option (model=brt)": ["train", "model=brt"],
    "unknown key (+foo=1)": ["train", "+foo=1"],
    "range (optim.lr=-1)": ["train", "optim.lr=-1"],
    "device (trainer.device=cuda)": ["train", "trainer.device=cuda"],
    "groups (strategy=fsdp amp=fp16)": ["train", "strategy=fsdp", "amp=fp16"],
    "run: +debug=tiny, 1 step": ["train", "+debug=tiny", "trainer.max_steps=1", "trainer.log_every=1",
                                 "hydra.run.dir={tmp}"],
}


def timed(python: str, args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one `python -m trainer ARGS` process (the CPU from its rusage)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([python, "-m", "trainer", *(a.format(tmp=tmp) for a in args)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 2):
        raise SystemExit(f"trainer {' '.join(args)} exited with {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--against", metavar="PYTHON", help="another environment's python, timed interleaved")
    args = parser.parse_args()
    sides = {"before": args.against, "after": sys.executable} if args.against else {"this": sys.executable}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):  # blocks: every command on every side, then again
        for name, argv in COMMANDS.items():
            for side, python in sides.items():
                times.setdefault((name, side), []).append(timed(python, argv))
    print(f"{'command':34} {'side':7} {'wall s':>7} {'spread':>7} {'cpu s':>7} {'spread':>7}   ({args.repeats} runs)")
    for (name, side), runs in times.items():
        wall, cpu = [w for w, _ in runs], [c for _, c in runs]
        print(f"{name:34} {side:7} {statistics.median(wall):7.2f} {max(wall) - min(wall):7.2f} "
              f"{statistics.median(cpu):7.2f} {max(cpu) - min(cpu):7.2f}")


if __name__ == "__main__":
    main()
