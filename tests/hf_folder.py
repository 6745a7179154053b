"""Test fixtures on disk, made here (nothing downloaded): a tiny random BERT in Hugging Face's
format, written by `transformers` itself, and a generated, learnable labelled text file."""

from __future__ import annotations

import json
import random
from pathlib import Path

FILLER = [f"w{i}" for i in range(40)]
WORDS = ["good", "bad", *FILLER]


def tiny_bert(folder: Path, *, vocab_txt_only: bool = False, seed: int = 0) -> Path:
    """A 2-layer BertForMaskedLM with a WordPiece vocabulary of the labelled file's words."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if not vocab_txt_only:
        # transformers' own conversion of vocab.txt into tokenizer.json (with a lower-casing normalizer)
        transformers.BertTokenizerFast.from_pretrained(folder, do_lower_case=True).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    return folder


def labelled_jsonl(path: Path, n: int = 400, seed: int = 0) -> Path:
    """Sentences of filler words with one of "good"/"bad" somewhere in them; the label says which."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            words = rng.choices(FILLER, k=rng.randint(3, 12))
            words.insert(rng.randint(0, len(words)), "good" if label == "pos" else "bad")
            f.write(json.dumps({"text": " ".join(words).upper(), "label": label}) + "\n")
    return path
