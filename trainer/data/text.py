"""Text files (plain text or .jsonl) as a byte-level token stream, cut into fixed-length windows."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from trainer.config import ConfigError
from trainer.data import lines, tokens


class Windows(Dataset):
    """Non-overlapping windows of seq_len tokens over one long token stream."""

    def __init__(self, stream: torch.Tensor, seq_len: int):
        self.stream = stream
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.stream) // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.stream[i * self.seq_len:(i + 1) * self.seq_len]}


def not_text(data: bytes) -> str | None:
    """Why these bytes are not text (NUL bytes, or over 1% not UTF-8), or None if they are."""
    if b"\x00" in data:
        return "binary (it has NUL bytes)"
    bad = data.decode("utf-8", errors="replace").count("\ufffd")
    if bad > max(8, len(data) // 100):
        return f"not UTF-8 text ({bad} undecodable bytes)"
    return None


def text_files(pattern: str, key: str, sample: int = -1) -> tuple[list[Path], list[str]]:
    """The files a glob matches that are text (not_text on their first `sample` bytes, -1: all),
    and a line for each one skipped. A folder, or no (text) file, is a ConfigError that starts
    with `key` (the option that named the glob, e.g. "data.files=")."""
    if Path(pattern).is_dir():
        raise ConfigError(f"{key}{pattern}: a directory; give a glob of its files, e.g. "
                          f"{key}'{pattern.rstrip('/')}/**/*.txt'")
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not paths:
        raise ConfigError(f"{key}{pattern}: matches no file")
    texts, skipped, first = [], [], ""
    for path in paths:
        with open(path, "rb") as f:
            why = not_text(f.read(sample))
        if why:
            skipped.append(f"skipped {path}: {why}")
            first = first or why
        else:
            texts.append(path)
    if not texts:
        raise ConfigError(f"{key}{pattern}: matches no text file ({first}, ...)")
    return texts, skipped


def read_documents(path: Path, text_field: str) -> list[str]:
    """A .jsonl file gives one document per line (its text_field); any other file is one document."""
    try:
        text = lines.read_text(path)
    except OSError as e:
        raise ConfigError(f"data.files: cannot read {path}: {e.strerror}") from None
    if path.suffix != ".jsonl":
        return [text]
    docs = []
    for n, line in lines.json_lines(text):
        try:
            docs.append(json.loads(line)[text_field])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"{path}:{n}: not a JSON object with a '{text_field}' field (data.text_field)") from None
    return docs


class TextData:
    """Train/eval datasets from the files matching a glob; the last val_fraction of the stream is held out."""

    vocab_size = tokens.BYTE_VOCAB_SIZE
    TASKS = ("lm", "mlm")  # one token stream, cut into windows

    def __init__(self, *, files: str, seq_len: int, text_field: str, val_fraction: float, **_loader_keys):
        paths, skipped = text_files(files, "data.files=")
        self.notes = [f"data.files: {line}" for line in skipped]  # what the run says at start-up
        parts = []
        for path in paths:
            for doc in read_documents(path, text_field):
                parts += [tokens.encode(doc), torch.tensor([tokens.EOS_ID])]
        stream = torch.cat(parts)
        n_eval = int(len(stream) * val_fraction)
        if len(stream) - n_eval < seq_len or n_eval < seq_len:
            raise ConfigError(
                f"data.files={files}: only {len(stream)} tokens, too few for train and eval windows "
                f"of data.seq_len={seq_len} (data.val_fraction={val_fraction})"
            )
        self.num_files = len(paths)
        self.num_tokens = len(stream)
        self.train = Windows(stream[: len(stream) - n_eval], seq_len)
        self.eval = Windows(stream[len(stream) - n_eval:], seq_len)
