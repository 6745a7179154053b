"""When a run's checkpoints are written and read: every checkpoint.every steps, after the last step,
on a stop signal, before the first step when the spike guard needs something to roll back to;
resuming (checkpoint.resume) and the guard's rollbacks.

What a checkpoint holds is trainer/checkpointing/state.py; writing the file atomically is trainer/checkpointing/checkpoint.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from trainer import distributed
from trainer.checkpointing import checkpoint, state
from trainer.build import Run, unwrap
from trainer.config import run_dir_override
from trainer.monitoring.display import Display
from trainer.preemption import Preempted


class Checkpointer:
    def __init__(self, run: Run, run_dir: Path, parts: dict[str, state.Stateful], display: Display):
        c = run.cfg.checkpoint
        self.run, self.run_dir, self.parts, self.display = run, run_dir, parts, display
        self.dir = Path(c.dir) if c.dir else run_dir / "checkpoints"
        self.every, self.keep_last, self.resume_from = c.every, c.keep_last, c.resume
        self.max_steps = run.cfg.trainer.max_steps
        self.sharded = state.sharded(run)
        if distributed.world().main:  # refused before training, not at the first save
            checkpoint.probe_writable(run_dir, "hydra.run.dir")
            checkpoint.probe_writable(self.dir, "checkpoint.dir")

    def resume(self) -> int:
        """Restore what checkpoint.resume asks for (none, the newest loadable in the dir, or a file);
        return the step to go on from (0 for a fresh start)."""
        if self.resume_from == "none":
            return 0
        if self.resume_from == "auto":
            found = checkpoint.latest(self.dir, skipped=self.display.note)
            if found is None:
                self.display.note(f"checkpoint.resume=auto: no checkpoint in {self.dir}, starting fresh")
                return 0
            path, saved = found
        else:
            path = Path(self.resume_from)
            saved = checkpoint.load(path)
        step = self._restore(path, saved)
        self.display.note(f"resumed from {path} at step {step}")
        return step

    def _restore(self, path: Path, saved: dict[str, Any]) -> int:
        state.restore(self.run, self.parts, saved, path, say=self.display.note)
        return saved["step"]

    def restore_latest(self) -> int:
        """Restore the newest checkpoint in the dir (a rollback); return its step."""
        return self._restore(*checkpoint.latest(self.dir, skipped=self.display.note))

    def save(self, step: int) -> Path:
        """Write the checkpoint of `step` (on every rank: each writes its shards, RNG gathers all ranks)."""
        shards_name = None
        if self.sharded:
            from trainer.checkpointing import shards

            shards_name = shards.save(unwrap(self.run.model), self.run.optimizer, self.dir, step)
        saved = state.capture(self.parts, step, self.run.cfg, shards_name)
        main = distributed.world().main
        path = checkpoint.save(self.dir, step, saved, self.keep_last) if main else checkpoint.path(self.dir, step)
        distributed.barrier()  # no rank reads it (a rollback, a resume) before it is complete
        return path

    def ensure_one(self, step: int) -> None:
        """Write a checkpoint now unless the dir has one: the spike guard needs something to roll back to."""
        if not checkpoint.checkpoints(self.dir):
            self.save(step)

    def due(self, step: int) -> bool:
        """Every checkpoint.every steps, and after the last step."""
        return step == self.max_steps or bool(self.every and step % self.every == 0)

    def preempt(self, step: int, signal_name: str, signum: int) -> None:
        """Checkpoint the step just finished and stop with the command that resumes it."""
        path = self.save(step)
        raise Preempted(signum, (
            f"stopped by {signal_name} after step {step}; checkpoint: {path}; to resume, run the same "
            f"command with checkpoint.resume=auto {shlex.quote(run_dir_override(self.run_dir))}"))
