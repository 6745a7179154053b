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
