"""`trainer bench`: trainer's loop against a hand-written loop on the same model, data and device.

Every side is built from the same composed config (a variant adds overrides). Each repeat runs
every side once, in an order that rotates, so machine noise hits all alike; the first repeat is
a discarded warm-up. A trainer side is the real ``loop.train`` (device-side metrics, a host read
and a TensorBoard event every log_every steps, handed to its writer in batches, the last at the
last step); its clock runs from the first step to the last log, so the run's fixed costs (opening
the event file, the closing eval and checkpoint) are not charged per step. The raw loop reads its
loss at the same interval, as a hand-written loop that prints its loss would.

Each side's process CPU time is taken over the same span as its wall time, and reported as the
median (and interquartile range) of the ratios side/raw within each repeat: on a shared machine
the pairs share its state, so this is steadier than a ratio of wall medians. The aten ops per step
of each side are counted by torch's profiler over a few extra steps (counted, not timed).

A ``clip=none`` trainer side always runs too: trainer(clip policy) - trainer(clip=none) is what
clipping costs end to end. Clipping alone is also timed in isolation (``clip_grad_norm_`` on the
model's real gradients, many calls), which is far less noisy than a difference of two medians.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from trainer.build import Run, build
from trainer.config import compose_config
from trainer.monitoring.display import Display
from trainer.loop import train
from trainer.step import model_loss, to_device

# Dense bf16/fp16 tensor-core peak (FLOP/s) by device name, from the vendors' data sheets (SXM parts).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def raw_loop(run: Run, steps: int) -> None:
    """What a user writes by hand: the PyTorch AMP recipe with clip_grad_norm_, printing its loss
    every log_every steps (one host read there), nothing else.

    It always clips by norm (clip.max_norm, else 1.0), so with another clip policy the ratio is
    that policy's cost over plain norm clipping.
    """
    model, opt, sched, accum = run.model, run.optimizer, run.schedule.scheduler, run.cfg.trainer.grad_accum
    scaler = run.precision.scaler
    max_norm = run.cfg.clip.get("max_norm") or 1.0
    log_every = run.cfg.trainer.log_every
    batches = run.train_batches
    for step in range(1, steps + 1):
        for _ in range(accum):
            batch = to_device(next(batches), run.device)
            with run.precision.autocast():
                loss = model_loss(model(**batch))[0] / accum  # a dict's "loss" (a z-loss run's)
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
        if step % log_every == 0 or step == steps:
            loss.item()


class _Clock(Display):
    """A silent display that notes when the first step starts and when the last log is written
    (wall and process CPU time), and when each step ends; it can run a profiler between the first
    step and the last log."""

    def __init__(self, steps: int, profiler: torch.profiler.profile | None = None):
        super().__init__(steps, quiet=True)
        self.start = self.end = self.cpu_start = self.cpu_end = 0.0
        self.last_step = steps
        self.profiler = profiler
        self.marks: list[float] = []  # [0]: the start; [k]: the end of step k (before its log work)
        self.metrics: dict[str, float] = {}  # what the last log step recorded

    def step(self, step: int) -> None:
        if not self.start:
            if self.profiler:
                _silently(self.profiler.start)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.marks.append(time.perf_counter())

    def step_times(self, log_every: int) -> tuple[list[float], list[float]]:
        """Wall ms of the steps that carry a log step's work (the step after it: the host read, the
        TensorBoard events happen between the two), and of the others."""
        after_log, others = [], []
        for k in range(2, len(self.marks)):  # marks[k] - marks[k - 1]: step k and the log work of step k - 1
            (after_log if (k - 1) % log_every == 0 else others).append(1000 * (self.marks[k] - self.marks[k - 1]))
        return after_log, others

    def log(self, step: int, m: dict[str, float], scale: float, lr: float) -> None:
        # The log follows the interval's host read, so the device has finished every step by now.
        # The first log at or after max_steps: a run that goes on (ops are counted over fewer steps
        # than it trains) may not log at max_steps itself.
        self.metrics = m
        if step >= self.max_steps and not self.end:
            self.end, self.cpu_end, self.last_step = time.perf_counter(), time.process_time(), step
            if self.profiler:
                _silently(self.profiler.stop)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(name: str, run: Run, steps: int, out: Path) -> tuple[float, float, _Clock | None]:
    """Wall and process CPU seconds for `steps` steps of one side, and a trainer side's clock."""
    _sync(run.device)
    if name == "raw":
        start, cpu = time.perf_counter(), time.process_time()
        raw_loop(run, steps)
        _sync(run.device)
        return time.perf_counter() - start, time.process_time() - cpu, None
    clock = _Clock(steps)
    train(run, out, clock)
    return clock.end - clock.start, clock.cpu_end - clock.cpu_start, clock


def ops_per_step(name: str, run: Run, steps: int, out: Path) -> tuple[float, float]:
    """aten ops per step of one side: every aten:: event, nested ones included, and the top-level
    ones alone (see op_counts)."""
    every, top, counted = op_counts(name, run, steps, out)
    return sum(every.values()) / counted, sum(top.values()) / counted


def op_counts(name: str, run: Run, steps: int, out: Path) -> tuple[Counter[str], Counter[str], int]:
    """aten ops of one side by name, counted by torch's profiler over `steps` steps (the trainer
    side between its first step and its last log, as it is timed): every aten:: event, nested
    ones included, and the top-level ones alone (called from Python or the autograd engine, not
    from inside another aten op: on a GPU each is a kernel launch or a few, while the nested ones
    are their views, allocations and casts, or a CPU kernel's own loop over tensors); and the
    steps counted (the trainer side's: up to its first log at or after `steps`)."""
    from torch.profiler import ProfilerActivity, profile

    profiler = profile(activities=[ProfilerActivity.CPU])
    if name == "raw":
        _silently(profiler.start)
        raw_loop(run, steps)
        _silently(profiler.stop)
    else:
        clock = _Clock(steps, profiler)
        train(run, out, clock)
        steps = clock.last_step
    events = [e for e in profiler.events() if e.name.startswith("aten::")]
    return Counter(e.name for e in events), Counter(e.name for e in events if not _inside_aten(e)), steps


def _inside_aten(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def _silently(fn: Callable[[], None]) -> None:
    """fn() with file descriptor 2 on /dev/null: the profiler's C++ side prints a line to stderr
    at each start and stop (USDT ... profiler_start), which would cut through the table."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def paired_ratio(side: list[float], raw: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range of side[i] / raw[i]: the repeats ran side by side, so each
    pair shares the machine's state of the moment."""
    ratios = [a / b for a, b in zip(side, raw)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q1, q3


def _backward(run: Run) -> None:
    """The model's real gradients, from one batch, for the isolated timings below."""
    batch = to_device(next(run.train_batches), run.device)
    with run.precision.autocast():
        loss = model_loss(run.model(**batch))[0]
    loss.backward()


def clip_cost_ms(run: Run, calls: int = 50) -> float:
    """Median ms of one clip_grad_norm_(foreach) on the model's real gradients, after a backward."""
    _backward(run)
    max_norm = run.cfg.clip.get("max_norm") or 1.0
    times = []
    for _ in range(calls + 5):
        _sync(run.device)
        start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(run.params, max_norm, foreach=True)
        _sync(run.device)
        times.append(1000 * (time.perf_counter() - start))
    run.optimizer.zero_grad(set_to_none=True)
    return statistics.median(times[5:])


def skip_cost_us(run: Run, calls: int = 100, blocks: int = 10) -> tuple[float, float] | None:
    """Median us of one optimizer.step() on the model's real gradients as the loop makes it, through
    step_if_finite with the non-finite flag 0, and as a plain step(), interleaved in blocks of
    `calls`; None for an optimizer without the on-device skip (fused). The difference is what the
    skip of non-finite steps costs a good step: on an accelerator the flag goes to the optimizer,
    which takes it back off each step count (a _foreach_sub_); on a CPU it is read on the host."""
    from trainer.precision import step_if_finite

    optimizer = run.optimizer
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return None
    _backward(run)
    finite = torch.zeros((), dtype=torch.float32, device=run.device)
    sides = {"flag": lambda: step_if_finite(optimizer, finite), "plain": optimizer.step}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for block in range(blocks + 1):  # the first block warms up
        # each side first in every other block: whatever the first of a pair pays, both pay alike
        for name, step in list(sides.items())[::1 if block % 2 else -1]:
            _sync(run.device)
            start = time.perf_counter()
            for _ in range(calls):
                step()
            _sync(run.device)
            times[name].append(1e6 * (time.perf_counter() - start) / calls)
    optimizer.zero_grad(set_to_none=True)
    return statistics.median(times["flag"][1:]), statistics.median(times["plain"][1:])


def tensorboard_cost_us(run: Run, out: Path, metrics: dict[str, float], events: int = 200) -> float:
    """Process CPU us per log step's TensorBoard event as the Logger writes it, its writer's thread
    included (the checksum, the append to the event file), handed over in the Logger's batches:
    `events` events of these metrics at steps 1..events into out, flushed."""
    from trainer.monitoring.logger import Logger

    logger = Logger(run, out, 0, main=True)
    try:
        cpu = time.process_time()
        for step in range(1, events + 1):
            logger.log(step, metrics)
        logger.flush()
        return 1e6 * (time.process_time() - cpu) / events
    finally:
        logger.close()


def _count(ops: dict[str, tuple[float, float]], name: str, kind: int) -> str:
    """One side's ops per step, and its difference to raw's."""
    n = ops[name][kind]
    return f"{n:.0f}" if name == "raw" else f"{n:.0f} ({n - ops['raw'][kind]:+.0f})"


def flops_per_token(run: Run) -> float | None:
    """Training FLOPs per token, 6N + 12·L·d·T (PaLM appendix B, as nanoGPT's estimate_mfu);
    None for a model whose config does not give num_layers and hidden_size."""
    m, seq_len = run.cfg.model, run.cfg.data.get("seq_len")
    if not all(k in m for k in ("num_layers", "hidden_size")) or not seq_len:
        return None
    n = sum(p.numel() for p in run.params)
    return 6 * n + 12 * m.num_layers * m.hidden_size * seq_len


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def measure(overrides: list[str], steps: int, repeats: int, variants: list[str],
            peak: float | None = None) -> tuple[list[dict[str, str]], list[str]]:
    """A row per side (median and range of ms/step, tokens/s, MFU, peak memory, ratio to raw), and
    notes on clipping's cost. All sides run once per repeat, in a rotating order; repeat 0 warms up."""
    fixed = [f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", "trainer.eval_batches=1"]
    cfg = compose_config([*overrides, *fixed])
    raw_run = build(cfg)
    runs = {"raw": raw_run, "trainer": build(cfg), "trainer clip=none": build(compose_config([*overrides, *fixed, "clip=none"]))}
    for v in variants:
        runs[f"trainer {v}"] = build(compose_config([*overrides, *v.split(), *fixed]))
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.trainer.grad_accum
    device = raw_run.device
    cuda = device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    memory: dict[str, int] = {name: 0 for name in runs}
    after_log, others = [], []  # the trainer side's step times (ms)
    logged: dict[str, float] = {}  # what the trainer side's log steps record
    names = list(runs)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):
            for name in names[i % len(names):] + names[:i % len(names)]:
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                seconds, cpu_seconds, clock = _timed(name, runs[name], steps, Path(tmp) / f"{i}-{names.index(name)}")
                if i:
                    times[name].append(1000 * seconds / steps)
                    cpu[name].append(cpu_seconds)
                    if name == "trainer":
                        a, o = clock.step_times(cfg.trainer.log_every)
                        after_log, others, logged = after_log + a, others + o, clock.metrics
                    if cuda:
                        memory[name] = max(memory[name], torch.cuda.max_memory_allocated(device))
        counted = min(steps, max(20, cfg.trainer.log_every))  # a log step among them, as in the timed steps
        ops = {name: ops_per_step(name, runs[name], counted, Path(tmp) / f"ops-{names.index(name)}")
               for name in names}
        tensorboard = tensorboard_cost_us(runs["trainer"], Path(tmp) / "tensorboard", logged) if logged else None
    flops, peak = flops_per_token(raw_run), peak or peak_flops(device, raw_run.precision.name)
    raw = statistics.median(times["raw"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        tokens_per_sec = tokens_per_step / med * 1000
        ratio, q1, q3 = paired_ratio(cpu[name], cpu["raw"])
        rows.append({
            "side": name, "ms/step median": f"{med:.2f}", "min-max": f"{min(ts):.2f}-{max(ts):.2f}",
            "tokens/s": f"{tokens_per_sec:.0f}",
            "ratio to raw": f"{med / raw:.3f}",
            "CPU ratio (IQR)": f"{ratio:.3f} ({q1:.3f}-{q3:.3f})",
            "aten ops/step": _count(ops, name, 0),
            "top-level ops/step": _count(ops, name, 1),
        })
        if flops and peak:
            rows[-1]["MFU"] = f"{100 * flops * tokens_per_sec / peak:.1f}%"
        if cuda:
            rows[-1]["peak memory"] = f"{memory[name] / 2**20:.0f} MiB"
    step_ms = statistics.median(times["trainer"])
    end_to_end = step_ms - statistics.median(times["trainer clip=none"])
    isolated = clip_cost_ms(raw_run)
    notes = [
        f"clipping, end to end: trainer - trainer clip=none = {end_to_end:+.2f} ms/step "
        f"({100 * end_to_end / step_ms:+.1f}% of the step; the difference of two noisy medians)",
        f"clipping, isolated: clip_grad_norm_(foreach) on this model's gradients = {isolated:.3f} ms "
        f"({100 * isolated / step_ms:.2f}% of the step; median of 50 calls)",
    ]
    if skip := skip_cost_us(raw_run):
        flag, plain = skip
        notes.append(f"the non-finite skip, isolated: optimizer.step() with the flag {flag:.1f} us against "
                     f"{plain:.1f} us without ({100 * (flag - plain) / 1000 / step_ms:+.2f}% of the step; medians of 10 "
                     "blocks of 100 calls, interleaved)")
    if tensorboard is not None:
        interval = step_ms * cfg.trainer.log_every
        notes.append(f"TensorBoard, isolated: a log step's event ({len(logged)} scalars) costs {tensorboard:.0f} us of "
                     f"process CPU, the writer's thread included ({100 * tensorboard / 1000 / interval:.2f}% of a "
                     f"log interval; 200 events)")
    if after_log and others:
        a, o = statistics.median(after_log), statistics.median(others)
        notes.append(f"log steps: the step after one (it carries the host read and the TensorBoard event) takes "
                     f"{a:.2f} ms against {o:.2f} ms for the others (medians of {len(after_log)} and {len(others)}): "
                     f"{a / o:.2f}x a step")
    return rows, notes
