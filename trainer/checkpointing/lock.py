"""One writer per run dir: `trainer train` holds an fcntl lock on RUN_DIR/.lock while it runs.

The kernel drops the lock when the holding process ends, however it ends (kill -9 included), so
a dead run's lock is simply taken over; the file stays, holding the last holder's pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from trainer.config import ConfigError


class RunLock:
    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(run_dir / ".lock", "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise ConfigError(f"hydra.run.dir={run_dir}: another trainer run (pid {holder}) is writing there; "
                              "wait for it to end, or choose another dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        self.file.close()
