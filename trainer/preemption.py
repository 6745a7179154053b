"""SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before a time limit) ask the loop to stop cleanly.

The loop finishes the optimizer step it is in, writes a checkpoint and raises Preempted. A
second Ctrl-C does not wait: the first one restores Python's own SIGINT handler.
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint; exit code 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """While entered, records the first stop signal instead of dying on it."""

    def __init__(self) -> None:
        from trainer.ranks import world

        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self.processes = world().size

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopRequest":
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def requested(self, log_step: bool) -> bool:
        """Must every rank stop after this step? With more than one process, ranks agree on a signal
        any of them got at log steps only (one tiny collective there), never with one on every step."""
        if self.processes > 1:
            if not log_step:
                return False
            from trainer import distributed

            self.signum = distributed.agreed_signal(self.signum)
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""
