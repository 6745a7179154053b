"""Decoder-only language model: causal attention, next-token cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.transformer import Encoder


class GPT(nn.Module):
    TASKS = ("lm",)  # what trainer.capabilities pairs with the data's TASKS and the `task` key

    def __init__(self, *, num_layers: int, hidden_size: int, num_heads: int, intermediate_size: int,
                 dropout: float, max_seq_len: int, vocab_size: int):
        super().__init__()
        self.net = Encoder(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                           intermediate_size=intermediate_size, dropout=dropout, max_seq_len=max_seq_len,
                           vocab_size=vocab_size, causal=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss over positions 0..T-2 predicting 1..T-1."""
        logits = self.net(input_ids[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, 1:].flatten())
