"""BERT-style encoder trained with the masked-LM objective.

Masking happens inside forward so that any token stream can train it: mask_prob of the
positions are chosen; of those 80% become [MASK], 10% a random token, 10% stay; the loss is
the cross-entropy on the chosen positions only. Eval (``model.eval()``) draws its mask from a
fixed seed, so eval losses are comparable across evals and runs. Token id 1 is [MASK] in the
built-in tokenizers (see trainer/data/tokens.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.data.tokens import FIRST_REGULAR_ID, MASK_ID
from trainer.models.transformer import Encoder

_EVAL_MASK_SEED = 1234


class BertMLM(nn.Module):
    def __init__(self, *, num_layers: int, hidden_size: int, num_heads: int, intermediate_size: int,
                 dropout: float, max_seq_len: int, vocab_size: int, mask_prob: float):
        super().__init__()
        self.mask_prob = mask_prob
        self.vocab_size = vocab_size
        self.net = Encoder(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                           intermediate_size=intermediate_size, dropout=dropout, max_seq_len=max_seq_len,
                           vocab_size=vocab_size, causal=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy on the masked positions."""
        inputs, labels = self.mask(input_ids)
        logits = self.net(inputs)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

    def mask(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (masked inputs, labels with -100 where no prediction is asked). No host sync."""
        gen = None
        if not self.training:
            gen = torch.Generator(device=input_ids.device).manual_seed(_EVAL_MASK_SEED)
        u = torch.rand(input_ids.shape, device=input_ids.device, generator=gen)
        chosen = u < self.mask_prob
        labels = torch.where(chosen, input_ids, -100)
        # Reuse u to split the chosen positions 80/10/10 without a second draw.
        r = u / self.mask_prob
        random_ids = torch.randint(FIRST_REGULAR_ID, self.vocab_size, input_ids.shape,
                                   device=input_ids.device, generator=gen)
        inputs = torch.where(chosen & (r < 0.8), MASK_ID, input_ids)
        inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, inputs)
        return inputs, labels
