"""What a checkpoint holds, and putting it back: the run's complete state after a step."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from trainer import checkpoint
from trainer.build import Run
from trainer.config import ConfigError
from trainer.display import Display
from trainer.guard import SpikeGuard
from trainer.metrics import Meter

# Config sections a checkpoint must agree with: the model's shape and the optimizer's and
# scaler's state layout. Others (lr, max_steps, logging) may change on resume.
_MUST_MATCH = ("model", "optim._target_", "amp._target_")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile's wrapper


def capture(run: Run, step: int, meter: Meter, eval_losses: list[float], guard: SpikeGuard | None) -> dict[str, Any]:
    """Everything needed to continue exactly after `step`: weights, optimizer, schedule, scaler, data, RNGs."""
    return {
        "step": step,
        "model": _unwrap(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.precision.scaler.state_dict() if run.precision.scaler else {},
        "clip": run.clip.state_dict() if hasattr(run.clip, "state_dict") else {},
        "data": run.train_batches.state_dict(),
        "rng": {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
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
    try:
        _unwrap(run.model).load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"checkpoint {path} does not fit this model/optimizer: {str(e).splitlines()[0]}") from None
    run.scheduler.load_state_dict(state["scheduler"])
    if run.precision.scaler:
        run.precision.scaler.load_state_dict(state["scaler"])
    if hasattr(run.clip, "load_state_dict"):
        run.clip.load_state_dict(state["clip"])
    run.train_batches.load_state_dict(state["data"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
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
