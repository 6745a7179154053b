"""trainer against HF Accelerate and Lightning on trainer bench's tiny preset (issue #18's table).

Every contender trains the same model (trainer's GPT, built from the same config), on the same
batches, with the same fused AdamW, LR schedule and norm clipping at 1.0 in fp32, reading its loss
every 10 steps. They run in blocks of --steps steps, interleaved in a rotating order within one
process, --repeats times after a warm-up block; each block's process CPU time is divided by the raw
loop's of the same repeat (the paired CPU ratio `trainer bench` reports), and the aten ops per step
are counted by torch's profiler over 20 more steps. Accelerate and Lightning are optional: a
contender that does not import is left out. Not a dependency of trainer; install them beside it:

    .venv/bin/pip install accelerate lightning
    .venv/bin/python benchmarks/peers.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from trainer import bench
from trainer.build import Run, build
from trainer.commands.bench import PRESETS
from trainer.config import compose_config
from trainer.step import to_device


class Span:
    """Wall and CPU time (and optionally a profiler) from the first step to the end of the last."""

    def __init__(self, profiler=None):
        self.profiler, self.wall, self.cpu = profiler, 0.0, 0.0

    def start(self) -> None:
        if self.profiler:
            bench._silently(self.profiler.start)
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def end(self) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        if self.profiler:
            bench._silently(self.profiler.stop)


def raw(run: Run, steps: int, span: Span) -> None:
    span.start()
    bench.raw_loop(run, steps)
    span.end()


def trainer(run: Run, steps: int, span: Span, out: Path) -> None:
    clock = bench._Clock(steps, span.profiler)
    bench.train(run, out, clock)
    span.wall, span.cpu = clock.end - clock.start, clock.cpu_end - clock.cpu_start


def accelerate_side(run: Run) -> Callable[[int, Span], None]:
    """The loop of Accelerate's README: prepare, accelerator.backward, accelerator.clip_grad_norm_."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=run.device.type == "cpu")
    model, optimizer, scheduler = accelerator.prepare(run.model, run.optimizer, run.schedule.scheduler)

    def loop(steps: int, span: Span) -> None:
        span.start()
        for step in range(1, steps + 1):
            loss = model(**to_device(next(run.train_batches), accelerator.device))
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if step % 10 == 0 or step == steps:
                loss.item()
        span.end()
    return loop


def lightning_side(run: Run) -> Callable[[int, Span], None]:
    """A LightningModule around the same model, fit for `steps` steps by a Trainer per block
    (clipping by Trainer(gradient_clip_val=1.0), self.log every 10 steps); its clock runs from the
    first batch's start to the last batch's end, so fit's start-up is not charged."""
    import logging

    import lightning as L

    for name in ("lightning.pytorch", "lightning.fabric"):  # its start-up lines, every block
        logging.getLogger(name).setLevel(logging.ERROR)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = run.model

        def training_step(self, batch, index):
            loss = self.model(**batch)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return {"optimizer": run.optimizer, "lr_scheduler": {"scheduler": run.schedule.scheduler, "interval": "step"}}

    class Batches(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield next(run.train_batches)

    class Timing(L.Callback):
        def __init__(self, span: Span, steps: int):
            self.span, self.steps = span, steps

        def on_train_batch_start(self, trainer, module, batch, index):
            if index == 0:
                self.span.start()

        def on_train_batch_end(self, trainer, module, outputs, batch, index):
            if index == self.steps - 1:
                self.span.end()

    module = Module()
    loader = torch.utils.data.DataLoader(Batches(), batch_size=None)

    def loop(steps: int, span: Span) -> None:
        fit = L.Trainer(max_steps=steps, accelerator=run.device.type, devices=1, gradient_clip_val=1.0,
                        log_every_n_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Timing(span, steps)])
        fit.fit(module, loader)
    return loop


def contenders(overrides: list[str]) -> dict[str, Callable[[int, Span], None]]:
    cfg = compose_config(overrides)
    out = Path(tempfile.mkdtemp())
    runs = {name: build(cfg) for name in ("raw", "trainer", "accelerate", "lightning")}
    sides = {"raw": lambda n, s: raw(runs["raw"], n, s),
             "trainer": lambda n, s: trainer(runs["trainer"], n, s, out / str(time.perf_counter_ns()))}
    for name, make in (("accelerate", accelerate_side), ("lightning", lightning_side)):
        try:
            sides[name] = make(runs[name])
        except ImportError as e:
            print(f"{name}: left out ({e})")
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    overrides = [*PRESETS["tiny"]["overrides"], f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}",
                 "trainer.eval_batches=1", "checkpoint.every=0"]
    sides = contenders(overrides)
    names = list(sides)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.repeats + 1):
        for name in names[i % len(names):] + names[:i % len(names)]:
            span = Span()
            sides[name](args.steps, span)
            if i:
                cpu[name].append(span.cpu)
                wall[name].append(1000 * span.wall / args.steps)
    ops = {}
    for name in names:
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CPU])
        sides[name](20, Span(profiler))
        events = [e for e in profiler.events() if e.name.startswith("aten::")]
        ops[name] = (len(events) / 20, sum(not bench._inside_aten(e) for e in events) / 20)
    print(f"tiny preset, {args.steps}-step blocks x {args.repeats} repeats, torch {torch.__version__}")
    print(f"{'contender':12} {'ms/step':>8} {'CPU ratio (IQR)':>22} {'aten ops/step':>14} {'top-level':>10}")
    for name in names:
        ratio, q1, q3 = bench.paired_ratio(cpu[name], cpu["raw"])
        all_ops, top = ops[name]
        print(f"{name:12} {statistics.median(wall[name]):8.2f} {f'{ratio:.3f} ({q1:.3f}-{q3:.3f})':>22} "
              f"{all_ops - ops['raw'][0]:+14.0f} {top - ops['raw'][1]:+10.0f}" if name != "raw" else
              f"{name:12} {statistics.median(wall[name]):8.2f} {'1.000':>22} {all_ops:14.0f} {top:10.0f}")


if __name__ == "__main__":
    main()
