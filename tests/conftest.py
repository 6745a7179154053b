"""Shared helpers: compose the real config with Hydra's compose API, and run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import compose_config
from trainer.monitoring.report import read_scalars  # noqa: F401  (TensorBoard's own reader, for every test)

ROOT = Path(__file__).resolve().parent.parent
TINY = ["+debug=tiny"]  # conf/debug/tiny.yaml: a 1-layer x 32 GPT on synthetic data


def make_config(*overrides: str):
    """The composed config for overrides, exactly as `trainer train` would see it."""
    return compose_config(list(overrides))


def sigterm_during_step(monkeypatch, n: int) -> None:
    """Make the loop's n-th train_step call (1-based, redone steps count) send this process SIGTERM,
    as a scheduler's preemption would, mid-step; monkeypatch.undo() or a new setattr ends it."""
    import signal

    from trainer import loop
    from trainer.step import train_step

    calls = []

    def signalled_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", signalled_step)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `trainer ARGS` in a fresh process (stdout is a pipe, so the display prints plain lines)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=600)


TIERS = ("unit", "integration", "slow")


def pytest_collection_modifyitems(config, items):
    """Every test belongs to exactly one tier (pyproject.toml's markers), so that `make test-fast`
    (the unit tier) and the others stay what they say."""
    for item in items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid}: mark it with exactly one tier of {TIERS} (has {sorted(tiers)})")
