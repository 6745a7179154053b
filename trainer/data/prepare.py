"""`trainer prepare`: tokenize a corpus once into flat token files that `data=tokens` reads.

The layout is nanoGPT's: OUT/train.bin and OUT/val.bin are flat arrays of token ids (uint16
when the vocabulary fits, else uint32), documents separated by the tokenizer's end-of-document
id; OUT/meta.json says which tokenizer, which dtype and how many tokens and documents (np.memmap
opens the files as they are). Training reads windows where they lie (trainer/data/shards.py),
without loading the files.

Documents are what `data=text` calls one: a `.jsonl` line's text field, or a whole other file.
The held-out split is by document (a seeded hash of each document's number decides), never a
cut inside one. Everything streams: a `.jsonl` file line by line, another file in chunks cut at
line ends, tokens appended to the .bin files as they come, so memory stays bounded whatever the
corpus size. A run killed half-way leaves no meta.json, so nothing reads its files.

Tokenizers: the built-in bytes (no file needed), or a `tokenizer.json` (e.g. GPT-2's byte-level
BPE) through Hugging Face's `tokenizers` library, whose batch encoding uses every core.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from trainer.config import ConfigError
from trainer.data import tokens
from trainer.data.tokens import EOS_TOKENS

FORMAT = 1
CHUNK_CHARS = 1 << 20  # a plain-text file is read ~1 MB at a time, cut at a line end
BATCH_DOCS = 256  # texts (documents, or a long file's ~1 MB chunks) per call of the tokenizer, at most
BATCH_CHARS = 16 << 20  # and characters per call


@dataclass
class Tokenizer:
    """ids = encode_batch(texts); what meta.json records of it."""

    name: str
    vocab_size: int
    eos_id: int
    encode_batch: Callable[[list[str]], list[np.ndarray]]


def bytes_tokenizer() -> Tokenizer:
    def encode(texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint32) + tokens.FIRST_REGULAR_ID
                for t in texts]

    return Tokenizer("bytes", tokens.BYTE_VOCAB_SIZE, tokens.EOS_ID, encode)


def load_tokenizer(path: str | Path | None) -> Tokenizer:
    """The bytes tokenizer (path None), or a tokenizer.json (or a folder holding one)."""
    if path is None:
        return bytes_tokenizer()
    from tokenizers import Tokenizer as HFTokenizer

    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise ConfigError(f"--tokenizer {path}: no such file (a tokenizer.json, or a folder with one)")
    try:
        tok = HFTokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers library raises plain Exceptions for bad files
        raise ConfigError(f"--tokenizer {file}: cannot read it ({' '.join(str(e).split())[:200]})") from None
    tok.no_padding()
    tok.no_truncation()
    eos = tokens.document_end_id(tok)
    if eos is None:
        raise ConfigError(f"--tokenizer {file}: its vocabulary has no end-of-document token ({', '.join(EOS_TOKENS)})")

    # encode_batch_fast (tokenizers >= 0.20) skips the character offsets nobody here reads: ~1.5x
    batch = getattr(tok, "encode_batch_fast", tok.encode_batch)

    def encode(texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint32) for e in batch(texts, add_special_tokens=False)]

    return Tokenizer(str(file.resolve()), tok.get_vocab_size(), eos, encode)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def documents(path: Path, text_field: str, progress: Callable[[int], None]) -> Iterator[str]:
    """The file's documents, streamed; progress(bytes) as they are read."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        if path.suffix == ".jsonl":
            for n, line in enumerate(_lines(f), 1):
                progress(len(line.encode("utf-8")) + 1)
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)[text_field]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ConfigError(f"{path}:{n}: not a JSON object with a '{text_field}' field (--text-field)") from None
            return
        # One document, read in chunks, each cut where the tokens come out as for the whole text.
        rest = ""
        while chunk := f.read(CHUNK_CHARS):
            progress(len(chunk.encode("utf-8")))
            text = rest + chunk
            cut = _safe_cut(text)
            rest = text[cut:]
            if cut:
                yield text[:cut]
        if rest:
            yield rest
        yield ""  # the end of the document: prepare() writes the end-of-document id for it


def _safe_cut(text: str) -> int:
    """The last cut after a line end that a non-space character follows, or 0. There a byte-level
    BPE (GPT-2's pre-tokenizer pattern) splits the whole text too: a run of whitespace never spans
    it, and no token starts with a newline and goes on with a letter."""
    i = text.rfind("\n")
    while i >= 0 and (i + 1 == len(text) or text[i + 1].isspace()):
        i = text.rfind("\n", 0, i)
    return i + 1


def _lines(f) -> Iterator[str]:
    """JSON Lines split on "\\n" only, read a block at a time (not str.splitlines: U+2028 may be inside a string)."""
    rest = ""
    while block := f.read(CHUNK_CHARS):
        parts = (rest + block).split("\n")
        rest = parts.pop()
        yield from (p.removesuffix("\r") for p in parts)
    if rest:
        yield rest.removesuffix("\r")


@dataclass
class Split:
    """One .bin file being written: ids are gathered and appended ~4 M tokens at a time."""

    file: Path
    dtype: np.dtype
    tokens: int = 0  # written or pending
    documents: int = 0
    pending: list[np.ndarray] = field(default_factory=list)
    flushed: int = 0  # tokens already in the file

    def write(self, ids: np.ndarray) -> None:
        self.pending.append(ids)
        self.tokens += len(ids)
        if self.tokens - self.flushed > 1 << 22:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            with open(self.file, "ab") as f:
                np.concatenate(self.pending).astype(self.dtype).tofile(f)
            self.pending, self.flushed = [], self.tokens


def is_held_out(document: int, seed: int, val_fraction: float) -> bool:
    """A seeded hash of the document's number: the same split whatever the order of work."""
    digest = hashlib.blake2b(f"{seed}:{document}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def prepare(pattern: str, out: Path, tokenizer: str | None = None, text_field: str = "text",
            val_fraction: float = 0.01, seed: int = 0, quiet: bool = False) -> dict:
    """Tokenize the files matching pattern into out/{train,val}.bin and out/meta.json; return the meta."""
    from trainer.data.text import text_files

    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction {val_fraction}: must be in (0, 1)")
    if (out / "meta.json").exists():
        raise ConfigError(f"--out {out}: already prepared (it has meta.json); remove it or choose another dir")
    tok = load_tokenizer(tokenizer)
    files, skipped = text_files(pattern, "", sample=1 << 20)  # the first MB tells a binary file
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tok.vocab_size)
    splits = {name: Split(out / f"{name}.bin.tmp", dtype) for name in ("train", "val")}
    for s in splits.values():
        s.file.unlink(missing_ok=True)

    total = sum(p.stat().st_size for p in files)
    started = time.perf_counter()
    with _progress(total, quiet) as advance:
        document = 0  # the number of the document being written: its hash picks the split

        def emit(texts: list[str], ends: list[bool]) -> None:
            nonlocal document
            for ids, end in zip(tok.encode_batch(texts), ends):
                split = splits["val" if is_held_out(document, seed, val_fraction) else "train"]
                split.write(ids)
                if end:
                    split.write(np.asarray([tok.eos_id], dtype=np.uint32))
                    split.documents += 1
                    document += 1

        # A batch spans files: one encode_batch call is what the Rust tokenizer spreads over every
        # core, and a corpus of many small files would give it one document at a time otherwise.
        batch, ends, chars = [], [], 0
        for path in files:
            jsonl = path.suffix == ".jsonl"
            for text in documents(path, text_field, advance):
                batch.append(text)
                ends.append(jsonl or text == "")
                chars += len(text)
                if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
                    emit(batch, ends)
                    batch, ends, chars = [], [], 0
        if batch:
            emit(batch, ends)
    seconds = time.perf_counter() - started
    for s in splits.values():
        s.flush()
    if splits["val"].documents == 0 or splits["train"].documents == 0:
        for s in splits.values():
            s.file.unlink(missing_ok=True)
        held = "none" if splits["val"].documents == 0 else "all"
        raise ConfigError(f"--val-fraction {val_fraction} held out {held} of the {document} documents (a plain-text "
                          "file is one, a .jsonl line is one): the split is by document, choose a fraction that "
                          f"leaves some on each side (e.g. {min(0.5, max(0.05, 5 / max(document, 1))):.2g})")
    for name, s in splits.items():
        with open(s.file, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(s.file, out / f"{name}.bin")
    meta = {"format": FORMAT, "tokenizer": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
            "dtype": dtype.name, "seed": seed, "val_fraction": val_fraction, "text_field": text_field,
            "files": [str(p) for p in files], "skipped": skipped,
            "train": {"tokens": splits["train"].tokens, "documents": splits["train"].documents},
            "val": {"tokens": splits["val"].tokens, "documents": splits["val"].documents},
            "bytes": total, "seconds": round(seconds, 3)}
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "meta.json")  # last: a dir without it is not a prepared corpus
    return meta


class _progress:
    """A rich progress bar over the corpus' bytes (nothing when quiet or not a terminal)."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet = total, quiet

    def __enter__(self) -> Callable[[int], None]:
        if self.quiet:
            return lambda n: None
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        self.bar = Progress("tokenizing", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                            transient=True)
        self.bar.start()
        task = self.bar.add_task("", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.bar.stop()
