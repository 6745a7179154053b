"""The ``trainer`` command: picks the subcommand, then hands the rest of argv to Hydra."""

from __future__ import annotations

import difflib
import importlib
import json
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from trainer import config, ranks
from trainer.config import CONF_DIR, ConfigError


USAGE = """\
usage: trainer <command> [overrides...]

commands:
  train [overrides]       train with the composed config (Hydra overrides: key=value, group=option)
  train -m [sweeps]       one job per combination (Hydra multirun), e.g. -m clip.max_norm=0.5,1,5
  train --cfg job         print the composed config and exit
  train --help            config groups and the composed config (Hydra's help)
  bench [--steps N] [--repeats N] [overrides]
                          time trainer's loop against a hand-written loop (median, ratio)
  export RUN_DIR [--out DIR]
                          newest checkpoint's weights as safetensors, plus the model config
  inspect-grads [--steps N | --from RUN_DIR] [overrides]
                          gradient-norm distribution, top layers, and a suggested clip.max_norm
  report PATH... [--csv | --json]
                          one row per run found under PATH: final/best eval loss, norms, clip fraction...

examples:
  trainer train
  trainer train model=bert amp=fp16 clip.max_norm=1.0
  trainer train -m clip.max_norm=0.5,1,5

Set HYDRA_FULL_ERROR=1 to see full tracebacks for errors.
"""


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def train(cfg: DictConfig) -> float:
    """Hydra's task: build the run from cfg, train, and return the final eval loss (for sweepers)."""
    # Imported here so that `trainer --help` and config errors stay fast.
    from trainer import distributed
    from trainer.build import build, preflight
    from trainer.display import Display
    from trainer.loop import train as train_loop
    from trainer.guard import Diverged
    from trainer.preemption import Preempted

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.trainer.nproc_per_node > 1 and not ranks.is_worker():
        # This process only launches: the workers train, into this same run dir.
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.run.dir=")]
        try:
            preflight(cfg)
        except Exception as e:
            _fail(e)
        print(f"starting {cfg.trainer.nproc_per_node} workers (torch elastic launcher); outputs: {run_dir}")
        # The workers inherit this environment: they must see the user's HYDRA_FULL_ERROR, not
        # the one _hydra set for this process's own Hydra.
        os.environ["HYDRA_FULL_ERROR"] = "1" if _FULL_ERROR else "0"
        try:
            distributed.launch(cfg.trainer.nproc_per_node, [*overrides, config.run_dir_override(run_dir)])
        finally:
            os.environ["HYDRA_FULL_ERROR"] = "1"
        # A sweeper (Optuna) minimises what the task returns: rank 0's result, from its summary.
        return json.loads((run_dir / "summary.json").read_text())["final eval loss"]
    world = ranks.world()
    try:
        run = build(cfg)
    except Exception as e:
        # Exit from inside the job: an exception would reach Hydra, which prints more lines about it.
        _fail(e)
    display = Display(cfg.trainer.max_steps, quiet=not world.main)
    display.start(cfg, run_dir, str(run.device) + (f" x {world.size} processes" if world.size > 1 else ""),
                  sum(p.numel() for p in run.params))
    for note in run.notes:
        display.note(note)
    try:
        summary = train_loop(run, run_dir, display, hparams=run_settings(HydraConfig.get()))
    except (Preempted, Diverged) as e:
        if world.main:  # every rank stops at the same step for the same reason: say it once
            print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except ConfigError as e:  # a checkpoint that does not fit, found while resuming
        _fail(e)
    if world.main:  # for scripts, and for the launcher to hand a sweeper the objective
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    display.finish(summary, run_dir)
    return summary["final eval loss"]


def _value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def run_settings(hydra_cfg: DictConfig) -> dict[str, object]:
    """What this run chose: each config group's option, then each override (for the HPARAMS tab)."""
    settings: dict[str, object] = {g: o for g, o in hydra_cfg.runtime.choices.items()
                                   if not g.startswith("hydra") and o is not None}
    for item in hydra_cfg.overrides.task:
        key, _, value = item.lstrip("+~").partition("=")
        if not key.startswith("hydra."):
            settings[key] = _value(value)
    return settings


def one_line(e: BaseException) -> str | None:
    """The user-facing one-line message for a config or input error; None for anything else (a bug)."""
    if isinstance(e, ConfigError):
        return str(e)
    if isinstance(e, MissingConfigException):
        m = re.search(r"Could not find '([^']+)/([^']+)'", str(e))
        if m and e.options:
            return f"{m[1]}={m[2]}: no such option in group '{m[1]}' (choose from {', '.join(sorted(e.options))})"
        return str(e).strip().splitlines()[0]
    cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            known = list(cause.parent_node.keys()) if getattr(cause, "parent_node", None) is not None else []
            hint = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
            where = f" in '{parent}'" if parent else ""
            if hint:
                return f"{key}: unknown key{where} (did you mean {parent + '.' if parent else ''}{hint[0]}?)"
            return f"{key}: unknown key{where} (known: {', '.join(k for k in known if k != '_target_')})"
        return f"{key}: {str(cause.msg).strip().splitlines()[0]}"
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        return " ".join(str(e).split())
    return None


_FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for tracebacks


def _fail(e: BaseException) -> None:
    """Print e as one line and exit 2 if it is a config or input error; otherwise re-raise it."""
    msg = None if _FULL_ERROR else one_line(e)
    if msg is None:
        raise e
    world = ranks.world()
    print(f"error{f' (rank {world.rank})' if world.size > 1 else ''}: {msg}", file=sys.stderr)
    sys.exit(2)


_SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(", "tag(")
_ALWAYS_EXCLUDED = ["data.files", "hydra.run.dir", "hydra.sweep.dir"]


def name_jobs_by_sweep(args: list[str]) -> list[str]:
    """In multirun, name each job's dir by the swept overrides only: all of them may be too long a name."""
    if not {"-m", "--multirun"} & set(args) or any("override_dirname.exclude_keys" in a for a in args):
        return args
    fixed = []
    for arg in args:
        key, eq, value = arg.lstrip("+~").partition("=")
        swept = ("," in value and value[:1] not in "[{") or value.startswith(_SWEEP_FUNCTIONS)
        if eq and not swept and not key.startswith("hydra"):
            fixed.append(key)
    excluded = ",".join(_ALWAYS_EXCLUDED + fixed)
    # Next to the last override: argparse takes no overrides after trailing flags like --cfg hydra.
    at = max((i + 1 for i, a in enumerate(args) if "=" in a and not a.startswith("-")), default=len(args))
    return [*args[:at], f"hydra.job.config.override_dirname.exclude_keys=[{excluded}]", *args[at:]]


def _hydra(task, args: list[str]) -> None:
    """Run a Hydra task on args; config and input errors become one line on stderr and exit 2."""
    # Hydra prints errors itself (as several lines and tracebacks) unless this is set; with it set,
    # they reach us and we print one line, except for real bugs, which keep their traceback.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = ["trainer", *name_jobs_by_sweep(args)]
    try:
        task()
    except Exception as e:
        _fail(e)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    command, rest = argv[0], argv[1:]
    config.register()
    if command == "train":
        worker = ranks.is_worker()
        if worker:
            # Started by torchrun: join the group, and take rank 0's clock for the run dir's name.
            import logging

            from trainer import distributed

            world = distributed.init()
            config.started(distributed.shared_start_time())
            if not world.main:  # quiet: rank 0 writes the dir's .hydra/ and train.log
                rest = [*rest, "hydra.output_subdir=null"]
                logging.getLogger("trainer").setLevel(logging.WARNING)
        try:
            _hydra(train, rest)
            if worker:
                distributed.finish()
        except KeyboardInterrupt:  # the second Ctrl-C: the first one asked for a clean stop
            print("error: interrupted at once (second Ctrl-C); the newest checkpoint is from before",
                  file=sys.stderr)
            sys.exit(130)
    elif command in ("bench", "export", "report", "inspect-grads"):
        module = importlib.import_module(f"trainer.{command.replace('-', '_')}")
        try:
            module.main(rest)
        except Exception as e:
            _fail(e)
    else:
        print(f"error: unknown command '{command}' (commands: train, bench, export, report, inspect-grads)\n\n{USAGE}", file=sys.stderr, end="")
        sys.exit(2)


if __name__ == "__main__":
    main()
