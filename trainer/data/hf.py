"""data=hf: a dataset on disk, read with Hugging Face `datasets` (the `hf` extra), never downloaded.

data.path is a folder `save_to_disk` wrote (a Dataset, or a DatasetDict with its splits), or data
files: parquet, JSON Lines, CSV or Arrow (a glob, by suffix). `datasets` keeps them as Arrow files
it memory-maps, and tokenizing writes Arrow files too (Dataset.map, cached in its cache dir), so a
dataset larger than memory trains without being loaded.

Two shapes, by data.label_field:
- set (classification): one record per row, tokenized on its own as data=jsonl does (the same
  tokenizer, special tokens and padding); labels are a ClassLabel's names in its order, else the
  label values sorted;
- not set (lm, mlm): the text field of every row tokenized and joined into one token stream,
  documents separated by the tokenizer's end-of-sequence token, cut into data.seq_len windows
  (the standard `group_texts` of transformers' run_clm), as data=text does with files.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from trainer import distributed
from trainer.config import ConfigError
from trainer.data import tokenizer as folder_tokenizer
from trainer.data import tokens
from trainer.data.labelled import PadCollate, encode_records

# data files `datasets` reads, by suffix, and the builder that reads them
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}
MAP_BATCH = 1000  # rows per tokenizer call
CACHE_FORMAT = 1  # in the tokenized copies' names: bump when what they hold changes


def _datasets():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only: nothing reaches the network
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ConfigError("data=hf needs datasets: pip install 'trainer[hf]'") from None
    datasets.disable_progress_bars()  # the terminal belongs to trainer's display
    return datasets


def load_split(path: str, split: str | None, key: str):
    """(a Dataset, the other splits' names) from a save_to_disk folder or data files."""
    datasets = _datasets()
    p = Path(path)
    if p.is_dir() and any((p / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(p))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError(f"{key}={path}: no split '{split}' (it has {', '.join(loaded)})")
            return loaded[split], [s for s in loaded if s != split]
        return loaded, []
    files = sorted(glob.glob(path, recursive=True))
    if not files:
        raise ConfigError(f"{key}={path}: no such file or save_to_disk folder")
    suffixes = {Path(f).suffix for f in files}
    if len(suffixes) != 1 or (builder := BUILDERS.get(suffixes.pop())) is None:
        raise ConfigError(f"{key}={path}: files of one kind, {', '.join(BUILDERS)} (found "
                          f"{', '.join(sorted({Path(f).suffix or Path(f).name for f in files}))})")
    try:
        return datasets.load_dataset(builder, data_files=files, split="train"), []
    except Exception as e:  # datasets raises its own and pyarrow's errors for unreadable files
        raise ConfigError(f"{key}={path}: {' '.join(str(e).split())[:300]}") from None


class Rows(Dataset):
    """A tokenized datasets.Dataset as torch tensors, row by row (read from its memory-mapped Arrow file)."""

    def __init__(self, ds):
        self.ds = ds.with_format("torch")

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.ds[int(i)]


class HFData:
    TASKS = ("lm", "mlm", "classification")

    def __init__(self, *, path: str, eval_path: str | None, split: str, eval_split: str | None, text_field: str,
                 text_pair_field: str | None, label_field: str | None, tokenizer: str | None, seq_len: int,
                 val_fraction: float, seed: int = 0, **_loader_keys):
        train, others = load_split(path, split, "data.path")
        if eval_path:
            held_out, _ = load_split(eval_path, eval_split or split, "data.eval_path")
        elif eval_split or (eval_split := next((s for s in ("validation", "test") if s in others), None)):
            held_out, _ = load_split(path, eval_split, "data.eval_split")
        else:  # a seeded split of the training rows
            parts = train.train_test_split(test_size=val_fraction, seed=seed)
            train, held_out = parts["train"], parts["test"]
        for ds, key in ((train, "data.path"), (held_out, "data.eval_path" if eval_path else "data.path")):
            for field in (text_field, text_pair_field, label_field):
                if field and field not in ds.column_names:
                    raise ConfigError(f"{key}: no '{field}' column (it has {', '.join(ds.column_names)})")
        self.seq_len, self.fields = seq_len, (text_field, text_pair_field, label_field)
        self._tokenizer_source = tokenizer
        self._tokenizer_digest = _digest(tokenizer)
        vocab = folder_tokenizer.vocabulary(tokenizer, seq_len)
        self.tokenizer, self.vocab_size, self.eos_id = vocab.tokenizer, vocab.size, vocab.eos_id
        self.mask_token_id, self.pad_token_id = vocab.mask_id, vocab.pad_id
        if label_field:
            self.label_names, index = _labels(train, label_field)
            unknown = sorted({str(v) for v in held_out.unique(label_field)} - set(index)) if index else []
            if unknown:
                raise ConfigError(f"data.path: eval labels never seen in training: {', '.join(unknown)}")
            self.num_labels = len(self.label_names)
            self.collate = PadCollate(self.pad_token_id)
        else:
            self.num_labels, index = None, None
        with distributed.main_first():  # rank 0 tokenizes into datasets' cache; the others read it
            if label_field:
                self.train, self.eval = (Rows(self._records(ds, index)) for ds in (train, held_out))
            else:
                self.train, self.eval = (Rows(self._windows(ds)) for ds in (train, held_out))
        if len(self.eval) == 0:
            raise ConfigError(f"data.seq_len={seq_len}: the held-out rows make no full window; lower it or hold out more")
        self.notes = [f"data.path: {len(train):,} training and {len(held_out):,} held-out rows read with datasets "
                      f"(memory-mapped Arrow); {len(self.train):,} training " + ("records" if label_field else
                      f"windows of {seq_len} tokens")]

    def _fingerprint(self, ds, what: str) -> str:
        """A name for the tokenized copy: the rows, the tokenizer's files, the settings."""
        key = f"{CACHE_FORMAT}|{ds._fingerprint}|{what}|{self.seq_len}|{self.fields}|{self._tokenizer_digest}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _document_ids(self, texts: list[str]) -> list[list[int]]:
        """Each document's ids, without special tokens (bytes, or the tokenizer's)."""
        if self.tokenizer is None:
            return [tokens.encode(t).tolist() for t in texts]
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _records(self, ds, index: dict[str, int] | None):
        """One tokenized record per row, as data=jsonl makes them, and its label's id."""
        text_field, pair_field, label_field = self.fields

        def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            pairs = [str(t) for t in batch[pair_field]] if pair_field else None
            items = encode_records(self.tokenizer, self.seq_len, [str(t) for t in batch[text_field]], pairs)
            out = {k: [it[k].tolist() for it in items] for k in items[0]}
            out["labels"] = [index[str(v)] for v in batch[label_field]] if index else list(batch[label_field])
            return out

        return ds.map(encode, batched=True, batch_size=MAP_BATCH, remove_columns=ds.column_names,
                      cache_file_name=self._cache(ds, "records"))

    def _windows(self, ds):
        """The text field of every row as one token stream, cut into seq_len windows."""
        text_field, size, eos = self.fields[0], self.seq_len, self.eos_id
        if eos is None and self.tokenizer is not None:
            eos = tokens.document_end_id(self.tokenizer)  # BERT's [SEP]: what its pretraining put between texts
        if eos is None:
            raise ConfigError(f"data.tokenizer={self._tokenizer_source}: no end-of-sequence token to end each document with")

        def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            return {"ids": [ids + [eos] for ids in self._document_ids([str(t) for t in batch[text_field]])]}

        def group(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            stream = [i for ids in batch["ids"] for i in ids]  # a batch's remainder is dropped, as run_clm does
            return {"input_ids": [stream[i:i + size] for i in range(0, len(stream) - size + 1, size)]}

        encoded = ds.map(encode, batched=True, batch_size=MAP_BATCH, remove_columns=ds.column_names,
                         cache_file_name=self._cache(ds, "ids"))
        return encoded.map(group, batched=True, batch_size=MAP_BATCH, remove_columns=["ids"],
                           cache_file_name=self._cache(ds, "windows"))

    def _cache(self, ds, what: str) -> str:
        """Datasets' own cache dir, not beside the user's files (a save_to_disk folder may be read-only)."""
        import datasets

        folder = Path(datasets.config.HF_DATASETS_CACHE) / "trainer"
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder / f"{what}-{self._fingerprint(ds, what)}.arrow")


def _digest(folder: str | None) -> str:
    """The tokenizer's files, hashed (bytes: no files)."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.txt", *folder_tokenizer.ROLE_FILES) if folder else ():
        f = Path(folder) / name
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def _labels(ds, field: str) -> tuple[list[str], dict[str, int] | None]:
    """A ClassLabel's names in its own order (the rows hold their ids already), else the values sorted."""
    feature = ds.features[field]
    names = getattr(feature, "names", None)
    if names:
        return list(names), None
    values = sorted({str(v) for v in ds.unique(field)})
    return values, {name: i for i, name in enumerate(values)}
