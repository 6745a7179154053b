"""A generated, learnable sequence task: a fixed random successor table, with noise.

Each token is followed by succ[token] with probability 1 - noise, else by a uniform random
token. A model that learns the table reaches a loss near the noise entropy, far below
log(vocab_size), so a working trainer shows the loss falling within a few hundred steps.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from trainer.data.tokens import FIRST_REGULAR_ID


class _Dicts(TensorDataset):
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tensors[0][i]}


def generate(num: int, seq_len: int, vocab_size: int, noise: float, succ: torch.Tensor,
             gen: torch.Generator) -> torch.Tensor:
    """num sequences of seq_len ids in [FIRST_REGULAR_ID, vocab_size)."""
    seqs = torch.empty(num, seq_len, dtype=torch.long)
    seqs[:, 0] = torch.randint(FIRST_REGULAR_ID, vocab_size, (num,), generator=gen)
    for t in range(1, seq_len):
        random_ids = torch.randint(FIRST_REGULAR_ID, vocab_size, (num,), generator=gen)
        keep = torch.rand(num, generator=gen) >= noise
        seqs[:, t] = torch.where(keep, succ[seqs[:, t - 1]], random_ids)
    return seqs


class SyntheticData:
    """Train and eval sets of the same task, drawn from a generator seeded by trainer.seed."""

    TASKS = ("lm", "mlm")

    def __init__(self, *, vocab_size: int, num_samples: int, eval_samples: int, noise: float, seq_len: int,
                 seed: int = 0, **_loader_keys):
        gen = torch.Generator().manual_seed(seed)
        succ = torch.full((vocab_size,), 0, dtype=torch.long)
        succ[FIRST_REGULAR_ID:] = FIRST_REGULAR_ID + torch.randperm(vocab_size - FIRST_REGULAR_ID, generator=gen)
        self.vocab_size = vocab_size
        self.train = _Dicts(generate(num_samples, seq_len, vocab_size, noise, succ, gen))
        self.eval = _Dicts(generate(eval_samples, seq_len, vocab_size, noise, succ, gen))
