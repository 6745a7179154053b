"""Checkpoints: atomic writes, newest-loadable lookup, and loading that runs no pickled code.

A checkpoint is one file ``step_XXXXXXXX.pt`` in the checkpoint directory. It is written to a
hidden temporary file in the same directory, flushed and fsynced, then renamed into place, and
the directory is fsynced: a crash at any moment leaves either the old set of checkpoints or the
new one, never a half-written ``step_*.pt``. ``resume=auto`` still skips a file it cannot load
(a disk that lied, a file truncated by hand) and falls back to the one before.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from trainer.config import ConfigError

log = logging.getLogger("trainer")
_NAME = re.compile(r"^step_(\d{8})\.pt$")
_SHARDS_NAME = re.compile(r"^step_\d{8}\.shards$")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def shards_path(directory: Path, step: int) -> Path:
    """Where FSDP's sharded weights and optimizer state for a step go (torch.distributed.checkpoint)."""
    return directory / f"step_{step:08d}.shards"


def shards_dir(ckpt: Path, state: dict[str, Any]) -> Path | None:
    """The FSDP shards dir checkpoint file ckpt points at, or None. Anything but a step_N.shards
    directory beside it is refused: its reader would be handed a path the file chose."""
    name = state.get("shards")
    if not name:
        return None
    directory = ckpt.parent / name if isinstance(name, str) and _SHARDS_NAME.match(name) else None
    if directory is None or directory.is_symlink():
        raise ConfigError(f"checkpoint {ckpt}: refused, its shards entry {name!r} is not a step_N.shards "
                          "directory beside it")
    if not directory.is_dir():
        raise ConfigError(f"checkpoint {ckpt}: its shards directory {directory} is missing")
    return directory


def save(directory: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write state as directory/step_<step>.pt atomically, then keep only the newest keep_last."""
    directory.mkdir(parents=True, exist_ok=True)
    final = path(directory, step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(directory)
    for old in checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    for shards in directory.glob("step_*.shards"):  # those whose checkpoint file is gone
        if not shards.with_suffix(".pt").exists():
            shutil.rmtree(shards, ignore_errors=True)
    # One writer per directory: any other temporary file is what a killed run left behind.
    for stale in directory.glob(".step_*.pt.tmp-*"):
        stale.unlink(missing_ok=True)
    for stale in directory.glob(".step_*.shards.tmp"):  # this step's shards are renamed by now
        shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint files in directory, oldest first (temporary files never match)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def load(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True; any failure becomes a ConfigError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint.resume={path}: no such file") from None
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ConfigError(f"checkpoint {path}: refused, it holds pickled code or objects "
                              "(loading uses weights_only=True: tensors and plain data only)") from None
        raise ConfigError(f"checkpoint {path}: unreadable ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"checkpoint {path}: unreadable, truncated or corrupt ({str(e).splitlines()[0]})") from None


def latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in directory that loads, with its contents; None if there is none."""
    for path in reversed(checkpoints(directory)):
        try:
            return path, load(path)
        except ConfigError as e:
            log.warning("skipping %s", e)
    return None
