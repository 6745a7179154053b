"""Counts a distributed worker's host reads, for tests/test_distributed.py.

Python imports this module at start-up when its folder is on PYTHONPATH. In a process started with
COUNT_HOST_READS=DIR and a RANK (a torchrun worker), every call of Tensor.item, tolist, __bool__,
__float__, cpu or numpy made from trainer's own code (the data pipeline's host-side index tensors
left out, as tests/test_loop.py's in-process count does) is counted, and DIR/RANK.json gets the
list of calls at exit. Elsewhere it does nothing.
"""

import os

if os.environ.get("COUNT_HOST_READS") and "RANK" in os.environ:
    import atexit
    import json
    import sys

    import torch

    calls: list[str] = []

    def _counting(name, original):
        def counted(self, *args, **kwargs):
            trainer = sys.modules.get("trainer")
            caller = sys._getframe(1).f_code.co_filename
            if trainer is not None:
                package = os.path.dirname(trainer.__file__)
                if caller.startswith(package) and not caller.startswith(os.path.join(package, "data")):
                    calls.append(f"{name} {os.path.relpath(caller, package)}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)
        return counted

    for _name in ("item", "tolist", "__bool__", "__float__", "cpu", "numpy"):
        setattr(torch.Tensor, _name, _counting(_name, getattr(torch.Tensor, _name)))

    def _write():
        with open(os.path.join(os.environ["COUNT_HOST_READS"], f"{os.environ['RANK']}.json"), "w") as f:
            json.dump(calls, f)

    atexit.register(_write)
