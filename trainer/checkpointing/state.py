"""What a checkpoint holds: the run's stateful components, one registry, captured and restored by iterating it.

Each component has ``state_dict``/``load_state_dict`` and is stored under its key. A checkpoint
also holds the step, the resolved config and, under FSDP, the name of the shards dir that holds
the weights and optimizer state instead (trainer/checkpointing/shards.py). The keys are those 0.1.0 wrote, so
its checkpoints resume as they are (tests/fixtures/checkpoint-0.1.0).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from omegaconf import OmegaConf

from trainer import distributed
from trainer.checkpointing import changes, checkpoint
from trainer.build import Run, unwrap
from trainer.config import ConfigError

@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class RNG:
    """Every rank's Python, torch and CUDA generators: state_dict gathers all ranks' (call it on
    every rank), load_state_dict takes this rank's."""

    def state_dict(self) -> list[dict[str, Any]]:
        mine = {"python": random.getstate(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        return distributed.all_gather_object(mine)

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        rng = states[distributed.world().rank]
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


class Labels:
    """The classifier's label names, row by row: `trainer export` writes them as id2label, and a
    resume whose data has other labels is refused (row i would stand for another label)."""

    def __init__(self, names: list[str]):
        self.names = list(names)

    def state_dict(self) -> list[str]:
        return list(self.names)

    def load_state_dict(self, names: list[str]) -> None:
        if list(names) != self.names:
            raise ValueError(f"trained on the labels {', '.join(names)}; the data has {', '.join(self.names)}")


# Parts added since 0.1.0: a checkpoint without one resumes (the part keeps what the run built).
_ADDED = ("labels", "skip_step")


def sharded(run: Run) -> bool:
    """Does this run write and read FSDP shards? strategy=fsdp with more than one process."""
    return distributed.world().size > 1 and run.cfg.strategy.kind.name == "fsdp"


def components(run: Run, **loop_state: object) -> dict[str, Stateful]:
    """Every stateful part of a run by its checkpoint key: the built parts, then the loop's own
    (meter, guard, eval history). A part without state (no scaler, a stateless clip policy, no
    guard) is left out. A new stateful policy needs no line here; a new kind of part, one."""
    parts: dict[str, object] = {} if sharded(run) else {"model": unwrap(run.model), "optimizer": run.optimizer}
    names = getattr(run.data, "label_names", None)
    parts.update(scheduler=run.schedule, scaler=run.precision.scaler, clip=run.clip, data=run.train_batches,
                 rng=RNG(), labels=Labels(names) if names else None, **loop_state)
    return {name: part for name, part in parts.items() if isinstance(part, Stateful)}


def capture(parts: dict[str, Stateful], step: int, cfg: Any, shards: str | None = None) -> dict[str, Any]:
    """Everything needed to continue exactly after `step`. Called on every rank (RNG gathers each
    rank's state); rank 0 saves it."""
    state = {name: part.state_dict() for name, part in parts.items()}
    return {"step": step, "shards": shards, **state,
            "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)}


def _check_fits(run: Run, state: dict[str, Any], path: Path, current: dict) -> Path | None:
    """Refuse, naming the key, a checkpoint this run cannot continue; return its shards dir, if any.
    Runs before anything is loaded: shards are followed only by a sharded run."""
    shards_dir = checkpoint.shards_dir(path, state)
    if shards_dir and not sharded(run):
        raise ConfigError(f"checkpoint {path} points at FSDP shards, but this run is not sharded; resume with "
                          "strategy=fsdp and the number of processes it was written with")
    if sharded(run) and not shards_dir:
        raise ConfigError(f"checkpoint {path} holds whole weights, not FSDP shards; resume with the "
                          "strategy it was written with")
    # Then the config: what may change on resume and what may not (trainer/checkpointing/changes.py).
    changes.refuse_changes(state["config"], current, state.get("scheduler") or {}, run.schedule.on_eval, str(path))
    world = distributed.world()
    if len(state["rng"]) != world.size:
        raise ConfigError(f"checkpoint {path} was written by {len(state['rng'])} processes, this run has {world.size}: "
                          "resume with the same number (each rank's data position and RNG are in it)")
    return shards_dir


def restore(run: Run, parts: dict[str, Stateful], state: dict[str, Any], path: Path,
            say: Callable[[str], None] = print) -> None:
    """Load a checkpoint into every part; one that does not fit is a ConfigError naming the file and part.
    Where the config changed since, it wins or is refused (trainer/checkpointing/changes.py); `say`
    tells the user what it changed.

    An empty entry ({}: the part had no state when it was written, e.g. no guard then) leaves the part fresh.
    """
    current = OmegaConf.to_container(run.cfg, resolve=True, enum_to_str=True)
    shards_dir = _check_fits(run, state, path, current)
    saved = state["config"]
    fresh = set()
    if why := changes.clip_starts_fresh(saved, current):
        fresh.add("clip")
        say(f"resume: {why}")
    if changes.schedule_starts_fresh(run, saved, current):
        fresh.add("scheduler")
    if shards_dir:
        from trainer.checkpointing import shards

        shards.load(unwrap(run.model), run.optimizer, shards_dir)
    for name, part in parts.items():
        if name in fresh:
            continue
        if name not in state and name in _ADDED:
            continue
        if name not in state:
            raise ConfigError(f"checkpoint {path}: no '{name}' in it; it was not written by trainer")
        if isinstance(state[name], dict) and not state[name]:
            continue
        try:
            part.load_state_dict(state[name])
        except ConfigError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"checkpoint {path}: its {name} state does not fit this run: {str(e).splitlines()[0]}") from None
    changes.follow_config(run, saved, current, state["step"], say)
