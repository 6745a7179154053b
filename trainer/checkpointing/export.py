"""`trainer export RUN_DIR`: the newest checkpoint's weights as safetensors, with the model config."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import save_file

from trainer.checkpointing import checkpoint
from trainer.config import ConfigError


def checkpoint_weights(path: Path, state: dict) -> dict:
    """The checkpoint's weights; an FSDP checkpoint's shards are joined (read without running code)."""
    shards_dir = checkpoint.shards_dir(path, state)
    if shards_dir is None:
        return state["model"]
    if (state.get("config") or {}).get("strategy", {}).get("kind") != "fsdp":
        raise ConfigError(f"checkpoint {path}: refused, it points at FSDP shards but was not written by an FSDP run")
    from trainer.checkpointing import shards

    return shards.join_weights(shards_dir)


def export(run_dir: Path, out: Path | None = None) -> Path:
    """Write out/model.safetensors and out/config.json (out defaults to RUN_DIR/export); return out."""
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
    save_file(weights, str(out / "model.safetensors"), metadata={"step": str(state["step"])})
    model_cfg = {**state["config"]["model"], "step": state["step"], "checkpoint": str(path)}
    (out / "config.json").write_text(json.dumps(model_cfg, indent=2) + "\n")
    for written in (out / "model.safetensors", out / "config.json"):  # safetensors writes 0600
        written.chmod(path.stat().st_mode & 0o777)  # readable by whoever can read the checkpoint
    return out
