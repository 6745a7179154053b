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


class LazyEpochSampler(EpochSampler):
    """EpochSampler's contract (every rank its every-N-th share of one permutation per (seed,
    epoch), drop_last, a resumable start) without making the permutation: the order is a keyed
    pseudo-random bijection of [0, n) (a 4-round Feistel network, cycle-walked into range),
    computed index by index. Memory stays the same for a thousand windows or a billion; a
    materialized permutation of a large memory-mapped corpus would cost more than the batches."""

    _MASK64 = (1 << 64) - 1

    def __iter__(self) -> Iterator[int]:
        bits = max(2, (len(self.dataset) - 1).bit_length())
        half = (bits + 1) // 2
        keys = [_mix(self.seed * 1_000_003 + self.epoch * 8 + r) for r in range(4)]
        n = len(self.dataset)
        for j in range(self.start, self.num_samples):
            yield _feistel(self.rank + j * self.num_replicas, n, half, keys)


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of x."""
    x = (x + 0x9E3779B97F4A7C15) & LazyEpochSampler._MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & LazyEpochSampler._MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & LazyEpochSampler._MASK64
    return x ^ (x >> 31)


def _feistel(i: int, n: int, half: int, keys: list[int]) -> int:
    """The image of i in [0, n) under the keyed permutation of [0, 4**half), walked until in range."""
    mask = (1 << half) - 1
    while True:
        left, right = i >> half, i & mask
        for key in keys:
            left, right = right, left ^ (_mix(right ^ key) & mask)
        i = (left << half) | right
        if i < n:
            return i


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
