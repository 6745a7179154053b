"""Every check of a composed config that needs neither torch nor the data: unknown keys, ranges,
rules across groups, a pretrained folder's config.json (model.pretrained, model.path), the device.

`trainer train` runs it before torch is imported, so a bad config costs a fraction of a second;
`build` runs it again (it is cheap and idempotent) for callers that build directly.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig

from trainer import capabilities, pretrained_config
from trainer.config import ConfigError, check_keys, validate

# Hugging Face datasets name a classification dataset's label column "label".
DEFAULT_LABEL_FIELD = "label"
_DROPOUTS = ("dropout", "attention_dropout", "classifier_dropout")
NO_GPU = "trainer.device=cuda: no CUDA GPU is available here; use trainer.device=cpu or auto"


def check(cfg: DictConfig, command_line: Iterable[str] = ()) -> list[str]:
    """Check cfg, filling in what the config leaves to the data or the pretrained folder; raise
    ConfigError naming the key or file. Returns notes for the user (what was filled in and why).

    command_line: the overrides the user typed, to tell a value they chose from a default."""
    notes: list[str] = []
    check_keys(cfg)
    typed = _typed(command_line)
    pretrained = cfg.model.get("pretrained")
    if pretrained:  # its config.json fixes the architecture, recorded in config.yaml and checkpoints
        keys = pretrained_config.architecture(pretrained, cfg.task)
        # dropout is a training choice: the command line's wins, as from_pretrained(hidden_dropout_prob=...)
        cfg.model.update({k: v for k, v in keys.items() if f"model.{k}" not in typed or k not in _DROPOUTS})
        notes += _fit_seq_len(cfg, Path(pretrained) / "config.json", typed, cfg.model.max_seq_len, "model.pretrained")
    if cfg.model.get("_target_") == pretrained_config.HF_MODEL:
        if importlib.util.find_spec("transformers") is None:
            raise ConfigError("model=hf needs transformers: pip install 'trainer[hf]'")
        task, limit, source = pretrained_config.hf_task_and_length(cfg.model.path, cfg.task)
        if cfg.task == "auto":
            cfg.task = task  # model.task follows; config.yaml records what was trained
            notes.append(f"task={task}: the head {source} names (set task for another)")
        if limit:
            notes += _fit_seq_len(cfg, source, typed, limit, "model.path")
    if cfg.task == "classification" and "label_field" in cfg.data and not cfg.data.label_field:
        cfg.data.label_field = DEFAULT_LABEL_FIELD
        notes.append(f"data.label_field={DEFAULT_LABEL_FIELD} (task=classification; the Hugging Face datasets "
                     "convention): set data.label_field for another field")
    if cfg.log.get("mlflow") and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("log.mlflow=true needs mlflow: pip install 'trainer[mlflow]'")
    validate(cfg)
    capabilities.check(cfg, imported=False)
    check_device(cfg.trainer.device.name)
    return notes


def _typed(command_line: Iterable[str]) -> set[str]:
    """The keys the user set on the command line (key=value, +key=value, ++key=value)."""
    return {o.lstrip("+~").partition("=")[0] for o in command_line}


def _fit_seq_len(cfg: DictConfig, source: Path, typed: set[str], limit: int, key: str) -> list[str]:
    """data.seq_len at most the folder's max_position_embeddings (limit): lowered if it is the
    group's default, refused (naming config.json) if the user typed it."""
    seq_len = cfg.data.get("seq_len")
    if seq_len is None or seq_len <= limit:
        return []
    if "data.seq_len" in typed:
        raise ConfigError(f"data.seq_len={seq_len} is longer than max_position_embeddings={limit} in {source} "
                          f"({key})")
    cfg.data.seq_len = limit
    return [f"data.seq_len={limit}: max_position_embeddings in {source} (the default, {seq_len}, is longer)"]


def check_device(name: str) -> None:
    """trainer.device=cuda on a machine that has no GPU driver at all; whether torch can use the
    GPU is asked when the run is built (trainer.build.resolve_device)."""
    linux_without_driver = sys.platform.startswith("linux") and not any(
        Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/kfd"))  # NVIDIA's driver, or ROCm's
    if name == "cuda" and (sys.platform == "darwin" or linux_without_driver):
        raise ConfigError(NO_GPU)
