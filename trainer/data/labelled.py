"""Labelled (or unlabelled) text from a .jsonl or .csv file: classification, or masked-LM text.

Each record is tokenized on its own (a text, optionally a text pair), truncated to data.seq_len
tokens; batches are padded to their longest record (dynamic padding) with an attention mask.
Tokens come from the pretrained folder's tokenizer (data.tokenizer: a tokenizer.json or a BERT's
vocab.txt, its special tokens as the folder names them) or, without one, the built-in byte tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from trainer.config import ConfigError
from trainer.data import lines
from trainer.data import tokenizer as folder_tokenizer
from trainer.data import tokens


def read_records(path: Path, fields: list[str], key: str) -> list[dict[str, Any]]:
    """Records of a .jsonl (one JSON object per line) or .csv (with a header) file, each with fields;
    key is the config key that named the file, for the error messages."""
    if not path.is_file():
        raise ConfigError(f"{key}={path}: no such file")
    text = lines.read_text(path)
    if path.suffix == ".csv":
        rows = list(lines.csv_rows(text))
    else:
        rows = []
        for n, line in lines.json_lines(text):
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError:
                raise ConfigError(f"{path}:{n}: not valid JSON") from None
    for n, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{n}: not a JSON object")
        for field in fields:
            if field not in row:
                raise ConfigError(f"{path}:{n}: no '{field}' field")
            if row[field] is None or row[field] == "":
                raise ConfigError(f"{path}:{n}: '{field}' is {'null' if row[field] is None else 'empty'}")
    if not rows:
        raise ConfigError(f"{key}={path}: no records")
    return [row for _, row in rows]


class Records(Dataset):
    def __init__(self, items: list[dict[str, torch.Tensor]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


class PadCollate:
    """Stack a batch, padding each sequence to the batch's longest (a class, so workers can pickle it)."""

    PAD_VALUES = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in items[0]:
            if items[0][key].dim() == 0:  # a label
                batch[key] = torch.stack([it[key] for it in items])
                continue
            pad = self.PAD_VALUES[key] if self.PAD_VALUES[key] is not None else self.pad_id
            batch[key] = torch.nn.utils.rnn.pad_sequence([it[key] for it in items], batch_first=True,
                                                         padding_value=pad)
        return batch


class LabelledText:
    """Train/eval datasets from train_file (and eval_file, or the last val_fraction of train_file)."""

    TASKS = ("mlm", "classification")  # records, with labels or without

    def __init__(self, *, train_file: str, eval_file: str | None, text_field: str, text_pair_field: str | None,
                 label_field: str | None, tokenizer: str | None, seq_len: int, val_fraction: float,
                 seed: int = 0, **_loader_keys):
        fields = [f for f in (text_field, text_pair_field, label_field) if f]
        train = read_records(Path(train_file), fields, "data.train_file")
        if eval_file:
            held_out = read_records(Path(eval_file), fields, "data.eval_file")
        else:
            # A seeded shuffle before the split: labelled files are often sorted by label.
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
            n_eval = max(1, int(len(train) * val_fraction))
            train, held_out = [train[i] for i in order[n_eval:]], [train[i] for i in order[:n_eval]]
        if label_field:
            self.label_names = sorted({str(r[label_field]) for r in train})
            unknown = sorted({str(r[label_field]) for r in held_out} - set(self.label_names))
            if unknown:
                raise ConfigError(f"{eval_file or train_file}: eval labels never seen in training: {', '.join(unknown)}")
        self.num_labels = len(self.label_names) if label_field else None
        self.seq_len = seq_len
        vocab = folder_tokenizer.vocabulary(tokenizer, seq_len)
        self.tokenizer, self.vocab_size = vocab.tokenizer, vocab.size
        self.mask_token_id, self.pad_token_id = vocab.mask_id, vocab.pad_id
        self.collate = PadCollate(self.pad_token_id)
        self.fields = (text_field, text_pair_field, label_field)
        self.train, self.eval = Records(self._encode(train)), Records(self._encode(held_out))

    def _encode(self, records: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
        text_field, pair_field, label_field = self.fields
        texts = [str(r[text_field]) for r in records]
        pairs = [str(r[pair_field]) for r in records] if pair_field else None
        items = encode_records(self.tokenizer, self.seq_len, texts, pairs)
        if label_field:
            index = {name: i for i, name in enumerate(self.label_names)}
            for item, record in zip(items, records):
                item["labels"] = torch.tensor(index[str(record[label_field])])
        return items


def encode_records(tokenizer: Any, seq_len: int, texts: list[str], pairs: list[str] | None = None
                   ) -> list[dict[str, torch.Tensor]]:
    """Each text (and pair) as one record: ids, attention mask, token types, special-tokens mask.
    With a tokenizer: its own special tokens and truncation (set to seq_len when it was loaded);
    with bytes: [EOS] text ([EOS] pair), truncated to seq_len."""
    items = []
    if tokenizer is not None:
        encodings = tokenizer.encode_batch(list(zip(texts, pairs)) if pairs else texts)
        for e in encodings:
            items.append({"input_ids": torch.tensor(e.ids), "attention_mask": torch.tensor(e.attention_mask),
                          "token_type_ids": torch.tensor(e.type_ids),
                          "special_tokens_mask": torch.tensor(e.special_tokens_mask)})
        return items
    for i, text in enumerate(texts):
        # [EOS] first: position 0 is what the classifier pools, like BERT's [CLS].
        first = torch.cat([torch.tensor([tokens.EOS_ID]), tokens.encode(text)])
        ids = torch.cat([first, torch.tensor([tokens.EOS_ID]), tokens.encode(pairs[i])]) if pairs else first
        ids = ids[:seq_len]
        types = torch.zeros_like(ids)
        if pairs:
            types[len(first):] = 1
        special = (ids == tokens.EOS_ID).long()
        items.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": types,
                      "special_tokens_mask": special})
    return items
