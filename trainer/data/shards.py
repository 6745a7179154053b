"""`data=tokens`: a corpus `trainer prepare` tokenized, read where it lies, never loaded.

Windows of seq_len tokens are read from OUT/train.bin and OUT/val.bin with one positioned read
each (os.pread: no file position, so DataLoader workers can share the descriptor). Not through
a memory map: a map's pages count in the process's resident memory as they are touched, and the
kernel maps whole large folios around each fault (measured: ~770 KB of RSS per 256-byte window,
so a long run's RSS grows to the corpus size); read pages stay in the OS's page cache, outside
the process. The epoch order, each rank's share and the exact resume position are the batch
stream's (trainer/data/stream.py), as for every source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from trainer.config import ConfigError
from trainer.data import prepare


class TokenWindows(Dataset):
    """Non-overlapping windows of seq_len tokens of a flat token file, each read when asked for."""

    def __init__(self, path: Path, dtype: np.dtype, tokens: int, seq_len: int):
        self.path, self.dtype, self.tokens, self.seq_len = path, dtype, tokens, seq_len
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.tokens // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._fd is None:  # opened lazily: a DataLoader worker started by spawn opens its own
            self._fd = os.open(self.path, os.O_RDONLY)
        size = self.seq_len * self.dtype.itemsize
        raw = os.pread(self._fd, size, i * size)
        return {"input_ids": torch.from_numpy(np.frombuffer(raw, dtype=self.dtype).astype(np.int64))}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}


class TokenShards:
    """Train/eval windows from a dir `trainer prepare` wrote (train.bin, val.bin, meta.json)."""

    TASKS = ("lm",)
    lazy_order = True  # millions of windows: the epoch order is computed, not stored (data/stream.py)

    def __init__(self, *, dir: str, seq_len: int, **_loader_keys):
        folder = Path(dir)
        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            raise ConfigError(f"data.dir={dir}: no meta.json in it; make it with `trainer prepare 'FILES' --out {dir}`")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != prepare.FORMAT:
            raise ConfigError(f"{meta_file}: format {meta.get('format')}, this trainer reads format {prepare.FORMAT}")
        dtype = np.dtype(meta["dtype"])
        splits = {}
        for name in ("train", "val"):
            path, count = folder / f"{name}.bin", meta[name]["tokens"]
            size = path.stat().st_size if path.is_file() else -1
            if size != count * dtype.itemsize:
                raise ConfigError(f"{path}: {'missing' if size < 0 else f'{size} bytes'}, meta.json says {count} "
                                  f"{dtype.name} tokens ({count * dtype.itemsize} bytes); prepare it again")
            if count < seq_len:
                raise ConfigError(f"{path}: {count} tokens, fewer than data.seq_len={seq_len}")
            splits[name] = TokenWindows(path, dtype, count, seq_len)
        self.vocab_size = meta["vocab_size"]
        self.train, self.eval = splits["train"], splits["val"]
        self.notes = [f"data.dir: {meta['train']['tokens']:,} train and {meta['val']['tokens']:,} held-out tokens "
                      f"({meta['train']['documents']:,} and {meta['val']['documents']:,} documents; tokenizer "
                      f"{meta['tokenizer']}), read where they lie"]
