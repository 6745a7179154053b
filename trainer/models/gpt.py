"""Decoder-only language model: causal attention, next-token cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.transformer import Encoder


class GPT(nn.Module):
    TASKS = ("lm",)  # what trainer.capabilities pairs with the data's TASKS and the `task` key

    def __init__(self, *, num_layers: int, hidden_size: int, num_heads: int, intermediate_size: int,
                 dropout: float, max_seq_len: int, vocab_size: int, z_loss: float = 0.0):
        super().__init__()
        self.z_loss = z_loss
        self.net = Encoder(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                           intermediate_size=intermediate_size, dropout=dropout, max_seq_len=max_seq_len,
                           vocab_size=vocab_size, causal=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Mean next-token loss over positions 0..T-2 predicting 1..T-1.

        With z_loss > 0, in training: {"loss": that + z-loss, "z_loss": the z-loss}, the z-loss being
        z_loss x the mean over positions of log(Z)^2, Z the softmax's normaliser (PaLM, section 5;
        OLMo 2 uses 1e-5). It keeps log(Z) near 0, so the logits cannot drift upward together, which
        the cross-entropy alone does not see. Evaluation reports the cross-entropy alone.
        """
        logits = self.net(input_ids[:, :-1]).flatten(0, 1).float()
        loss = F.cross_entropy(logits, input_ids[:, 1:].flatten())
        if not (self.z_loss and self.training):
            return loss
        z_loss = self.z_loss * torch.logsumexp(logits, dim=-1).square().mean()
        return {"loss": loss + z_loss, "z_loss": z_loss.detach()}
