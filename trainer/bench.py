"""`trainer bench`: trainer's loop against a hand-written loop on the same model, data and device.

Every side is built from the same composed config (a variant adds overrides). Each repeat runs
every side once, in an order that rotates, so machine noise hits all alike; the first repeat is
a discarded warm-up. A trainer side is the real ``loop.train`` (device-side metrics, TensorBoard
writes every log_every steps, its closing one-batch eval and checkpoint), so its ratio to the raw
loop is what a user pays, slightly pessimistic.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainer.build import Run, build
from trainer.config import compose_config
from trainer.display import Display
from trainer.loop import to_device, train


def raw_loop(run: Run, steps: int) -> None:
    """What a user writes by hand: the PyTorch AMP recipe with clip_grad_norm_, nothing else.

    It always clips by norm (clip.max_norm, else 1.0), so with another clip policy the ratio is
    that policy's cost over plain norm clipping.
    """
    model, opt, sched, accum = run.model, run.optimizer, run.scheduler, run.cfg.trainer.grad_accum
    scaler = run.precision.scaler
    max_norm = run.cfg.clip.get("max_norm") or 1.0
    batches = run.train_batches
    for _ in range(steps):
        for _ in range(accum):
            batch = to_device(next(batches), run.device)
            with run.precision.autocast():
                loss = model(**batch) / accum
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(run.params, max_norm, foreach=True)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(overrides: list[str], steps: int, repeats: int, variants: list[str]) -> list[dict[str, str]]:
    """Median and range of ms/step for the raw loop, trainer, and trainer with each variant's overrides.

    All sides run once per repeat, in an order that rotates from repeat to repeat; repeat 0 warms up.
    """
    fixed = [f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", "trainer.eval_batches=1"]
    cfg = compose_config([*overrides, *fixed])
    raw_run = build(cfg)
    runs = {"trainer": build(cfg)}
    for v in variants:
        runs[f"trainer {v}"] = build(compose_config([*overrides, *v.split(), *fixed]))
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.trainer.grad_accum
    device = raw_run.device
    times: dict[str, list[float]] = {"raw": [], **{name: [] for name in runs}}
    names = list(times)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):
            for name in names[i % len(names):] + names[:i % len(names)]:
                _sync(device)
                start = time.perf_counter()
                if name == "raw":
                    raw_loop(raw_run, steps)
                else:
                    train(runs[name], Path(tmp) / f"{len(names) * i + names.index(name)}", Display(steps, quiet=True))
                _sync(device)
                if i:
                    times[name].append(1000 * (time.perf_counter() - start) / steps)
    raw = statistics.median(times["raw"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"side": name, "ms/step median": f"{med:.2f}", "min-max": f"{min(ts):.2f}-{max(ts):.2f}",
                     "tokens/s": f"{tokens_per_step / med * 1000:.0f}", "ratio to raw": f"{med / raw:.3f}"})
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trainer bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side (default 5)")
    parser.add_argument("--variant", action="append", default=[], metavar="OVERRIDES",
                        help="also time trainer with these extra overrides (repeatable), e.g. --variant clip=zclip")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for trainer train")
    args = parser.parse_args(argv)
    rows = measure(args.overrides, args.steps, args.repeats, args.variant)
    from rich.console import Console
    from rich.table import Table

    cfg = " ".join(args.overrides) or "(defaults)"
    table = Table(title=f"trainer bench: {cfg}, {args.steps} steps x {args.repeats} repeats")
    for column in rows[0]:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row.values())
    Console().print(table)
