"""What a checkpoint holds, and putting it back: the run's complete state after a step."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from trainer import checkpoint, distributed
from trainer.build import Run
from trainer.config import ConfigError
from trainer.display import Display
from trainer.guard import SpikeGuard
from trainer.metrics import Meter

# Config sections a checkpoint must agree with: the model's shape and the optimizer's and
# scaler's state layout. Others (lr, max_steps, logging) may change on resume.
_MUST_MATCH = ("model", "optim._target_", "amp._target_")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside torch.compile's and DDP's wrappers (their names prefix every key)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def sharded(run: Run) -> bool:
    """Does this run write and read FSDP shards? strategy=fsdp with more than one process."""
    return distributed.world().size > 1 and run.cfg.strategy.kind.name == "fsdp"


def save_shards(run: Run, ckpt_dir: Path, step: int) -> str:
    """Every rank's shards of the weights and optimizer state (trainer/shards.py); returns the dir's name."""
    from trainer import shards

    return shards.save(_unwrap(run.model), run.optimizer, ckpt_dir, step)


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def capture(run: Run, step: int, meter: Meter, eval_losses: list[float], guard: SpikeGuard | None,
            shards: str | None = None) -> dict[str, Any]:
    """Everything needed to continue exactly after `step`: weights, optimizer, schedule, scaler, data, RNGs.

    Called on every rank (it gathers each rank's RNG state); rank 0 saves it. Under FSDP the
    weights and optimizer state are in the `shards` dir beside it (save_shards), not in it.
    """
    return {
        "step": step,
        "model": None if shards else _unwrap(run.model).state_dict(),
        "optimizer": None if shards else run.optimizer.state_dict(),
        "shards": shards,
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.precision.scaler.state_dict() if run.precision.scaler else {},
        "clip": run.clip.state_dict() if hasattr(run.clip, "state_dict") else {},
        "data": run.train_batches.state_dict(),
        "rng": distributed.all_gather_object(_rng_state()),  # one per rank
        "meter": meter.state_dict(),
        "eval_losses": list(eval_losses),
        "guard": guard.state_dict() if guard else {},
        "config": OmegaConf.to_container(run.cfg, resolve=True, enum_to_str=True),
    }


def _section(container: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        container = container.get(part, {}) if isinstance(container, dict) else {}
    return container


def restore(run: Run, state: dict[str, Any], path: Path, meter: Meter, guard: SpikeGuard | None) -> None:
    """Load a checkpoint into run; a config it does not fit is a ConfigError naming the key."""
    shards_dir = checkpoint.shards_dir(path, state)
    if shards_dir and not sharded(run):  # checked before anything reads the shards
        raise ConfigError(f"checkpoint {path} points at FSDP shards, but this run is not sharded; resume with "
                          "strategy=fsdp and the number of processes it was written with")
    if sharded(run) and not shards_dir:
        raise ConfigError(f"checkpoint {path} holds whole weights, not FSDP shards; resume with the "
                          "strategy it was written with")
    current = OmegaConf.to_container(run.cfg, resolve=True, enum_to_str=True)
    for dotted in _MUST_MATCH:
        saved, now = _section(state["config"], dotted), _section(current, dotted)
        if saved == now:
            continue
        if isinstance(saved, dict) and isinstance(now, dict):
            key = next(k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
            dotted, saved, now = f"{dotted}.{key}", saved.get(key), now.get(key)
        raise ConfigError(f"checkpoint {path} was trained with {dotted}={saved}, but the config says {now}; "
                          "resume with the same setting")
    world = distributed.world()
    if len(state["rng"]) != world.size:
        raise ConfigError(f"checkpoint {path} was written by {len(state['rng'])} processes, this run has {world.size}: "
                          "resume with the same number (each rank's data position and RNG are in it)")
    try:
        if shards_dir:
            from trainer import shards

            shards.load(_unwrap(run.model), run.optimizer, shards_dir)
        else:
            _unwrap(run.model).load_state_dict(state["model"])
            run.optimizer.load_state_dict(state["optimizer"])
    except ConfigError:
        raise
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"checkpoint {path} does not fit this model/optimizer: {str(e).splitlines()[0]}") from None
    run.scheduler.load_state_dict(state["scheduler"])
    if run.precision.scaler:
        run.precision.scaler.load_state_dict(state["scaler"])
    if hasattr(run.clip, "load_state_dict"):
        run.clip.load_state_dict(state["clip"])
    run.train_batches.load_state_dict(state["data"])
    rng = state["rng"][world.rank]
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    meter.load_state_dict(state["meter"])
    if guard and state["guard"]:
        guard.load_state_dict(state["guard"])


def find_resume(run: Run, ckpt_dir: Path, display: Display) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint checkpoint.resume asks for: none, the newest loadable in ckpt_dir (auto), or a path."""
    resume = run.cfg.checkpoint.resume
    if resume == "none":
        return None
    if resume == "auto":
        found = checkpoint.latest(ckpt_dir)
        if found is None:
            display.print(f"checkpoint.resume=auto: no checkpoint in {ckpt_dir}, starting fresh")
        return found
    path = Path(resume)
    return path, checkpoint.load(path)
