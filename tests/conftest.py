"""Shared helpers: compose the real config with Hydra's compose API, and run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer.config import compose_config

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "model.num_layers=1", "model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
    "data=synthetic", "data.vocab_size=16", "data.seq_len=16", "data.batch_size=8", "data.num_samples=256",
    "data.eval_samples=32",
]


def make_config(*overrides: str):
    """The composed config for overrides, exactly as `trainer train` would see it."""
    return compose_config(list(overrides))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `trainer ARGS` in a fresh process (stdout is a pipe, so the display prints plain lines)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=600)


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in run_dir's event files, read with TensorBoard's own reader."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


