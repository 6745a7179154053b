"""What the terminal shows: the config tree, a progress bar (or plain lines off a terminal), a summary."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.tree import Tree

from trainer.monitoring.mlflow_run import where as mlflow_where

# Hydra points the root logger at <run dir>/train.log only; the terminal is this module's.
log = logging.getLogger("trainer")


def config_tree(cfg: DictConfig) -> Tree:
    """The composed config as a rich tree, one branch per group."""
    tree = Tree("[bold]config[/]")

    def add(node: Tree, value: object) -> None:
        for key, sub in value.items():
            if isinstance(sub, dict):
                add(node.add(f"[bold cyan]{key}[/]"), sub)
            else:
                node.add(f"{key}: [green]{sub}[/]")

    add(tree, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return tree


def _line(step: int, max_steps: int, m: dict[str, float], scale: float, lr: float) -> str:
    return (
        f"step {step}/{max_steps}  loss {m['train/loss']:.4f}  grad_norm {m['train/grad_norm']:.3f}"
        f" (clipped {m['train/grad_norm_clipped']:.3f}, {100 * m['train/clip_fraction']:.0f}% of steps)"
        f"  scale {scale:g}  skipped {m['train/skipped_steps']:.0f}  lr {lr:.2e}"
        f"  {m['perf/step_ms']:.1f} ms/step  {m['perf/tokens_per_sec']:.0f} tok/s"
    )


def readable(value: object) -> str:
    """A summary value for reading: whole numbers without decimals (a loss scale of 32768, not
    32768.0000), large ones rounded, others to five significant digits (a loss of 2.4761,
    9559.9 tokens/s, a clip fraction of 0.6)."""
    if not isinstance(value, float) or value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if value.is_integer() or abs(value) >= 1e4:
        return f"{value:.0f}"
    return f"{value:.5g}"


class Display:
    """Progress on a terminal; plain periodic lines when stdout is a pipe or file; nothing when quiet."""

    def __init__(self, max_steps: int, interactive: bool | None = None, quiet: bool = False):
        self.max_steps = max_steps
        self.quiet = quiet
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        # Off a terminal, lines must not wrap at an imagined width: logs are read by grep.
        self.console = Console(soft_wrap=not self.interactive)
        self.progress: Progress | None = None
        self.mlflow_line: str | None = None

    def print(self, *objects: object) -> None:
        if not self.quiet:
            self.console.print(*objects)

    def start(self, cfg: DictConfig, run_dir: Path, device: str, num_params: int) -> None:
        self.print(config_tree(cfg))
        self.print(f"model: {num_params / 1e6:.2f}M parameters on {device}")
        self.mlflow_line = mlflow_where(cfg)
        self.print(f"outputs: {run_dir}")
        self.print(f"tensorboard: tensorboard --logdir {run_dir}")
        if self.mlflow_line:
            self.print(self.mlflow_line)
        if self.interactive and not self.quiet:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, refresh_per_second=4,
            )
            self.task = self.progress.add_task("train", total=self.max_steps, stats="")
            self.progress.start()

    def step(self, step: int) -> None:
        if self.progress:
            self.progress.update(self.task, completed=step)

    def log(self, step: int, m: dict[str, float], scale: float, lr: float) -> None:
        line = _line(step, self.max_steps, m, scale, lr)
        log.info(line)
        if self.progress:
            self.progress.update(self.task, stats=(
                f"loss {m['train/loss']:.4f}  norm {m['train/grad_norm']:.3f}  scale {scale:g}"
                f"  {m['perf/tokens_per_sec']:.0f} tok/s"))
        else:
            self.print(line)

    def note(self, msg: str) -> None:
        """A one-line event (an eval, a rollback, a controller decision): on the terminal and in train.log."""
        log.info(msg)
        if self.progress:
            self.progress.console.print(msg)
        else:
            self.print(msg)

    def eval(self, step: int, metrics: dict[str, float]) -> None:
        self.note(f"step {step}/{self.max_steps}  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def close(self) -> None:
        """Stop the progress bar (idempotent), so later output is not drawn over."""
        if self.progress:
            self.progress.stop()
            self.progress = None

    def finish(self, summary: dict[str, object], run_dir: Path) -> None:
        self.close()
        table = Table(title="summary", show_header=False)
        for key, value in summary.items():
            table.add_row(key, readable(value))
        self.print(table)
        self.print(f"outputs: {run_dir}")
        self.print(f"tensorboard: tensorboard --logdir {run_dir}")
        if self.mlflow_line:
            self.print(self.mlflow_line)
