"""Resuming with a changed config: what the command says applies from the resumed step on, or the
change is refused in one line. Never does the checkpoint silently win over the config.

| changed on resume | what happens |
|---|---|
| `optim.lr`, `weight_decay`, `betas`, `eps`, `momentum`, `nesterov` | the new value, from the resumed step; a new lr is the schedule's new base |
| `sched.*` (a per-step schedule: cosine, constant) | the new schedule, evaluated at the resumed step |
| `sched.*` (plateau) | plateau starts afresh at the configured lr |
| a per-step schedule <-> plateau | refused |
| `clip` (the policy or any key) | the policy starts afresh from the config (its statistics, the controller's state) |
| `data.batch_size`, `trainer.seed` | refused: they move the data position |
| `model.*`, `optim._target_`, `amp._target_` | refused |
| the number of processes, FSDP or not | refused (trainer/checkpointing/state.py: the checkpoint's structure) |
"""

from __future__ import annotations

from typing import Any, Callable

from trainer.build import Run
from trainer.config import ConfigError

_OPTIM_KEYS = ("lr", "weight_decay", "betas", "eps", "momentum", "nesterov")
# Sections a checkpoint must agree with: the model's shape and the optimizer's and scaler's state layout.
_MUST_MATCH = ("model", "optim._target_", "amp._target_")
_REFUSED = ("data.batch_size", "trainer.seed")


def _get(container: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        container = container.get(part, {}) if isinstance(container, dict) else {}
    return container


def _changed(saved: dict, now: dict, section: str) -> dict[str, tuple[Any, Any]]:
    """The keys of a section whose value changed (keys one side lacks, from another release or
    another option, count only as a change of _target_)."""
    old, new = _get(saved, section), _get(now, section)
    return {k: (old[k], new[k]) for k in sorted(set(old) & set(new)) if old[k] != new[k]}


# Model keys added since 0.1.0, with the value that computes what a checkpoint without them did.
_ADDED = {"hidden_act": "gelu", "attention_dropout": None, "classifier_dropout": None, "z_loss": 0.0}


def _as_computed(model: dict, keys: dict) -> dict:
    """A model section as the model computes it: the keys `keys` has that an older release did not
    write, at the value it computed, and a null dropout (`attention_dropout`, `classifier_dropout`)
    as the `dropout` it stands for."""
    model = {**{k: v for k, v in _ADDED.items() if k in keys}, **model}
    for key in ("attention_dropout", "classifier_dropout"):
        if key in model and model[key] is None:
            model[key] = model.get("dropout")
    return model


def refuse_changes(saved: dict, now: dict, saved_schedule_state: dict, steps_per_eval: bool, where: str) -> None:
    """The changes resuming cannot follow, as one ConfigError naming the key."""
    for dotted in _MUST_MATCH:
        old, new = _get(saved, dotted), _get(now, dotted)
        if dotted == "model" and isinstance(old, dict) and isinstance(new, dict):
            old, new = _as_computed(old, new), _as_computed(new, new)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            key = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            dotted, old, new = f"{dotted}.{key}", old.get(key), new.get(key)
        raise ConfigError(f"checkpoint {where} was trained with {dotted}={old}, but the config says {new}; "
                          "resume with the same setting")
    for dotted in _REFUSED:
        if _get(saved, dotted) != _get(now, dotted):
            raise ConfigError(f"checkpoint {where} was trained with {dotted}={_get(saved, dotted)}, but the config says "
                              f"{_get(now, dotted)}: that moves the data position; resume with the same setting")
    if ("num_bad_epochs" in saved_schedule_state) != steps_per_eval:  # ReduceLROnPlateau's state has it
        raise ConfigError(f"checkpoint {where} was trained with sched._target_={_get(saved, 'sched._target_')}, but the "
                          f"config says {_get(now, 'sched._target_')}: a per-step schedule and one stepped by the eval "
                          "loss cannot continue each other; resume with the same kind")


def clip_starts_fresh(saved: dict, now: dict) -> str | None:
    """Why the clip policy starts afresh instead of from the checkpoint (its config changed), or None."""
    changes = _changed(saved, now, "clip")
    if not changes:
        return None
    if "_target_" in changes:
        return f"clip._target_ {changes['_target_'][0]} -> {changes['_target_'][1]}: the new policy starts fresh"
    said = ", ".join(f"clip.{k} {old} -> {new}" for k, (old, new) in changes.items())
    return f"{said}: the clip policy starts fresh from the config (its statistics and controller too)"


def schedule_starts_fresh(run: Run, saved: dict, now: dict) -> bool:
    """A plateau schedule whose settings or lr changed starts afresh (its state holds the old ones)."""
    return run.schedule.on_eval and bool(_changed(saved, now, "sched") or "lr" in _changed(saved, now, "optim"))


def follow_config(run: Run, saved: dict, now: dict, step: int, say: Callable[[str], None]) -> None:
    """After loading: apply what the config changed in the optimizer and the schedule, saying each."""
    optim = {k: v for k, v in _changed(saved, now, "optim").items() if k in _OPTIM_KEYS}
    for key, (old, new) in optim.items():
        if key == "lr":
            continue  # the schedule's base, below
        groups = run.optimizer.param_groups[:1] if key == "weight_decay" else run.optimizer.param_groups  # biases: 0
        for group in groups:
            if key in group:
                group[key] = tuple(new) if isinstance(new, list) else new
        say(f"resume: optim.{key} {old} -> {new} (from the config)")
    sched = _changed(saved, now, "sched")
    lr = optim.get("lr", (None, None))[1]
    if lr is None and not sched:
        return
    if run.schedule.on_eval:  # not loaded (schedule_starts_fresh): it holds the config's settings
        for group in run.optimizer.param_groups:
            group["lr"] = now["optim"]["lr"]
        say(f"resume: {_said(optim, sched)}: the plateau schedule starts afresh at lr {now['optim']['lr']}")
        return
    scheduler = run.schedule.scheduler
    if lr is not None:
        scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
        for group in run.optimizer.param_groups:
            group["initial_lr"] = lr
    lambdas = getattr(scheduler, "lr_lambdas", None)  # LambdaLR (cosine, constant): lr = base x factor(step)
    if lambdas is not None:
        for group, base, factor in zip(run.optimizer.param_groups, scheduler.base_lrs, lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in run.optimizer.param_groups]
    say(f"resume: {_said(optim, sched)}: the schedule goes on from step {step}, lr now "
        f"{run.optimizer.param_groups[0]['lr']:.4g}")


def _said(optim: dict, sched: dict) -> str:
    parts = [f"optim.lr {optim['lr'][0]} -> {optim['lr'][1]}"] if "lr" in optim else []
    return ", ".join(parts + [f"sched.{k} {old} -> {new}" for k, (old, new) in sched.items()])

