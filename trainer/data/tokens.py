"""The built-in byte-level tokenizer: UTF-8 bytes shifted past a few special ids. Needs no download."""

from __future__ import annotations

import torch

PAD_ID = 0
MASK_ID = 1
EOS_ID = 2  # separates documents in a token stream
FIRST_REGULAR_ID = 3
BYTE_VOCAB_SIZE = FIRST_REGULAR_ID + 256
# Other tokenizers' end-of-document tokens, in the order they are looked for in a vocabulary.
EOS_TOKENS = ("<|endoftext|>", "</s>", "<eos>", "[SEP]")


def document_end_id(tok, names: tuple[str, ...] = EOS_TOKENS) -> int | None:
    """The id of the first of names in a tokenizers-library tokenizer's vocabulary (None: none is)."""
    return next((i for name in names if (i := tok.token_to_id(name)) is not None), None)


def encode(text: str) -> torch.Tensor:
    """Token ids (int64) of text's UTF-8 bytes."""
    raw = text.encode("utf-8")
    if not raw:
        return torch.empty(0, dtype=torch.long)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).long() + FIRST_REGULAR_ID


def decode(ids: torch.Tensor) -> str:
    """Inverse of encode; special ids are dropped."""
    data = bytes((i - FIRST_REGULAR_ID) for i in ids.tolist() if i >= FIRST_REGULAR_ID)
    return data.decode("utf-8", errors="replace")
