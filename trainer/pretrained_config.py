"""A Hugging Face-format folder's config.json: the model keys it fixes (model.pretrained).

Read before torch is imported, with the other config checks (trainer/preflight.py); the weights
are read when the model is built (trainer/models/pretrained.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.config import ConfigError

# config.json key -> model config key
_ARCH = {
    "num_hidden_layers": "num_layers",
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_seq_len",
    "vocab_size": "vocab_size",
    "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_dropout_prob": "dropout",
}


def folder_file(folder: Path, name: str) -> Path:
    """folder/name, or a ConfigError saying what such a folder holds."""
    path = folder / name
    if not path.is_file():
        raise ConfigError(f"model.pretrained={folder}: no {name} in it (a Hugging Face-format folder: "
                          "config.json, model.safetensors, tokenizer.json or vocab.txt)")
    return path


def architecture(folder: str | Path) -> dict[str, Any]:
    """The model config keys that config.json fixes."""
    path = folder_file(Path(folder), "config.json")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if hf.get("model_type", "bert") != "bert":
        raise ConfigError(f"{path}: model_type={hf['model_type']}, model=bert loads BERT checkpoints only")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{path}: hidden_act={hf['hidden_act']}, the native BERT uses exact gelu")
    missing = [k for k in _ARCH if k not in hf]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
    return {ours: hf[theirs] for theirs, ours in _ARCH.items()}
