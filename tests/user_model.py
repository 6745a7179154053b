"""A model written outside trainer, plugged in with model._target_=tests.user_model.BigramLM."""

import torch.nn.functional as F
from torch import nn


class BigramLM(nn.Module):
    """Predicts each token from the one before it. Takes the model group's keys, uses two."""

    def __init__(self, vocab_size: int, hidden_size: int, **unused):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, hidden_size)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, input_ids):
        logits = self.out(self.emb(input_ids[:, :-1]))
        return F.cross_entropy(logits.flatten(0, 1), input_ids[:, 1:].flatten())


class TaggerLM(BigramLM):
    """A user's model that declares what it trains: build checks `task` against it."""

    TASKS = ("classification",)


class RowClip:
    """A user's row-wise clip policy: like AGC, it cannot see whole rows under FSDP."""

    needs_whole_rows = True

    def __init__(self, **unused):
        pass


def scaled_fp16(device, **unused):
    """A user's precision policy with a GradScaler: like amp=fp16, refused under FSDP."""
    from trainer.precision import fp16

    return fp16(device, init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=100)


class SlowData:
    """A data source that takes its time to load, as a big corpus does: it creates the file named
    by $SLOW_DATA_READY and then waits, so that a test can signal while start-up is surely under way."""

    def __init__(self, **synthetic_keys):
        import os
        import time
        from pathlib import Path

        from trainer.data import SyntheticData

        Path(os.environ["SLOW_DATA_READY"]).touch()
        time.sleep(120)
        self.__dict__.update(vars(SyntheticData(**synthetic_keys)))


class UnsyncedLM(BigramLM):
    """A user's model with a bug DDP cannot see: its output layer is left out of DDP's gradient
    all-reduce (DDP's own `_ddp_params_and_buffers_to_ignore`), so each rank keeps its own gradients
    there and the ranks' weights drift apart; log.check_ranks names the rank."""

    def __init__(self, **keys):
        super().__init__(**keys)
        self._ddp_params_and_buffers_to_ignore = ["out.weight", "out.bias"]


class StrictLM(BigramLM):
    """A user's model written to the README's contract before `model.z_loss` was a key: it names each
    key it is given, and takes no **kwargs."""

    def __init__(self, num_layers, hidden_size, num_heads, intermediate_size, dropout, max_seq_len, vocab_size):
        super().__init__(vocab_size=vocab_size, hidden_size=hidden_size)


class ExtrasLM(BigramLM):
    """A user's model that returns a dict: "loss" is trained on, "mean_logit" is logged (train/mean_logit)."""

    def forward(self, input_ids):
        logits = self.out(self.emb(input_ids[:, :-1]))
        return {"loss": F.cross_entropy(logits.flatten(0, 1), input_ids[:, 1:].flatten()),
                "mean_logit": logits.mean().detach()}
