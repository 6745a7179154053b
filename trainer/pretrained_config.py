"""A Hugging Face-format folder's config.json: the model keys it fixes (model.pretrained).

Read before torch is imported, with the other config checks (trainer/preflight.py); the weights
are read when the model is built (trainer/models/pretrained.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.config import BERT_ACTIVATIONS, ConfigError

# config.json key -> model config key. Sizes must be there; the others default as transformers'
# BertConfig does (configs older releases wrote lack layer_norm_eps, for one).
_SIZES = {
    "num_hidden_layers": "num_layers",
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
}
_DEFAULTED = {  # key: (model config key, transformers' default)
    "max_position_embeddings": ("max_seq_len", 512),
    "type_vocab_size": ("type_vocab_size", 2),
    "layer_norm_eps": ("layer_norm_eps", 1e-12),
    "hidden_dropout_prob": ("dropout", 0.1),
    "attention_probs_dropout_prob": ("attention_dropout", 0.1),
    "classifier_dropout": ("classifier_dropout", None),  # None: the hidden dropout
    "hidden_act": ("hidden_act", "gelu"),
}

# config.json keys that change the math but have no model key: the values the native BERT computes
# (the first is transformers' default, used when the key is absent), and why another is refused.
_FIXED = {
    "position_embedding_type": (("absolute",), "the native BERT has learned absolute positions only"),
    "is_decoder": ((False,), "the native BERT is an encoder (bidirectional attention)"),
    "add_cross_attention": ((False,), "the native BERT has no cross-attention"),
    "tie_word_embeddings": ((True,), "the native BERT's masked-LM head is tied to the word embeddings"),
}
# Read by a classifier fine-tune only.
_FIXED_CLASSIFICATION = {
    "problem_type": ((None, "single_label_classification"),
                     "model=bert trains single-label classification (cross-entropy)"),
}


def folder_file(folder: Path, name: str, key: str = "model.pretrained") -> Path:
    """folder/name, or a ConfigError saying what such a folder holds."""
    path = folder / name
    if not path.is_file():
        raise ConfigError(f"{key}={folder}: no {name} in it (a Hugging Face-format folder: "
                          "config.json, model.safetensors or pytorch_model.bin, tokenizer.json or vocab.txt)")
    return path


def read_config(folder: str | Path, key: str = "model.pretrained") -> tuple[Path, dict[str, Any]]:
    """folder/config.json and what it holds, or a ConfigError naming the file."""
    path = folder_file(Path(folder), "config.json", key)
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return path, hf


def architecture(folder: str | Path, task: str = "mlm") -> dict[str, Any]:
    """The model config keys that config.json fixes; a ConfigError, naming the file and key, for a
    value that would change the math in a way the native BERT does not compute."""
    path, hf = read_config(folder)
    if hf.get("model_type", "bert") != "bert":
        raise ConfigError(f"{path}: model_type={hf['model_type']}, model=bert loads BERT checkpoints only")
    if hf.get("hidden_act", "gelu") not in BERT_ACTIVATIONS:
        raise ConfigError(f"{path}: hidden_act={json.dumps(hf['hidden_act'])}, refused: the native BERT computes "
                          f"{', '.join(BERT_ACTIVATIONS)}")
    fixed = {**_FIXED, **(_FIXED_CLASSIFICATION if task == "classification" else {})}
    for key, (values, why) in fixed.items():
        if hf.get(key, values[0]) not in values:
            raise ConfigError(f"{path}: {key}={json.dumps(hf[key])}, refused: {why}")
    missing = [k for k in _SIZES if k not in hf]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
    return {**{ours: hf[theirs] for theirs, ours in _SIZES.items()},
            **{ours: hf.get(theirs, default) for theirs, (ours, default) in _DEFAULTED.items()}}


# model=hf: the endings of transformers' class names in config.json's `architectures`, and the task
# each head trains.
HF_MODEL = "trainer.models.hf.HFModel"
_HEADS = (("ForCausalLM", "lm"), ("LMHeadModel", "lm"), ("ForMaskedLM", "mlm"), ("ForPreTraining", "mlm"),
          ("ForSequenceClassification", "classification"))
# Models whose position ids start after the pad id (RoBERTa's family): max_position_embeddings
# counts pad_token_id + 1 positions no token ever takes.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "longformer")


def hf_task_and_length(folder: str | Path, task: str) -> tuple[str, int | None, Path]:
    """model=hf: the task (`auto`: the head config.json names), the longest sequence its position
    embeddings take (None: not said), and config.json's path."""
    path, hf = read_config(folder, "model.path")
    if task == "auto":
        names = [a for a in hf.get("architectures") or [] if isinstance(a, str)]
        heads = {t for a in names for end, t in _HEADS if a.endswith(end)}
        if len(heads) != 1:
            raise ConfigError(f"task=auto: {path} names {', '.join(names) or 'no architectures'}, which says no one "
                              "task; set task=lm, task=mlm or task=classification")
        task = heads.pop()
    limit = hf.get("max_position_embeddings", hf.get("n_positions"))
    if isinstance(limit, int) and hf.get("model_type") in _OFFSET_POSITIONS:
        limit -= hf.get("pad_token_id", 1) + 1
    return task, limit if isinstance(limit, int) else None, path
