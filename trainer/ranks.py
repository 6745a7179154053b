"""Where this process stands under torchrun: rank, world size and local rank, from the environment.

Apart from trainer.distributed because it needs no torch: the CLI reads it before anything else,
so `trainer --help` and config errors do not wait for torch to import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes events, checkpoints and the display."""
        return self.rank == 0


def world() -> World:
    """This process's place, from the variables torchrun sets (one process without them)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def is_worker() -> bool:
    """True in a process started by torchrun (or trainer's own use of its launcher)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "RANK" in os.environ and "WORLD_SIZE" in os.environ
