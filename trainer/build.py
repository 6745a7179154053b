"""Build every part of a run from the composed config, with hydra.utils.instantiate.

Each group's ``_target_`` names what to build, so a user's own model, data source,
optimizer, schedule, precision or clipping policy plugs in by import path.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from trainer import capabilities, distributed, preflight
from trainer.clipping import ClipResult
from trainer.config import ConfigError
from trainer.data.stream import BatchStream, EpochSampler, LazyEpochSampler
from trainer.data.tokens import MASK_ID
from trainer.models import pretrained as hf_pretrained
from trainer.precision import Precision, cpu_note, emulation_factor
from trainer.schedule import Schedule


@dataclass
class Run:
    """Everything one run needs, built and ready."""

    cfg: DictConfig
    device: torch.device
    model: nn.Module  # what the step calls (compiled if trainer.compile)
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    schedule: Schedule  # after_step() / after_eval(loss), whatever the torch scheduler
    precision: Precision
    clip: Callable[[list[torch.Tensor]], ClipResult]
    data: Any
    train_batches: BatchStream  # endless; its position is checkpointed
    eval_loader: DataLoader
    notes: list[str] = field(default_factory=list)  # what the user should know before training


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside torch.compile's and DDP's wrappers (whose names prefix every key)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """cpu, or this process's GPU (one per local rank under torchrun)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(preflight.NO_GPU)
    asked = name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank >= torch.cuda.device_count():
        # one GPU per process: a second rank on a one-GPU node would find no cuda:1 (and NCCL
        # refuses two ranks on one GPU)
        raise ConfigError(f"trainer.device={asked}: local rank {local_rank} has no GPU of its own (this node has "
                          f"{torch.cuda.device_count()}); start at most that many processes per node "
                          "(trainer.nproc_per_node), or use trainer.device=cpu")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def _takes(target: str, name: str) -> bool:
    """Whether the callable at import path target takes a keyword argument name (or **kwargs); True
    when it does not import, which instantiate then reports."""
    try:
        parameters = inspect.signature(get_object(target)).parameters.values()
    except Exception:
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def model_keys(node: DictConfig) -> DictConfig:
    """The model group's keys for its _target_. z_loss is the GPT's: a model of the user's that takes
    neither it nor **kwargs (written before z_loss was a key) is built without it while it is 0."""
    if node.get("z_loss") is None or _takes(node._target_, "z_loss"):
        return node
    if node.z_loss:
        raise ConfigError(f"model.z_loss={node.z_loss}: model._target_={node._target_} takes no z_loss argument; "
                          "compute a z-loss in the model, or set model.z_loss=0")
    return OmegaConf.masked_copy(node, [k for k in node if k != "z_loss"])


def _build(group: str, node: DictConfig, **kwargs: Any) -> Any:
    """instantiate(node), with a failure reported as one line naming the group."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, ConfigError):
            raise cause from None
        what = " ".join(str(cause).split()[:40]) or type(cause).__name__
        raise ConfigError(f"{group}._target_={node.get('_target_')}: {what}") from e


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (weights, embeddings) only; biases and norm gains are not decayed (as in GPT-2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def loaders(data: Any, cfg: DictConfig, device: torch.device,
            world: distributed.World = distributed.World()) -> tuple[BatchStream, DataLoader]:
    """Batches of data.batch_size per rank: the training stream, and this rank's share of the eval set."""
    d = cfg.data
    if len(data.train) < d.batch_size * world.size:
        raise ConfigError(f"data.batch_size={d.batch_size}: the training set has only {len(data.train)} samples"
                          + (f" for {world.size} processes" if world.size > 1 else ""))
    pin = device.type == "cuda" if d.pin_memory is None else d.pin_memory
    common = dict(batch_size=d.batch_size, num_workers=d.num_workers, pin_memory=pin,
                  persistent_workers=d.num_workers > 0, collate_fn=getattr(data, "collate", None))
    # A source that says its order must not be materialized (a corpus of millions of windows) gets it computed.
    order = LazyEpochSampler if getattr(data, "lazy_order", False) else EpochSampler
    train = BatchStream(data.train, order(data.train, cfg.trainer.seed, world.rank, world.size), **common)
    shard = DistributedSampler(data.eval, world.size, world.rank, shuffle=False) if world.size > 1 else None
    # Its own generator: starting an eval must not draw from the global RNG (dropout's), or a run
    # that evaluated at a step would continue differently from one that did not.
    evaluate = DataLoader(data.eval, sampler=shard, shuffle=False, generator=torch.Generator().manual_seed(0), **common)
    return train, evaluate


def check_classes(cfg: DictConfig) -> None:
    """The rules across groups asked of the imported classes and the built precision policy, so a
    user's own class is held to them too (trainer.preflight has asked the built-in ones already)."""
    fsdp = cfg.strategy.kind.name == "fsdp"
    capabilities.check(cfg, imported=True,
                       scaler=fsdp and _build("amp", cfg.amp, device=torch.device("cpu")).scaler is not None)


def build(cfg: DictConfig, command_line: list[str] | tuple[str, ...] = ()) -> Run:
    """Validate cfg and build the run. Raises ConfigError, naming the key, on bad input.

    command_line: the overrides cfg was composed with (what the user chose over a default)."""
    notes = preflight.check(cfg, command_line)
    check_classes(cfg)
    pretrained = cfg.model.get("pretrained")
    world = distributed.world()
    device = resolve_device(cfg.trainer.device.name, world.local_rank)
    seed = cfg.trainer.seed
    random.seed(seed)
    torch.manual_seed(seed)

    data = _build("data", cfg.data, seed=seed)
    vocab_size = cfg.model.get("vocab_size") or data.vocab_size
    if vocab_size < data.vocab_size:
        raise ConfigError(f"model.vocab_size={vocab_size} is smaller than the data's vocabulary ({data.vocab_size})")
    train_batches, eval_loader = loaders(data, cfg, device, world)
    if "vocab_size" in cfg.model:
        cfg.model.vocab_size = vocab_size  # recorded resolved, in config.yaml and checkpoints
    for key in ("mask_token_id", "num_labels", "pad_token_id"):  # from the data's tokenizer and labels, unless set
        if key in cfg.model and cfg.model[key] is None:
            cfg.model[key] = getattr(data, key, None)
    if "mask_token_id" in cfg.model and cfg.model.mask_token_id is None and getattr(data, "tokenizer", None) is None:
        cfg.model.mask_token_id = MASK_ID  # byte tokens (a tokenizer without a mask token is refused by the model)

    model = _build("model", model_keys(cfg.model), vocab_size=vocab_size)  # the same init on every rank
    notes += getattr(model, "notes", []) + getattr(data, "notes", [])
    if pretrained:
        new, unused = hf_pretrained.load(model, pretrained)
        notes.append(f"model.pretrained: weights from {pretrained}" + (f"; new (not in it): {', '.join(new)}" if new else "")
                     + (f"; not used by task={cfg.model.task}: {hf_pretrained.some(unused)}" if unused else ""))
        names = getattr(data, "label_names", None)
        if names and "classifier.weight" not in new and (note := hf_pretrained.align_labels(model, pretrained, names)):
            notes.append(note)
    model = model.to(device)
    precision = _build("amp", cfg.amp, device=device)
    if factor := emulation_factor(precision, device):
        if cfg.trainer.compile:
            raise ConfigError(f"trainer.compile=true with amp={precision.name}: this CPU has no native {precision.name}, "
                              f"so every matmul is emulated ({factor:.0f}x slower than fp32 here), compiled or not; "
                              "compile with amp=fp32 on this CPU")
        notes.append(cpu_note(precision, factor))
    strategy = cfg.strategy
    if strategy.kind.name == "fsdp" and world.size > 1:
        # FSDP casts the sharded parameters itself (MixedPrecisionPolicy); autocast would cast again.
        model = distributed.wrap(model, "fsdp", device, precision.dtype, strategy.reshard_after_forward)
        precision.dtype = None
    else:
        model = distributed.wrap(model, strategy.kind.name, device, None)
    if world.size > 1:
        torch.manual_seed(seed + world.rank)  # dropout and masking differ from rank to rank
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _build("optim", cfg.optim, params=param_groups(model, cfg.optim.get("weight_decay", 0.0)))
    schedule = Schedule(_build("sched", cfg.sched, optimizer=optimizer, max_steps=cfg.trainer.max_steps))
    clip = _build("clip", cfg.clip)
    if hasattr(clip, "bind"):  # AGC resolves its exclude patterns against parameter names
        clip.bind(unwrap(model))
    if cfg.trainer.compile:
        model = torch.compile(model)
        # The clip too, where it is plain tensor math on every rank's whole gradients (not FSDP's
        # shards). Fused AdamW stays as it is: already one kernel per group, and a compiled
        # optimizer step would not take found_inf, the non-finite step's on-device skip.
        if hasattr(clip, "compile") and not (strategy.kind.name == "fsdp" and world.size > 1):
            clip.compile()
    return Run(cfg, device, model, params, optimizer, schedule, precision, clip, data, train_batches, eval_loader,
               notes)
