"""Data sources. A source is built with the ``data`` keys as keyword arguments and provides
``train`` and ``eval`` datasets whose items are dicts of tensors (``input_ids`` at least), and
``vocab_size``."""

from trainer.data.labelled import LabelledText
from trainer.data.shards import TokenShards
from trainer.data.synthetic import SyntheticData
from trainer.data.text import TextData

__all__ = ["LabelledText", "SyntheticData", "TextData", "TokenShards"]
