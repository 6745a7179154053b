"""`trainer train [overrides]`: Hydra composes the config, then one run is built and trained.

With trainer.nproc_per_node > 1 this process only launches: torch's elastic launcher starts the
workers, which run this same command and train into the same run dir.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainer import cli, config, preemption, preflight, ranks
from trainer.config import CONF_DIR, ConfigError

NAME = "train"
USAGE = """\
  train [overrides]       train with the composed config (Hydra overrides: key=value, group=option)
  train -m [sweeps]       one job per combination (Hydra multirun), e.g. -m clip.max_norm=0.5,1,5
  train --cfg job         print the composed config and exit
  train --help            config groups and the composed config (Hydra's help)"""

# Never part of a sweep job's dir name: long paths, and where the dirs themselves go.
_NEVER_IN_NAMES = ["data.files", "hydra.run.dir", "hydra.sweep.dir"]


class JobFailed(Exception):
    """A job of a sweep failed (its line is printed): Hydra records it and runs the other jobs."""


_sweep: dict[str, list[str]] = {"jobs": [], "failed": []}  # this process's sweep jobs, by dir name

# Inside Hydra's job, its logging (conf/config.yaml) sends this to RUN_DIR/train.log only: the
# lines that end a run (refusal, stop, failure) are kept there too, beside the terminal's copy.
log = logging.getLogger("trainer")


def _job_failed(run_dir: Path, message: str) -> None:
    print(f"error: job {run_dir.name}: {message}", file=sys.stderr)
    if ranks.world().main:
        log.error(message)
    _sweep["failed"].append(run_dir.name)
    raise JobFailed(message)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def task(cfg: DictConfig) -> float:
    """Hydra's task: build the run from cfg, train, and return the final eval loss (for sweepers)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    if sweep:
        _sweep["jobs"].append(run_dir.name)
    # Hydra made the dir and opened train.log in it; nothing else is there if this run is new.
    fresh = all(p.name == "train.log" and p.stat().st_size == 0 for p in run_dir.iterdir())
    hydra_files = _hydra_files(cfg)  # as composed, before build resolves keys into cfg

    def discard_if_fresh() -> None:
        """A dir this command made and left empty goes, and outputs/DATE above it if now empty."""
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
            parent, here = run_dir.parent.resolve(), Path.cwd().resolve()
            while here in parent.parents and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def refuse(e: BaseException) -> None:
        """One line and exit 2 (cli.fail), without leaving an empty run dir behind."""
        message = cli.user_message(e)
        if message is not None and not sweep and ranks.world().main:  # a sweep's job logs it in _job_failed
            log.error(message)
        if ranks.world().size == 1:  # workers share the dir: the launcher discards it once they are done
            discard_if_fresh()
        if sweep and message is not None:  # the sweep goes on with the other jobs
            _job_failed(run_dir, message)
        cli.fail(e)

    with _stopped_during_startup(run_dir, fresh, discard_if_fresh):
        try:
            notes = preflight.check(cfg, HydraConfig.get().overrides.task)  # before torch: answers at once
        except Exception as e:
            refuse(e)
        # Imported for a config that passed: torch alone takes seconds to import.
        from trainer import distributed
        from trainer.build import build, check_classes, resolve_device
        from trainer.checkpointing.checkpoint import CheckpointWriteError
        from trainer.checkpointing.lock import RunLock
        from trainer.guard import Diverged
        from trainer.loop import train
        from trainer.monitoring.display import Display

        if cfg.trainer.nproc_per_node > 1 and not ranks.is_worker():
            overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.run.dir=")]
            try:  # bad input is one line here, not one per worker
                check_classes(cfg)
                resolve_device(cfg.trainer.device.name)
            except Exception as e:
                refuse(e)
            print(f"starting {cfg.trainer.nproc_per_node} workers (torch elastic launcher); outputs: {run_dir}")
            try:
                with cli.users_hydra_full_error():  # the workers report errors as the user asked
                    distributed.launch(cfg.trainer.nproc_per_node, [*overrides, config.run_dir_override(run_dir)],
                                       quiet=not cli.FULL_ERROR)
            except SystemExit as stop:
                if stop.code == 2:  # the workers refused the input, each said why
                    discard_if_fresh()
                if sweep and stop.code in (1, 2):  # a failed job, not a stop signal (128 + signal)
                    _job_failed(run_dir, f"its workers exited with code {stop.code} (their lines are above)")
                raise
            # A sweeper (Optuna) minimises what the task returns: rank 0's result, from its summary.
            return json.loads((run_dir / "summary.json").read_text())["final eval loss"]
        world = ranks.world()
        try:
            lock = RunLock(run_dir) if world.main else None  # one writer per run dir
            run = build(cfg, HydraConfig.get().overrides.task)
        except Exception as e:
            # Exit from inside the job: an exception would reach Hydra, which prints more lines about it.
            refuse(e)
        display = Display(cfg.trainer.max_steps, quiet=not world.main)
        display.start(cfg, run_dir, str(run.device) + (f" x {world.size} processes" if world.size > 1 else ""),
                      sum(p.numel() for p in run.params))
        for note in [*notes, *run.notes]:
            display.note(note)
        try:
            summary = train(run, run_dir, display, hparams=run_settings(HydraConfig.get()),
                            on_start=lambda: _write_hydra_files(run_dir, hydra_files))
        except (preemption.Preempted, Diverged, CheckpointWriteError) as e:
            if sweep and not isinstance(e, preemption.Preempted):  # a stop signal stops the sweep; a failed job does not
                _job_failed(run_dir, str(e))
            if world.main:  # every rank stops at the same step for the same reason: say it once
                print(f"error: {e}", file=sys.stderr)
                log.error(str(e))
            sys.exit(e.exit_code)
        except ConfigError as e:  # a checkpoint that does not fit, found while resuming
            refuse(e)
        if world.main:  # for scripts, and for the launcher to hand a sweeper the objective
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        display.finish(summary, run_dir)
        if lock:
            lock.release()
        return summary["final eval loss"]


@contextlib.contextmanager
def _stopped_during_startup(run_dir: Path, fresh: bool, discard: Callable[[], None]) -> Iterator[None]:
    """A stop signal before the loop takes it (preemption.StopRequest): one line, exit 128 +
    signal; a run dir this command made goes (no step was trained into it), an existing run's
    dir stays as it was. After the loop took a first Ctrl-C, a second one is main's to report."""
    try:
        yield
    except (KeyboardInterrupt, preemption.Interrupted) as e:
        if preemption.StopRequest.entered:
            raise
        if ranks.world().size == 1:  # workers share the dir: the launcher's own start-up line suffices
            discard()
        signum = preemption.signal_number(e)
        message = (f"{_startup_stop(signum)}; "
                   + ("nothing was kept" if fresh else f"{run_dir} is as it was but for this line in train.log"))
        print(f"error: {message}", file=sys.stderr)
        if not fresh and ranks.world().main:
            log.error(message)
        sys.exit(128 + signum)


def _startup_stop(signum: int) -> str:
    return f"stopped by {preemption.describe(signum)} during start-up, before the first step"


def _hydra_files(cfg: DictConfig) -> dict[str, str]:
    """What Hydra writes into RUN_DIR/.hydra/ (hydra.output_subdir is null: trainer writes it, once
    the run is accepted): the composed config, Hydra's own, and the command-line overrides."""
    hydra_cfg = HydraConfig.get()
    return {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_cfg}),
            "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task)}


def _write_hydra_files(run_dir: Path, files: dict[str, str]) -> None:
    """Each file whole or not at all (a resumed run's are replaced): a temp file, then a rename."""
    (run_dir / ".hydra").mkdir(exist_ok=True)
    for name, text in files.items():
        tmp = run_dir / ".hydra" / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(run_dir / ".hydra" / name)


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


def name_jobs_by_sweep(args: list[str]) -> list[str]:
    """In multirun, name each job's dir by its swept overrides only: all of them may be too long a name.

    Hydra's own override parser decides which overrides sweep (a,b / range() / choice() / glob() ...).
    """
    if not {"-m", "--multirun"} & set(args) or any("override_dirname.exclude_keys" in a for a in args):
        return args
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:  # a malformed override: Hydra itself reports it, in one line
        return args
    fixed = [o.key_or_group for o in parsed if not o.is_sweep_override() and not o.is_hydra_override()]
    excluded = ",".join(_NEVER_IN_NAMES + fixed)
    # Next to the last override: argparse takes no overrides after trailing flags like --cfg hydra.
    at = max((i + 1 for i, a in enumerate(args) if "=" in a and not a.startswith("-")), default=len(args))
    return [*args[:at], f"hydra.job.config.override_dirname.exclude_keys=[{excluded}]", *args[at:]]


@contextlib.contextmanager
def one_repository_per_listing(searchpath: list[str]) -> Iterator[None]:
    """For --help: Hydra lists each group's options with get_group_options, which builds and
    deep-copies a whole config repository (the ConfigStore included) per call: about 120 calls,
    2-3 s of CPU. Help only reads, so one repository per (config, overrides) serves every call.
    It is built with the user's hydra.searchpath overrides (searchpath), which Hydra's listing
    leaves out, so that their options are listed too. Should Hydra's internals change, help is
    as slow as before, and lists what Hydra lists."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    make = getattr(ConfigLoaderImpl, "_parse_overrides_and_create_caching_repo", None)
    if make is None:
        yield
        return
    made: dict[tuple[int, str | None, tuple[str, ...]], object] = {}

    def once(self: ConfigLoaderImpl, config_name: str | None, overrides: list[str]) -> object:
        key = (id(self), config_name, tuple(overrides))
        if key not in made:
            made[key] = make(self, config_name, [*overrides, *(o for o in searchpath if o not in overrides)])
        return made[key]

    ConfigLoaderImpl._parse_overrides_and_create_caching_repo = once
    try:
        yield
    finally:
        ConfigLoaderImpl._parse_overrides_and_create_caching_repo = make


@contextlib.contextmanager
def mode_from_the_command_line(argv: list[str]) -> Iterator[None]:
    """Hydra 1.3 composes the whole config once only to read hydra.mode (Hydra.get_mode), and
    again to run: 0.25-0.3 s of a config error's ~1.2 s. trainer's configs and recipes never set
    hydra.mode, so here the command line decides it (-m), as get_mode returning None makes Hydra
    do. Not when the command line sets hydra.mode or adds a config dir (whose files might)."""
    from hydra._internal.hydra import Hydra

    own = ("hydra.mode=", "+hydra.mode=", "++hydra.mode=", "hydra.searchpath=", "--config-dir", "-cd")
    get_mode = getattr(Hydra, "get_mode", None)
    if get_mode is None or any(a.startswith(own) for a in argv):
        yield
        return
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.get_mode = get_mode


def main(argv: list[str]) -> None:
    worker = ranks.is_worker()
    if worker:
        # Started by torchrun: join the group, and take rank 0's clock for the run dir's name.
        from trainer import distributed

        world = distributed.init()
        config.started(distributed.shared_start_time())
        if not world.main:  # quiet: rank 0 writes the dir's .hydra/ and train.log
            log.setLevel(logging.WARNING)
    try:
        helping = {"-h", "--help", "--hydra-help"} & set(argv)
        searchpath = [a for a in argv if a.startswith("hydra.searchpath=")]
        with contextlib.ExitStack() as shortcuts:
            if helping:
                shortcuts.enter_context(one_repository_per_listing(searchpath))
            shortcuts.enter_context(mode_from_the_command_line(argv))
            cli.run_hydra(task, name_jobs_by_sweep(argv))
        if worker:
            distributed.finish()
    except JobFailed:  # Hydra ran every job, then raised the first failure
        failed, jobs = _sweep["failed"], _sweep["jobs"]
        print(f"error: {len(failed)} of {len(jobs)} jobs failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, preemption.Interrupted) as e:
        signum = preemption.signal_number(e)
        if preemption.StopRequest.entered:  # the first Ctrl-C asked the loop for a clean stop
            print("error: interrupted at once (second Ctrl-C); the newest checkpoint is from before", file=sys.stderr)
        else:  # before Hydra's job began: nothing was made
            print(f"error: {_startup_stop(signum)}", file=sys.stderr)
        sys.exit(128 + signum)
