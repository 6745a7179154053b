"""`trainer bench`: trainer's loop against a hand-written loop on the same model, data and device.

Both sides are built from the same composed config. Repeats alternate which side runs first,
so machine noise hits both alike; the first repeat of each is a discarded warm-up. The trainer
side is the real ``loop.train`` (device-side metrics, TensorBoard writes every log_every steps,
and its closing one-batch eval), so the ratio is what a user pays, slightly pessimistic.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from trainer import config
from trainer.build import Run, build
from trainer.display import Display
from trainer.loop import to_device, train


def raw_loop(run: Run, steps: int) -> None:
    """What a user writes by hand: the PyTorch AMP recipe with clip_grad_norm_, nothing else."""
    model, opt, sched, accum = run.model, run.optimizer, run.scheduler, run.cfg.trainer.grad_accum
    scaler = run.precision.scaler
    max_norm = run.cfg.clip.get("max_norm", float("inf"))
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


def measure(overrides: list[str], steps: int, repeats: int) -> dict[str, object]:
    """Median and spread of ms/step for both sides, and their ratio."""
    config.register()
    with initialize_config_dir(config_dir=str(Path(config.__file__).resolve().parent.parent / "conf"),
                               version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"trainer.max_steps={steps}", f"trainer.eval_every={steps}",
                                           "trainer.eval_batches=1"])
    trainer_run, raw_run = build(cfg), build(cfg)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.trainer.grad_accum
    times: dict[str, list[float]] = {"trainer": [], "raw": []}
    with tempfile.TemporaryDirectory() as tmp:
        sides = {
            "trainer": lambda i: train(trainer_run, Path(tmp) / str(i), Display(steps, quiet=True)),
            "raw": lambda i: raw_loop(raw_run, steps),
        }
        for i in range(repeats + 1):
            for name in (["trainer", "raw"] if i % 2 else ["raw", "trainer"]):
                _sync(trainer_run.device)
                start = time.perf_counter()
                sides[name](i)
                _sync(trainer_run.device)
                if i:  # repeat 0 warms up both sides
                    times[name].append(1000 * (time.perf_counter() - start) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": str(trainer_run.device),
        "config": " ".join(overrides) or "(defaults)",
        "steps x repeats": f"{steps} x {repeats}",
        **{f"{k} ms/step (median, min-max)": f"{med[k]:.2f} ({min(v):.2f}-{max(v):.2f})" for k, v in times.items()},
        **{f"{k} tokens/s": f"{tokens_per_step / med[k] * 1000:.0f}" for k in times},
        "ratio trainer/raw": f"{med['trainer'] / med['raw']:.3f}",
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trainer bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side (default 5)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for trainer train")
    args = parser.parse_args(argv)
    result = measure(args.overrides, args.steps, args.repeats)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="trainer bench", show_header=False)
    for key, value in result.items():
        table.add_row(key, str(value))
    Console().print(table)
