"""A pretrained model's WordPiece tokenizer, read from its folder with the `tokenizers` library."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from trainer.config import ConfigError


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
    for special in ("[PAD]", "[MASK]", "[CLS]", "[SEP]"):
        if tok.token_to_id(special) is None:
            raise ConfigError(f"data.tokenizer={folder}: its vocabulary has no {special} token")
    return tok
