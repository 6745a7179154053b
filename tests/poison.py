"""A data source with one poisoned training sample, and a model whose loss explodes on it."""

import math
import os

import torch
from torch.utils.data import Dataset

from tests.user_model import BigramLM
from trainer.data import SyntheticData

POISON_INDEX = -1  # the training sample to poison; tests set it


class _Flagged(Dataset):
    def __init__(self, inner, poison_index):
        self.inner, self.poison_index = inner, poison_index

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return {**self.inner[i], "poison": torch.tensor(float(i == self.poison_index))}


class PoisonedData(SyntheticData):
    def __init__(self, **keys):
        super().__init__(**keys)
        self.train = _Flagged(self.train, POISON_INDEX)
        self.eval = _Flagged(self.eval, -1)


class PoisonableLM(BigramLM):
    """A poisoned sample multiplies the loss, and so every gradient, by 1000."""

    def forward(self, input_ids, poison):
        return super().forward(input_ids) * (1 + 999 * poison.max())


class OverflowingLM(BigramLM):
    """Gradients far beyond fp16's range on every step: a run whose loss scale can only fall."""

    def forward(self, input_ids):
        return super().forward(input_ids) * 1e30


class ScaledLossLM(BigramLM):
    """Training forward call n (1-based) has its loss, and so every gradient, multiplied by SCALE[n]
    (tests set it: {40: 1e4} for an explosion, {12: nan, 13: nan} for a run of non-finite steps)."""

    SCALE: dict[int, float] = {}

    def __init__(self, **keys):
        super().__init__(**keys)
        self.calls = 0

    def forward(self, input_ids):
        loss = super().forward(input_ids)
        if self.training:
            self.calls += 1
            if self.calls in self.SCALE:
                return loss * self.SCALE[self.calls]
        return loss


class HalfNormalGradLM(BigramLM):
    """The only gradient is z * SIGMA on one weight, z ~ N(0, 1) afresh each step: the total
    gradient norm is half-normal, whose p95 is SIGMA * 1.95996 (the 97.5% normal quantile)."""

    SIGMA = 3.0

    def forward(self, input_ids):
        z = torch.randn(())
        return self.out.bias[0] * z * self.SIGMA + 0.0 * super().forward(input_ids).detach()



class NaNGradLM(BigramLM):
    """On training forward call n (1-based), the gradients of the parameters $NAN_GRADS names for n
    ("7=out.bias;23=emb.weight,out.bias") become NaN, and no other's: the loss gains 0 * (p * NaN).sum()
    for each. The parameters are read in forward, where FSDP2 has them whole, and the setting is an
    environment variable, which the processes of a distributed run inherit."""

    def __init__(self, **keys):
        super().__init__(**keys)
        self.calls = 0
        self.poisoned = {int(n): names.split(",") for n, names in
                         (part.split("=") for part in os.environ.get("NAN_GRADS", "").split(";") if part)}

    def forward(self, input_ids):
        loss = super().forward(input_ids)
        if self.training:
            self.calls += 1
            for name in self.poisoned.get(self.calls, ()):
                loss = loss + 0.0 * (self.get_parameter(name) * math.nan).sum()
        return loss
