"""SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before a time limit) ask the loop to stop cleanly.

The loop finishes the optimizer step it is in, writes a checkpoint and raises Preempted. A
second Ctrl-C does not wait: the first one restores Python's own SIGINT handler. Before the
loop (start-up: imports, config, data, model) there is nothing to save: a stop signal ends the
command at once, as an exception (Interrupted, or Python's own KeyboardInterrupt for Ctrl-C), so
that the command can say so and clean up instead of dying without a line.
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


class Interrupted(BaseException):
    """A stop signal outside the loop. A BaseException, as KeyboardInterrupt is, so that no
    `except Exception` on the way takes it for an error."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []  # stop signals before the loop, in case code on the way swallowed one


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


def stop_during_startup() -> None:
    """From now on until StopRequest takes them, a stop signal raises at once: Interrupted, or
    KeyboardInterrupt for Ctrl-C (SIGTERM's default kills without a word). Each is also recorded:
    an import that catches everything can swallow the exception, and the loop must not start then."""
    for s in SIGNALS:
        signal.signal(s, _interrupt)


def signal_number(e: BaseException) -> int:
    """The signal behind Interrupted or KeyboardInterrupt."""
    return getattr(e, "signum", signal.SIGINT)


def describe(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


class StopRequest:
    """While entered, records the first stop signal instead of dying on it."""

    entered = False  # in this process, ever: a later KeyboardInterrupt is a second Ctrl-C

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
        if _received:  # a start-up signal whose exception something on the way swallowed
            raise Interrupted(_received[0])
        StopRequest.entered = True
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

            # A signal that arrives during the collective is recorded by _handle meanwhile: it must
            # not be overwritten by the "none" the ranks agreed on before it came (that lost SIGTERMs:
            # all ranks got theirs at once, inside the same all-reduce). It counts at the next log step.
            agreed = distributed.agreed_signal(self.signum)
            if agreed is not None:
                self.signum = agreed
            return agreed is not None
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""
