"""`trainer export RUN_DIR`: the newest checkpoint's weights as a folder other tools load.

A BERT run becomes a Hugging Face folder that transformers loads as it is
(`AutoModelForMaskedLM` / `AutoModelForSequenceClassification.from_pretrained(folder)`):
transformers' parameter names (trainer/models/pretrained.py's table, read the other way), its
config.json keys with the real label names as id2label, and the run's tokenizer files. Such a
folder is also what `model.pretrained` reads, so an export fine-tunes further.

A model=hf run is written by transformers' own save_pretrained, with the data's label names and
the tokenizer files.

Any other model (the GPT, a user's own class) is written as trainer names it: model.safetensors
with the state dict's own names, and config.json holding the model config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from safetensors.torch import save_file

from trainer.checkpointing import checkpoint
from trainer.config import ConfigError
from trainer.pretrained_config import HF_MODEL

BERT = "trainer.models.Bert"
# A tokenizer as transformers' AutoTokenizer reads it (vocab.json and merges.txt: GPT-2's and RoBERTa's own files).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
LABELS_NOTE = ("id2label: LABEL_0.. (this checkpoint predates label names in checkpoints; the labels are the "
               "data's, sorted)")


def checkpoint_weights(path: Path, state: dict) -> dict:
    """The checkpoint's weights; an FSDP checkpoint's shards are joined (read without running code)."""
    shards_dir = checkpoint.shards_dir(path, state)
    if shards_dir is None:
        return state["model"]
    if (state.get("config") or {}).get("strategy", {}).get("kind") != "fsdp":
        raise ConfigError(f"checkpoint {path}: refused, it points at FSDP shards but was not written by an FSDP run")
    from trainer.checkpointing import shards

    return shards.join_weights(shards_dir)


def export(run_dir: Path, out: Path | None = None) -> tuple[Path, list[str]]:
    """Write out/model.safetensors and out/config.json (out defaults to RUN_DIR/export), and for a
    BERT the tokenizer files; return out and notes for the user."""
    cfg_file = run_dir / "config.yaml"
    if not run_dir.exists():
        raise ConfigError(f"{run_dir}: no such directory")
    if not cfg_file.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    ckpt_dir = OmegaConf.load(cfg_file).checkpoint.dir or run_dir / "checkpoints"
    files = checkpoint.checkpoints(Path(ckpt_dir))
    if not files:
        raise ConfigError(f"{run_dir}: no checkpoint in {ckpt_dir}")
    path = files[-1]  # the newest, as it is: a bad one is refused, not passed over for an older one
    state = checkpoint.load(path)
    out = out or run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in checkpoint_weights(path, state).items()}
    model_cfg = state["config"]["model"]
    origin = {"step": state["step"], "checkpoint": str(path)}
    notes: list[str] = []
    if model_cfg.get("_target_") == HF_MODEL:
        from trainer.models import hf

        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        hf.save_pretrained(model_cfg, weights, state.get("labels"), out, {**origin, "model": model_cfg})
        if model_cfg["task"] == "classification" and not state.get("labels"):
            notes.append(LABELS_NOTE)
        # what save_pretrained wrote (its files vary: shards, generation_config.json), not what --out held
        written = [p.name for p in out.iterdir() if before.get(p.name) != p.stat().st_mtime_ns]
        _readable(out, [*written, *_copy_tokenizer(state["config"], out, notes)], path)
        return out, notes
    if model_cfg.get("_target_") == BERT:
        from trainer.models import pretrained

        weights = {pretrained.theirs(k): v for k, v in weights.items()}
        config = _bert_config(model_cfg, state, notes)
        written = _copy_tokenizer(state["config"], out, notes)
        config["trainer"] = {**origin, "model": model_cfg}
    else:
        config, written = {**model_cfg, **origin}, []
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt", "step": str(state["step"])})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _readable(out, ["model.safetensors", "config.json", *written], path)
    return out, notes


def _readable(out: Path, names: list[str], checkpoint_file: Path) -> None:
    """safetensors writes 0600: the export is readable by whoever can read the checkpoint."""
    for name in set(names):
        (out / name).chmod(checkpoint_file.stat().st_mode & 0o777)


def _bert_config(model: dict[str, Any], state: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """transformers' BertConfig keys for the native BERT's model config."""
    classify = model["task"] == "classification"
    config = {
        "architectures": ["BertForSequenceClassification" if classify else "BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": model["vocab_size"],
        "hidden_size": model["hidden_size"],
        "num_hidden_layers": model["num_layers"],
        "num_attention_heads": model["num_heads"],
        "intermediate_size": model["intermediate_size"],
        "hidden_act": model.get("hidden_act", "gelu"),
        "hidden_dropout_prob": model["dropout"],
        "attention_probs_dropout_prob": _or(model.get("attention_dropout"), model["dropout"]),
        "classifier_dropout": model.get("classifier_dropout"),
        "max_position_embeddings": model["max_seq_len"],
        "type_vocab_size": model["type_vocab_size"],
        "layer_norm_eps": model["layer_norm_eps"],
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }
    if classify:
        names = state.get("labels")
        if not names:  # written before checkpoints held the label names
            names = [f"LABEL_{i}" for i in range(model["num_labels"])]
            notes.append(LABELS_NOTE)
        config.update(id2label={str(i): name for i, name in enumerate(names)},
                      label2id={name: i for i, name in enumerate(names)}, problem_type="single_label_classification")
    return config


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _tokenizer_dir(data: dict[str, Any]) -> str | None:
    """Where the run's tokenizer files are: data.tokenizer (by default the model's folder), or for
    data=tokens the folder of the tokenizer.json `trainer prepare` used (its meta.json says)."""
    if data.get("tokenizer"):
        return data["tokenizer"]
    meta = Path(data["dir"]) / "meta.json" if data.get("dir") else None
    if meta and meta.is_file():
        used = json.loads(meta.read_text()).get("tokenizer")
        return str(Path(used).parent) if used and used != "bytes" else None
    return None


def _copy_tokenizer(run_config: dict[str, Any], out: Path, notes: list[str]) -> list[str]:
    """The run's tokenizer files into out."""
    source = _tokenizer_dir(run_config.get("data") or {})
    if not source:
        notes.append("no tokenizer files: the run used trainer's byte tokenizer (token id = byte + 3), "
                     "which transformers does not have")
        return []
    copied = [name for name in TOKENIZER_FILES if (Path(source) / name).is_file()]
    for name in copied:
        shutil.copyfile(Path(source) / name, out / name)
    if not copied:
        notes.append(f"no tokenizer files: {source} has none now")
    return copied
