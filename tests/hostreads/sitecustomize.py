"""Counting host reads: every call of Tensor.item, tolist, __bool__, __float__, cpu or numpy made
from trainer's own code (the data pipeline's host-side index tensors left out).

tests/test_loop.py installs `counting` in its own process. For tests/test_distributed.py, Python
imports this module at start-up when its folder is on PYTHONPATH: in a process started with
COUNT_HOST_READS=DIR and a RANK (a torchrun worker) it installs the same counting, and DIR/RANK.json
gets the list of calls at exit. Elsewhere, importing it does nothing.
"""

import os
import sys

METHODS = ("item", "tolist", "__bool__", "__float__", "cpu", "numpy")


def counting(name, original, calls):
    """Tensor method `original` (called `name`), appending "name file:line" to calls for each call
    from trainer's code outside trainer/data."""
    def counted(self, *args, **kwargs):
        trainer = sys.modules.get("trainer")
        frame = sys._getframe(1)
        if trainer is not None:
            package = os.path.dirname(trainer.__file__)
            caller = frame.f_code.co_filename
            if caller.startswith(package) and not caller.startswith(os.path.join(package, "data")):
                calls.append(f"{name} {os.path.relpath(caller, package)}:{frame.f_lineno}")
        return original(self, *args, **kwargs)
    return counted


if os.environ.get("COUNT_HOST_READS") and "RANK" in os.environ:
    import atexit
    import json

    import torch

    _calls: list[str] = []
    for _name in METHODS:
        setattr(torch.Tensor, _name, counting(_name, getattr(torch.Tensor, _name), _calls))

    def _write():
        with open(os.path.join(os.environ["COUNT_HOST_READS"], f"{os.environ['RANK']}.json"), "w") as f:
            json.dump(_calls, f)

    atexit.register(_write)
