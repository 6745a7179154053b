"""A pretrained model's tokenizer, read from its folder with the `tokenizers` library: a
tokenizer.json (WordPiece, BPE, any), or a BERT's vocab.txt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from trainer.config import ConfigError
from trainer.data import tokens
from trainer.data.tokens import EOS_TOKENS


def load(folder: str | Path, max_len: int) -> Tokenizer | BertWordPieceTokenizer:
    """tokenizer.json if the folder has one (it carries its own lower-casing), else vocab.txt with
    do_lower_case from tokenizer_config.json (default true, as BERT's uncased models). Truncates
    to max_len tokens, special tokens included; never pads (batches are padded to their longest)."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # the tokenizers library raises plain Exceptions for bad files
            raise ConfigError(f"{folder / 'tokenizer.json'}: cannot read it ({' '.join(str(e).split())})") from None
    elif (folder / "vocab.txt").is_file():
        lower = True
        config = folder / "tokenizer_config.json"
        if config.is_file():
            lower = json.loads(config.read_text()).get("do_lower_case", True)
        tok = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=lower)
    else:
        raise ConfigError(f"data.tokenizer={folder}: no tokenizer.json or vocab.txt in it")
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    if not (folder / "tokenizer.json").is_file():
        for special in ("[CLS]", "[SEP]"):  # what BertWordPieceTokenizer wraps each record in
            if tok.token_to_id(special) is None:
                raise ConfigError(f"data.tokenizer={folder}: its vocab.txt has no {special} token")
    return tok


# Where transformers' tokenizers name their special tokens' roles (a later file wins), and BERT's
# names for a folder that names none (a vocab.txt, or a tokenizer.json alone).
ROLE_FILES = ("special_tokens_map.json", "tokenizer_config.json")
BERT_NAMES = {"pad": "[PAD]", "mask": "[MASK]"}


def special_ids(folder: str | Path, tok: Tokenizer | BertWordPieceTokenizer) -> dict[str, int | None]:
    """The ids of the pad, mask and end-of-sequence tokens (None where the tokenizer has none)."""
    folder = Path(folder)
    named: dict[str, str] = dict(BERT_NAMES)
    for name in ROLE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            roles = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        for role in ("pad", "mask", "eos"):
            value = roles.get(f"{role}_token") if isinstance(roles, dict) else None
            value = value.get("content") if isinstance(value, dict) else value  # an AddedToken, as older files wrote it
            if isinstance(value, str):
                named[role] = value
    ids = {role: tok.token_to_id(named[role]) if role in named else None for role in ("pad", "mask", "eos")}
    if ids["eos"] is None:  # a tokenizer.json alone (GPT-2's): its end-of-text token by name (not BERT's [SEP])
        ids["eos"] = tokens.document_end_id(tok, EOS_TOKENS[:-1])
    return ids


@dataclass
class Vocabulary:
    """A data source's tokenizer (None: the built-in bytes) and the special ids batches need."""

    tokenizer: Tokenizer | BertWordPieceTokenizer | None
    size: int
    pad_id: int
    mask_id: int | None
    eos_id: int | None


def vocabulary(folder: str | Path | None, seq_len: int) -> Vocabulary:
    """A folder's tokenizer truncating to seq_len (bytes when folder is None), with its special ids."""
    if not folder:
        return Vocabulary(None, tokens.BYTE_VOCAB_SIZE, tokens.PAD_ID, tokens.MASK_ID, tokens.EOS_ID)
    tok = load(folder, seq_len)
    ids = special_ids(folder, tok)
    pad = ids["pad"]
    if pad is None:
        if ids["eos"] is None:
            raise ConfigError(f"data.tokenizer={folder}: it names no pad token and no end-of-sequence "
                              "token to pad with (tokenizer_config.json's pad_token)")
        # GPT-2's tokenizer has no pad token; padding with its end-of-text token is the usual
        # choice (the attention mask hides it, and classifiers read the last real token).
        pad = ids["eos"]
    return Vocabulary(tok, tok.get_vocab_size(), pad, ids["mask"], ids["eos"])
