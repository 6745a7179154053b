"""Config schema: one dataclass per config group option, registered with Hydra's ConfigStore.

The dataclasses hold types and allowed ranges; the YAML files in conf/ hold the default
values and extend these schemas, so a typo in a key or a value of the wrong type fails at
composition, before anything is built. Ranges that a type cannot express (``max_norm > 0``)
are declared in field metadata and checked by ``validate`` right after composition, with
the full key in the message.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class ConfigError(ValueError):
    """A user-facing error: bad config or input. Reported as one line, no traceback."""


def _checked(ok: Callable[[Any], bool], why: str) -> Any:
    """A required field whose value must satisfy ok(); its default lives in the YAML."""
    return field(default=MISSING, metadata={"check": (ok, why)})


def _positive() -> Any:
    return _checked(lambda v: v > 0, "must be > 0")


def _non_negative() -> Any:
    return _checked(lambda v: v >= 0, "must be >= 0")


def _fraction() -> Any:
    return _checked(lambda v: 0 <= v < 1, "must be in [0, 1)")


def _open_unit() -> Any:
    return _checked(lambda v: 0 < v < 1, "must be in (0, 1)")


# ---------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """Keys every model gets as keyword arguments (a `_target_` model too)."""

    _target_: str = MISSING
    num_layers: int = _positive()
    hidden_size: int = _positive()
    num_heads: int = _positive()
    intermediate_size: int = _positive()
    dropout: float = _fraction()
    max_seq_len: int = _positive()
    # None: the data's vocabulary size (the tokenizer decides it).
    vocab_size: Optional[int] = _positive()


@dataclass
class BertConfig(ModelConfig):
    _target_: str = MISSING
    mask_prob: float = _open_unit()
    task: str = MISSING  # the top-level task (mlm for auto)
    # A Hugging Face-format folder: its config.json sets the architecture, its weights are loaded.
    pretrained: Optional[str] = MISSING
    type_vocab_size: int = _positive()
    layer_norm_eps: float = _positive()
    # None: from the data (its tokenizer's [MASK]; its number of labels).
    mask_token_id: Optional[int] = _non_negative()
    num_labels: Optional[int] = _checked(lambda v: v >= 2, "must be >= 2")


# ---------------------------------------------------------------- data
@dataclass
class DataConfig:
    _target_: str = MISSING
    batch_size: int = _positive()
    seq_len: int = _positive()
    num_workers: int = _non_negative()
    # None: pin host memory when training on CUDA.
    pin_memory: Optional[bool] = MISSING


@dataclass
class SyntheticDataConfig(DataConfig):
    _target_: str = MISSING
    vocab_size: int = _checked(lambda v: v > 3, "must be > 3")
    num_samples: int = _positive()
    eval_samples: int = _positive()
    noise: float = _fraction()


@dataclass
class TextDataConfig(DataConfig):
    _target_: str = MISSING
    # A glob; '**' recurses. The default is the Python standard library's own source.
    files: str = MISSING
    # For .jsonl files: the field holding the text.
    text_field: str = MISSING
    val_fraction: float = _open_unit()


@dataclass
class LabelledDataConfig(DataConfig):
    _target_: str = MISSING
    train_file: str = MISSING
    eval_file: Optional[str] = MISSING  # None: hold out val_fraction of train_file
    text_field: str = MISSING
    text_pair_field: Optional[str] = MISSING
    label_field: Optional[str] = MISSING  # None: unlabelled text (task=mlm)
    # A folder with tokenizer.json or vocab.txt; None: the byte tokenizer. Default: model.pretrained.
    tokenizer: Optional[str] = MISSING
    val_fraction: float = _open_unit()


# ---------------------------------------------------------------- optim / sched
@dataclass
class AdamWConfig:
    _target_: str = MISSING
    lr: float = _positive()
    weight_decay: float = _non_negative()
    betas: List[float] = MISSING
    eps: float = _positive()
    fused: bool = MISSING


@dataclass
class SGDConfig:
    _target_: str = MISSING
    lr: float = _positive()
    momentum: float = _fraction()
    weight_decay: float = _non_negative()
    nesterov: bool = MISSING
    fused: bool = MISSING


@dataclass
class CosineConfig:
    _target_: str = MISSING
    warmup_steps: int = _non_negative()
    min_lr_ratio: float = _checked(lambda v: 0 <= v <= 1, "must be in [0, 1]")


@dataclass
class ConstantConfig:
    _target_: str = MISSING
    warmup_steps: int = _non_negative()


@dataclass
class PlateauConfig:
    _target_: str = MISSING
    factor: float = _open_unit()
    patience: int = _non_negative()
    threshold: float = _non_negative()
    min_lr: float = _non_negative()


# ---------------------------------------------------------------- amp / clip
@dataclass
class AmpConfig:
    _target_: str = MISSING


@dataclass
class FP16Config(AmpConfig):
    _target_: str = MISSING
    init_scale: float = _positive()
    growth_factor: float = _checked(lambda v: v > 1, "must be > 1")
    backoff_factor: float = _open_unit()
    growth_interval: int = _positive()
    min_scale: float = _positive()


def _valid_norm_type(v: float) -> bool:
    return v > 0 and not math.isnan(v)


@dataclass
class NormClipConfig:
    _target_: str = MISSING
    max_norm: float = _positive()
    norm_type: float = _checked(_valid_norm_type, "must be > 0 or inf (2, 1, inf)")
    controller: bool = MISSING
    patience: int = _positive()
    lr_factor: float = _open_unit()
    relax_after: int = _positive()
    percentile: float = _checked(lambda v: 0 < v <= 100, "must be in (0, 100]")
    warmup_steps: int = _non_negative()


@dataclass
class ZClipConfig:
    _target_: str = MISSING
    alpha: float = _open_unit()
    z_thresh: float = _positive()
    warmup_steps: int = _positive()
    eps: float = _positive()
    max_norm: Optional[float] = _positive()


@dataclass
class AutoClipConfig:
    _target_: str = MISSING
    percentile: float = _checked(lambda v: 0 < v <= 100, "must be in (0, 100]")
    history: int = _positive()


@dataclass
class AGCConfig:
    _target_: str = MISSING
    clipping: float = _positive()
    eps: float = _positive()
    exclude: List[str] = MISSING


@dataclass
class ValueClipConfig:
    _target_: str = MISSING
    clip_value: float = _positive()


@dataclass
class NoClipConfig:
    _target_: str = MISSING


# ---------------------------------------------------------------- trainer
class Device(enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class TrainerConfig:
    max_steps: int = _positive()
    grad_accum: int = _positive()
    device: Device = MISSING
    seed: int = MISSING
    log_every: int = _positive()
    eval_every: int = _positive()
    eval_batches: int = _positive()
    compile: bool = MISSING
    # >1: `trainer train` starts this many workers on this node through torch's elastic launcher.
    nproc_per_node: int = _positive()


# ---------------------------------------------------------------- strategy
class StrategyKind(enum.Enum):
    auto = "auto"  # DDP with more than one process, else none
    none = "none"
    ddp = "ddp"
    fsdp = "fsdp"


@dataclass
class StrategyConfig:
    kind: StrategyKind = MISSING


@dataclass
class FSDPConfig(StrategyConfig):
    # True: free each block's gathered parameters after its forward (ZeRO-3); False: keep them (ZeRO-2).
    reshard_after_forward: bool = MISSING


# ---------------------------------------------------------------- checkpoint
@dataclass
class CheckpointConfig:
    every: int = _non_negative()  # 0: only at the end and on preemption
    keep_last: int = _positive()
    dir: Optional[str] = MISSING  # None: <run dir>/checkpoints
    resume: str = MISSING  # none | auto | path to a checkpoint file


@dataclass
class GuardConfig:
    spike: bool = MISSING
    window: int = _checked(lambda v: v >= 5, "must be >= 5")
    threshold: float = _positive()
    nonfinite_steps: int = _positive()
    max_rollbacks: int = _non_negative()


@dataclass
class LogConfig:
    per_layer: bool = MISSING


SCHEMAS = {
    "model": {"gpt": ModelConfig, "bert": BertConfig},
    # data=csv is data=jsonl's config (conf/data/csv.yaml includes it): the reader goes by suffix.
    "data": {"synthetic": SyntheticDataConfig, "text": TextDataConfig, "jsonl": LabelledDataConfig},
    "optim": {"adamw": AdamWConfig, "sgd": SGDConfig},
    "sched": {"cosine": CosineConfig, "constant": ConstantConfig, "plateau": PlateauConfig},
    "amp": {"fp32": AmpConfig, "bf16": AmpConfig, "fp16": FP16Config},
    "clip": {"norm": NormClipConfig, "value": ValueClipConfig, "none": NoClipConfig, "zclip": ZClipConfig,
             "autoclip": AutoClipConfig, "agc": AGCConfig},
    "trainer": {"default": TrainerConfig},
    "strategy": {"auto": StrategyConfig, "ddp": StrategyConfig, "fsdp": FSDPConfig},
    "checkpoint": {"default": CheckpointConfig},
    "guard": {"default": GuardConfig},
    "log": {"default": LogConfig},
}


def register() -> None:
    """Store every schema as schema_<group>_<option>; conf/<group>/<option>.yaml extends it.

    They are stored at the root, not in a group, so that they are not listed as config groups.
    """
    cs = ConfigStore.instance()
    for group, options in SCHEMAS.items():
        for name, schema in options.items():
            cs.store(name=f"schema_{group}_{name}", node=schema)
    if not OmegaConf.has_resolver("stdlib"):
        OmegaConf.register_new_resolver("stdlib", lambda: sysconfig.get_paths()["stdlib"])
    if not OmegaConf.has_resolver("trainer_root"):  # the checkout: conf/ and recipes/ live there
        OmegaConf.register_new_resolver("trainer_root", lambda: str(Path(CONF_DIR).parent))
    if not OmegaConf.has_resolver("started"):
        OmegaConf.register_new_resolver("started", lambda pattern: started().strftime(pattern))


_started: list[datetime.datetime] = []


def started(at: datetime.datetime | None = None) -> datetime.datetime:
    """When this run started, for its timestamped dir (${started:...} in conf/config.yaml).

    Fixed at the first call; under torchrun, every rank passes rank 0's time so that all ranks
    name the same dir (Hydra's own ${now:} would read each process's clock).
    """
    if at is not None:
        _started[:] = [at]
    if not _started:
        _started.append(datetime.datetime.now())
    return _started[0]


def run_dir_override(run_dir: Path | str) -> str:
    """hydra.run.dir=PATH as an override that parses back to PATH: quoted, because a sweep job's
    dir is named by its overrides (0_clip.max_norm=0.5), and '=' or ',' would not parse bare."""
    return 'hydra.run.dir="' + str(run_dir).replace('"', '\\"') + '"'


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `trainer train OVERRIDES` would run with (Hydra's compose API; no run dir, no job)."""
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def validate(cfg: DictConfig) -> None:
    """Check every range declared in the schemas' field metadata; raise ConfigError naming the key."""
    for group in SCHEMAS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        schema = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(schema):
            continue
        for f in dataclasses.fields(schema):
            check = f.metadata.get("check")
            value = node.get(f.name)
            if check is None or value is None:
                continue
            ok, why = check
            if not ok(value):
                raise ConfigError(f"{group}.{f.name}={value}: {why}")
    tasks = ("auto", "lm", "mlm", "classification")
    if cfg.task not in tasks:
        raise ConfigError(f"task={cfg.task}: choose from {', '.join(tasks)}")
    if cfg.task == "classification" and not cfg.data.get("label_field"):
        raise ConfigError("task=classification: set data.label_field (and data=jsonl or data=csv)")
    # A user's own model config need not have these keys.
    model = cfg.model
    if "hidden_size" in model and "num_heads" in model and model.hidden_size % model.num_heads:
        raise ConfigError(
            f"model.hidden_size={model.hidden_size} is not divisible by model.num_heads={model.num_heads}"
        )
    if "max_seq_len" in model and "seq_len" in cfg.data and cfg.data.seq_len > model.max_seq_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} is longer than model.max_seq_len={model.max_seq_len}")
    # The guard checks losses at log steps; a checkpoint must only ever follow a checked interval.
    if cfg.guard.spike and cfg.checkpoint.every % cfg.trainer.log_every:
        raise ConfigError(f"checkpoint.every={cfg.checkpoint.every} must be a multiple of "
                          f"trainer.log_every={cfg.trainer.log_every} when guard.spike=true")

