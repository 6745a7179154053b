"""trainer's subcommands, one module each: NAME, USAGE (its lines in `trainer --help`) and main(argv).

A command module imports only what parsing its arguments needs; the work is imported when the
command runs, so `trainer --help` and a mistyped command answer at once.
"""

from trainer.commands import bench, export, inspect_grads, prepare, report, train

COMMANDS = {command.NAME: command for command in (train, prepare, bench, export, inspect_grads, report)}
