"""The ``trainer`` command: picks the subcommand (trainer/commands/), and turns config and input
errors into one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import difflib
import faulthandler
import os
import re
import signal
import sys
from typing import Callable, Iterator

from trainer import preemption, ranks


USAGE = """\
usage: trainer <command> [overrides...]

commands:
{commands}

examples:
  trainer train
  trainer train model=bert amp=fp16 clip.max_norm=1.0
  trainer train -m clip.max_norm=0.5,1,5

Set HYDRA_FULL_ERROR=1 to see full tracebacks for errors.
"""


def one_line(e: BaseException) -> str | None:
    """The user-facing one-line message for a config or input error; None for anything else (a bug)."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from trainer.config import ConfigError

    if isinstance(e, ConfigError):
        return str(e)
    if isinstance(e, OSError) and e.filename:  # a path the user gave that cannot be made or written
        return f"{e.filename}: {e.strerror or e}"
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


# HYDRA_FULL_ERROR: the user's own setting is read once, here. Hydra prints its errors itself (as
# several lines and tracebacks) unless the variable is 1, so it is 1 while Hydra runs: errors
# reach fail(), which prints one line, except for real bugs, which keep their traceback.
_USERS_FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR")
FULL_ERROR = _USERS_FULL_ERROR == "1"


def _set_full_error(value: str | None) -> None:
    if value is None:
        os.environ.pop("HYDRA_FULL_ERROR", None)
    else:
        os.environ["HYDRA_FULL_ERROR"] = value


@contextlib.contextmanager
def users_hydra_full_error() -> Iterator[None]:
    """The user's own HYDRA_FULL_ERROR while inside: for processes started from a Hydra job (workers)."""
    inside_hydra = os.environ.get("HYDRA_FULL_ERROR")
    _set_full_error(_USERS_FULL_ERROR)
    try:
        yield
    finally:
        _set_full_error(inside_hydra)


def user_message(e: BaseException) -> str | None:
    """e's one line for the user, or None: a bug, or HYDRA_FULL_ERROR=1 (then the traceback shows)."""
    return None if FULL_ERROR else one_line(e)


def fail(e: BaseException) -> None:
    """Print e as one line and exit 2 if it is a config or input error; otherwise re-raise it."""
    msg = user_message(e)
    if msg is None:
        raise e
    world = ranks.world()
    print(f"error{f' (rank {world.rank})' if world.size > 1 else ''}: {msg}", file=sys.stderr)
    sys.exit(2)


def run_hydra(task: Callable[[], object], args: list[str]) -> None:
    """Run a Hydra task on args; config and input errors become one line on stderr and exit 2."""
    _set_full_error("1")
    sys.argv = ["trainer", *args]
    try:
        task()
    except Exception as e:
        fail(e)
    finally:
        _set_full_error(_USERS_FULL_ERROR)


def main(argv: list[str] | None = None) -> None:
    # First, before the seconds of imports: a stop signal from now on ends the command with a line.
    preemption.stop_during_startup()
    # A run that seems hung: `kill -USR2 PID` prints every thread's Python stack to stderr.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    try:
        _run(sys.argv[1:] if argv is None else argv)
    except (KeyboardInterrupt, preemption.Interrupted) as e:  # `train` says more itself
        signum = preemption.signal_number(e)
        print(f"error: stopped by {preemption.describe(signum)}", file=sys.stderr)
        sys.exit(128 + signum)


def _run(argv: list[str]) -> None:
    from trainer import config
    from trainer.commands import COMMANDS  # each command imports its work only when it runs

    usage = USAGE.format(commands="\n".join(c.USAGE for c in COMMANDS.values()))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage, end="")
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}' (commands: {', '.join(COMMANDS)})\n\n{usage}", file=sys.stderr, end="")
        sys.exit(2)
    config.register()
    if name == "train":
        COMMANDS[name].main(rest)  # errors inside Hydra's job are mapped there (run_hydra)
        return
    try:
        COMMANDS[name].main(rest)
    except Exception as e:
        fail(e)


if __name__ == "__main__":
    main()
