"""Training batches epoch after epoch, with a position that checkpoints save and resume restores.

Each epoch's order is torch's DistributedSampler permutation, drawn from (seed, epoch) alone, with
rank r of N taking every N-th index; so a resumed run can start mid-epoch at exactly the next
unseen batch without replaying the earlier ones, and N ranks with batch b see, step for step,
the same samples as one process with batch N*b.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """DistributedSampler (shuffled, drop_last) that starts ``start`` indices into this rank's share."""

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def __len__(self) -> int:
        return self.num_samples - self.start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)


class BatchStream:
    """Iterates a DataLoader over EpochSampler forever, counting the batches it has handed out."""

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **loader_kwargs):
        self.sampler = sampler
        # Its own generator seeds the workers, so building an iterator never touches the global RNG.
        gen = torch.Generator().manual_seed(sampler.seed)
        self.loader = DataLoader(dataset, sampler=sampler, drop_last=True, generator=gen, **loader_kwargs)
        self.batch_size = loader_kwargs["batch_size"]
        self.epoch = 0
        self.index = 0  # batches of this epoch already handed out
        self.last = (0, -1)  # (epoch, index) of the batch handed out last
        self.skip: set[tuple[int, int]] = set()  # positions never to hand out (the spike guard's)
        self._it: Iterator | None = None

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start = self.index * self.batch_size
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.index, self._it = self.epoch + 1, 0, None
            return next(self)
        self.last = (self.epoch, self.index)
        self.index += 1
        return next(self) if self.last in self.skip else batch

    def state_dict(self) -> dict[str, object]:
        return {"epoch": self.epoch, "index": self.index, "skip": sorted(list(p) for p in self.skip)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.epoch, self.index, self._it = state["epoch"], state["index"], None
        self.skip = {tuple(p) for p in state["skip"]}
