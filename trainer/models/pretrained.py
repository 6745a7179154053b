"""A Hugging Face-format BERT folder (config.json and its weights) into trainer's native Bert.

Nothing is downloaded: the folder is on disk. config.json sets the architecture
(trainer/pretrained_config.py); the weights are read from model.safetensors (or the shards its
index names) or, from folders older transformers releases wrote, pytorch_model.bin with
torch.load(weights_only=True): tensors only, no code runs. Names are mapped by the explicit
table below, so any encoder key that is not understood is reported instead of silently dropped.

The layouts transformers writes are all accepted: BertModel (no prefix; sentence-transformers
folders too), BertForMaskedLM / BertForPreTraining / BertForSequenceClassification (`bert.` in
front of the encoder, `cls.predictions.*` or `classifier.*` beside it), and what older releases
added: the `embeddings.position_ids` buffer and TF-converted LayerNorm names (`gamma`, `beta`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from trainer.config import ConfigError
from trainer.pretrained_config import folder_file


def some(names: list[str], shown: int = 4) -> str:
    """A note's list of weight names: the first few, and how many more."""
    return ", ".join(names) if len(names) <= shown else f"{', '.join(names[:shown - 1])} and {len(names) - shown + 1} more"


# Hugging Face's name (BertModel's, without the "bert." prefix the task classes add) <-> trainer's;
# {i} is a layer index. One table, read both ways: loading a folder and exporting one.
NAMES = [
    ("embeddings.word_embeddings.", "embeddings.word."),
    ("embeddings.position_embeddings.", "embeddings.position."),
    ("embeddings.token_type_embeddings.", "embeddings.token_type."),
    ("embeddings.LayerNorm.", "embeddings.norm."),
    ("encoder.layer.{i}.attention.self.query.", "layers.{i}.q."),
    ("encoder.layer.{i}.attention.self.key.", "layers.{i}.k."),
    ("encoder.layer.{i}.attention.self.value.", "layers.{i}.v."),
    ("encoder.layer.{i}.attention.output.dense.", "layers.{i}.attn_out."),
    ("encoder.layer.{i}.attention.output.LayerNorm.", "layers.{i}.attn_norm."),
    ("encoder.layer.{i}.intermediate.dense.", "layers.{i}.up."),
    ("encoder.layer.{i}.output.dense.", "layers.{i}.down."),
    ("encoder.layer.{i}.output.LayerNorm.", "layers.{i}.out_norm."),
    ("pooler.dense.", "pooler."),
    ("cls.predictions.transform.dense.", "mlm.dense."),
    ("cls.predictions.transform.LayerNorm.", "mlm.norm."),
    ("cls.predictions.bias", "mlm.bias"),
    ("classifier.", "classifier."),
]
# The task classes (BertForMaskedLM, ...) keep the encoder and pooler under this prefix; heads beside it.
PREFIX = "bert."
_HEAD_NAMES = ("cls.", "classifier.")


def _translate(name: str, table: list[tuple[str, str]]) -> str | None:
    """name with the first matching (source, target) template pair's source part replaced."""
    for source, target in table:
        if m := re.match(re.escape(source).replace(re.escape("{i}"), r"(\d+)"), name):
            return (target.replace("{i}", m.group(1)) if m.groups() else target) + name[m.end():]
    return None


def ours(theirs: str) -> str | None:
    """trainer's name for a Hugging Face BERT parameter (prefix already dropped), or None."""
    return _translate(theirs, NAMES)


def theirs(ours: str) -> str:
    """The name transformers' BertFor* classes give trainer's parameter `ours`."""
    name = _translate(ours, [(o, t) for t, o in NAMES])
    if name is None:
        raise KeyError(f"{ours}: not a parameter of the native BERT")
    return name if name.startswith(_HEAD_NAMES) else PREFIX + name


# Buffers, not parameters: the positions 0..max-1 that older releases saved (and some with a
# token_type_ids buffer); the model computes both.
_BUFFERS = re.compile(r"^embeddings\.(position_ids|token_type_ids)$")
# Tied to the word embeddings (the same tensor; a separate decoder bias equals cls.predictions.bias).
_TIED = re.compile(r"^cls\.predictions\.decoder\.(weight|bias)$")
# Ours: a task head, newly initialized when the folder has none.
_HEADS = re.compile(r"^(mlm|pooler|classifier)\.")
# The encoder: every one of these keys must be understood.
_ENCODER = re.compile(r"^(embeddings|encoder)\.")


def _legacy(name: str) -> str:
    """Their name as today's transformers writes it: no `bert.` prefix, LayerNorm's weight/bias
    for the gamma/beta of checkpoints converted from the original TensorFlow release."""
    name = name.removeprefix(PREFIX)
    return re.sub(r"(LayerNorm)\.gamma$", r"\1.weight", re.sub(r"(LayerNorm)\.beta$", r"\1.bias", name))


def weights_file(folder: Path) -> Path:
    """The file transformers would read: model.safetensors, its shard index, or pytorch_model.bin."""
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return folder_file(folder, "model.safetensors")  # the error naming what such a folder holds


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor in the file (or in the shards an index names), read without running code."""
    try:
        if path.name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in read_weights(path.parent / shard).items()}
        if path.suffix == ".bin":
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
                raise ValueError("not a dict of tensors")
            return state
        from safetensors.torch import load_file

        return load_file(str(path))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: names a shard that is not there ({e.filename})") from None
    except Exception as e:  # safetensors and torch.load raise their own error types for a damaged file
        what = "a weights index" if path.name.endswith(".json") else (
            "a torch state dict (tensors only)" if path.suffix == ".bin" else "safetensors")
        raise ConfigError(f"{path}: cannot read it as {what} ({' '.join(str(e).split())[:200]})") from None


def load(model: nn.Module, folder: str | Path) -> tuple[list[str], list[str]]:
    """Copy the folder's weights into model. Return (ours that stay newly initialized: a task head
    the folder has not, theirs not used: another task's head).

    Unknown or missing encoder keys and shape mismatches are a ConfigError naming them.
    """
    path = weights_file(Path(folder))
    model_state = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    unexpected, unused = [], []
    for name, tensor in read_weights(path).items():
        legacy = _legacy(name)
        if _BUFFERS.match(legacy) or _TIED.match(legacy):
            continue
        new = ours(legacy)
        if new is not None and new in model_state:
            renamed[new] = tensor
        elif _ENCODER.match(legacy):
            unexpected.append(name)
        else:  # another task's head (a classifier in an MLM run, an NSP or QA head): not used
            unused.append(name)
    missing = [k for k in model_state if k not in renamed and not _HEADS.match(k)]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected)}"] if unexpected else [])
        raise ConfigError(f"{path}: does not fit model=bert: {'; '.join(parts)}")
    for name, tensor in renamed.items():
        if tensor.shape != model_state[name].shape:
            raise ConfigError(f"{path}: parameter {name} has shape {list(tensor.shape)}, the model "
                              f"(from config.json) expects {list(model_state[name].shape)}")
    model.load_state_dict(renamed, strict=False)
    return [k for k in model_state if k not in renamed], unused


def align_labels(model: nn.Module, folder: str | Path, names: list[str]) -> str | None:
    """Put a pretrained classifier's rows in the data's label order; return a note, if any.

    config.json's id2label says what each row means. The data's labels in another order: the
    rows are permuted to match (else the fine-tune would start from swapped classes). Other names
    than LABEL_0..: the rows stay by position, and the note says so."""
    try:
        mapping = json.loads((Path(folder) / "config.json").read_text()).get("id2label") or {}
        theirs = [str(mapping[str(i)]) for i in range(len(mapping))]
    except (KeyError, ValueError, AttributeError):
        return None
    if not theirs or theirs == names or all(re.fullmatch(r"LABEL_\d+", t) for t in theirs):
        return None
    if sorted(theirs) != sorted(names):
        return (f"model.pretrained: its classifier's labels ({', '.join(theirs)}) are not the data's "
                f"({', '.join(names)}); its rows are kept by position")
    order = torch.tensor([theirs.index(name) for name in names])
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order])
        model.classifier.bias.copy_(model.classifier.bias[order])
    return (f"model.pretrained: classifier rows reordered from config.json's id2label ({', '.join(theirs)}) "
            f"to the data's labels ({', '.join(names)})")
