"""Built-in models. Each is called as ``model(**batch)`` and returns the mean loss (a scalar)."""

from trainer.models.bert import Bert
from trainer.models.gpt import GPT

__all__ = ["GPT", "Bert"]
