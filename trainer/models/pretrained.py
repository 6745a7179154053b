"""A Hugging Face-format BERT folder (config.json, model.safetensors) into trainer's native Bert.

Nothing is downloaded: the folder is on disk. config.json sets the architecture; the weights are
read with the safetensors library and renamed by the explicit map below, so any key that is
not understood is reported instead of silently dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from trainer.config import ConfigError
from trainer.pretrained_config import folder_file

# Hugging Face name (after the "bert." prefix is dropped) -> trainer's name. \1 is a layer index.
_NAMES = [
    (r"embeddings\.word_embeddings\.", "embeddings.word."),
    (r"embeddings\.position_embeddings\.", "embeddings.position."),
    (r"embeddings\.token_type_embeddings\.", "embeddings.token_type."),
    (r"embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.q."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.k."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.v."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.up."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.down."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.out_norm."),
    (r"pooler\.dense\.", "pooler."),
    (r"cls\.predictions\.transform\.dense\.", "mlm.dense."),
    (r"cls\.predictions\.transform\.LayerNorm\.", "mlm.norm."),
    (r"cls\.predictions\.bias$", "mlm.bias"),
    (r"classifier\.", "classifier."),
]
# In the file but not wanted: the decoder is tied to the word embeddings (same tensor); the NSP
# head is for pre-training only.
_IGNORED = re.compile(r"^cls\.predictions\.decoder\.(weight|bias)$|^cls\.seq_relationship\.")
# Ours, and new when the checkpoint has none: a task head.
_HEADS = re.compile(r"^(mlm|pooler|classifier)\.")


def _rename(name: str) -> str | None:
    name = name.removeprefix("bert.")
    for pattern, ours in _NAMES:
        if re.match(pattern, name):
            return re.sub(pattern, ours, name, count=1)
    return None


def load(model: nn.Module, folder: str | Path) -> list[str]:
    """Copy the folder's weights into model; return the head parameters that stay newly initialized.

    Unknown or missing encoder keys and shape mismatches are a ConfigError naming them.
    """
    path = folder_file(Path(folder), "model.safetensors")
    try:
        theirs = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ConfigError(f"{path}: cannot read it as safetensors ({' '.join(str(e).split())})") from None
    ours = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, tensor in theirs.items():
        new = _rename(name)
        if new is None:
            if not _IGNORED.search(name.removeprefix("bert.")):
                unexpected.append(name)
            continue
        if new in ours:
            renamed[new] = tensor
        elif not _HEADS.match(new):  # another task's head (a classifier in an MLM run): not used
            unexpected.append(name)
    missing = [k for k in ours if k not in renamed and not _HEADS.match(k)]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected)}"] if unexpected else [])
        raise ConfigError(f"{path}: does not fit model=bert: {'; '.join(parts)}")
    for name, tensor in renamed.items():
        if tensor.shape != ours[name].shape:
            raise ConfigError(f"{path}: parameter {name} has shape {list(tensor.shape)}, the model "
                              f"(from config.json) expects {list(ours[name].shape)}")
    model.load_state_dict(renamed, strict=False)
    return [k for k in ours if k not in renamed]
