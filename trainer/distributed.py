"""More than one process: torchrun's environment, the process group, wrapping the model, launching.

trainer starts no process and runs no collective of its own: workers come from torch's elastic
launcher (what torchrun runs), every collective is torch.distributed's, and the model is wrapped
by DDP or FSDP2's fully_shard.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import sys
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from trainer.ranks import World, is_worker, world  # noqa: F401  (distributed.world() is read everywhere)


def init() -> World:
    """Join the process group torchrun set up: NCCL for CUDA tensors, gloo for CPU ones."""
    w = world()
    if w.size > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(w.local_rank)
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return w


def shared_start_time() -> datetime.datetime:
    """Rank 0's clock, so every rank names the same timestamped run dir."""
    now = [datetime.datetime.now()]
    if dist.is_initialized():
        dist.broadcast_object_list(now, src=0)
    return now[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In place across ranks (no-op in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """In place across ranks, the largest (no-op in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def agreed_signal(signum: int | None) -> int | None:
    """The stop signal any rank has received (the largest number), so that all ranks stop together."""
    flag = torch.tensor([signum or 0])  # a CPU tensor: gloo, no device sync
    return int(all_reduce_max(flag)) or None


def all_gather_object(obj: object) -> list[object]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def differing_ranks(values: list[float], rtol: float = 1e-5) -> list[tuple[int, int, float, float]]:
    """Every rank's values against rank 0's, as (rank, index, its value, rank 0's) where they differ
    by more than rtol (relative; two NaNs agree), the first difference of each rank; one all-gather."""
    ranks = all_gather_object(values)
    out = []
    for rank, theirs in enumerate(ranks[1:], start=1):
        for i, (mine, ref) in enumerate(zip(theirs, ranks[0], strict=True)):
            if not (mine == ref or (math.isnan(mine) and math.isnan(ref))
                    or abs(mine - ref) <= rtol * max(abs(mine), abs(ref))):
                out.append((rank, i, mine, ref))
                break
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (writing a cache the others then read: a tokenized dataset), then
    the other ranks; rank 0 lets them go even if it failed, so each says its own error."""
    w = world()
    if w.size > 1 and not w.main:
        barrier()
    try:
        yield
    finally:
        if w.size > 1 and w.main:
            barrier()


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, strategy: str, device: torch.device, mp_dtype: torch.dtype | None,
         reshard_after_forward: bool = True) -> nn.Module:
    """DDP or FSDP2 (fully_shard on each transformer block, then the root), or the model as it is.

    ``auto`` means DDP. With one process every strategy leaves the model as it is. FSDP's own MixedPrecisionPolicy casts the
    parameters to mp_dtype for compute and reduces gradients in fp32.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model  # one process: nothing to replicate or shard, whatever the strategy
    if strategy in ("auto", "ddp"):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32)
        for block in _blocks(model):
            fully_shard(block, mp_policy=mp, reshard_after_forward=reshard_after_forward)
        fully_shard(model, mp_policy=mp, reshard_after_forward=reshard_after_forward)
        return model
    return model


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated layers to shard one by one: the children of every nn.ModuleList."""
    return [block for m in model.modules() if isinstance(m, nn.ModuleList) for block in m]


class _LauncherLines(logging.Filter):
    """Drops the elastic launcher's own log lines (`W... Sending process N closing signal SIGTERM`,
    `E... failed (exitcode: 2)`): every way a job ends is already one line from trainer (the
    workers' refusal, the stop with its checkpoint, or launch()'s line naming the failed rank)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(("torch.distributed.elastic", "torch.distributed.run"))


def launch(nproc: int, args: list[str], quiet: bool = True) -> None:
    """Run `trainer train ARGS` in nproc workers on this node through torch's elastic launcher,
    exactly as `torchrun --standalone --nproc-per-node=N -m trainer train ARGS` would.

    quiet: without the launcher's log lines (HYDRA_FULL_ERROR=1 keeps them, for debugging)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    parsed = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}",
         # and SLURM's warning before the time limit, so the workers checkpoint on it too
         "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
         "--module", "trainer", "train", *args])
    handlers = set()  # the handlers that print the launcher's records: torch's, torch.distributed's
    for name in ("torch.distributed.run", "torch.distributed.elastic.agent") if quiet else ():
        logger: logging.Logger | None = logging.getLogger(name)
        while logger:
            handlers.update(logger.handlers)
            logger = logger.parent if logger.propagate else None
    hide = _LauncherLines()
    for handler in handlers:
        handler.addFilter(hide)
    try:
        run(parsed)
    except SignalException as e:
        # The launcher passed the stop signal on and waited for the workers: they have written
        # their checkpoint and rank 0 has said where. Exit as they did, without the launcher's traceback.
        sys.exit(128 + int(e.sigval))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode == 2:  # bad input: the worker has said what, in one line
            sys.exit(2)
        how = (f"was killed by signal {-failure.exitcode}" if failure.exitcode < 0
               else f"exited with code {failure.exitcode}")
        print(f"error: worker rank {rank} {how}; the job was stopped (its own error, if any, is above)",
              file=sys.stderr)
        sys.exit(1)
    finally:
        for handler in handlers:
            handler.removeFilter(hide)
