"""Checkpoint files: atomic writes with a checksum, newest-loadable lookup, loading that runs no code.

A checkpoint is one file ``step_XXXXXXXX.pt`` in the checkpoint directory, with its SHA-256 beside
it in ``step_XXXXXXXX.pt.sha256`` (sha256sum's format: ``sha256sum -c`` checks it too). Both are
written to hidden temporary files in the same directory, flushed and fsynced; the checksum is
renamed into place first, then the checkpoint, and the directory is fsynced: a crash at any
moment leaves either the old set of checkpoints or the new one, never a half-written
``step_*.pt`` nor one without its checksum. torch's zip reader checks no CRCs, so the checksum is
what catches a flipped byte; ``resume=auto`` skips a file that fails it (or cannot be read at
all) and falls back to the one before. Checkpoints written by 0.1.0 have no checksum file and
load unverified.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from trainer.config import ConfigError

_ZIP_MAGIC = b"PK\x03\x04"  # what every torch.save file starts with


class CheckpointWriteError(Exception):
    """Writing a checkpoint failed (disk full, read-only, ...); the previous ones are intact. Exit code 1."""

    exit_code = 1
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


def probe_writable(directory: Path, key: str) -> None:
    """Create directory and write, fsync and remove a file in it, so that a dir that cannot take the
    run's files fails now, in one line naming key, not at the first checkpoint after hours of steps."""
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_synced(probe, lambda f: f.write(b"ok"))
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{key}={directory}: cannot write there ({e.strerror or e})") from None


def checksum_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".sha256")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_synced(file: Path, write: Callable[[Any], None]) -> None:
    with open(file, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save(directory: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write state as directory/step_<step>.pt atomically, with its checksum, then keep only the newest
    keep_last. A write that fails (disk full, read-only) raises CheckpointWriteError, the rest untouched."""
    final = path(directory, step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    tmp_sum = directory / f".{final.name}.sha256.tmp-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_synced(tmp, lambda f: torch.save(state, f))
        line = f"{_sha256(tmp)}  {final.name}\n".encode()
        _write_synced(tmp_sum, lambda f: f.write(line))
        os.replace(tmp_sum, checksum_path(final))
        os.replace(tmp, final)
        _fsync_dir(directory)
    except OSError as e:
        before = [p.name for p in checkpoints(directory) if p != final]
        what = errno.errorcode.get(e.errno, "") if e.errno else ""
        raise CheckpointWriteError(
            f"checkpoint.dir={directory}: writing {final.name} failed: {e.strerror or e}{f' ({what})' if what else ''}; "
            + (f"the newest checkpoint before it, {before[-1]}, is intact" if before else "no earlier checkpoint")) from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp_sum.unlink(missing_ok=True)
    others = [p for p in checkpoints(directory) if p != final]  # the one just written is always kept
    for old in others[:max(0, len(others) - (keep_last - 1))]:
        old.unlink(missing_ok=True)
        checksum_path(old).unlink(missing_ok=True)
    for orphan in directory.glob("step_*.pt.sha256"):  # a crash between the two renames
        if not orphan.with_suffix("").is_file():
            orphan.unlink(missing_ok=True)
    for shards in directory.glob("step_*.shards"):  # those whose checkpoint file is gone
        if not shards.with_suffix(".pt").exists():
            shutil.rmtree(shards, ignore_errors=True)
    # One writer per directory: any other temporary file is what a killed run left behind.
    for stale in directory.glob(".step_*.tmp-*"):
        stale.unlink(missing_ok=True)
    for stale in directory.glob(".step_*.shards.tmp"):  # this step's shards are renamed by now
        shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in directory by name, oldest first (temporary files and directories never match)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name) and p.is_file())


def _check_file(path: Path) -> None:
    """Refuse, with what it really is, a path that is not a complete checkpoint of ours."""
    if path.is_dir():
        raise ConfigError(f"checkpoint {path}: a directory, not a checkpoint file")
    if not path.exists():
        raise ConfigError(f"checkpoint {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ConfigError(f"checkpoint {path}: empty file (0 bytes), not a checkpoint")
    if head != _ZIP_MAGIC:
        raise ConfigError(f"checkpoint {path}: not a checkpoint (torch.save writes a zip archive; this file "
                          f"starts with {head!r})")
    sums = checksum_path(path)
    if sums.is_file():
        expected = sums.read_text().split()[:1]
        if expected != [_sha256(path)]:
            raise ConfigError(f"checkpoint {path}: corrupt, its SHA-256 differs from the one written with it "
                              f"({sums.name})")


def load(path: Path) -> dict[str, Any]:
    """Check the file (its checksum too), then torch.load with weights_only=True; any failure is a
    ConfigError naming the file and what is wrong."""
    _check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ConfigError(f"checkpoint {path}: refused, it holds pickled code or objects "
                              "(loading uses weights_only=True: tensors and plain data only)") from None
        raise ConfigError(f"checkpoint {path}: unreadable ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"checkpoint {path}: unreadable, truncated or corrupt ({str(e).splitlines()[0]})") from None


def latest(directory: Path, skipped: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in directory that loads, with its contents; None if there is none.
    Each file passed over is said through `skipped`, with why."""
    for path in reversed(checkpoints(directory)):
        try:
            return path, load(path)
        except ConfigError as e:
            skipped(f"skipping {e}")
    return None
