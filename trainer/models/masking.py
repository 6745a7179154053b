"""Masked-LM inputs, drawn inside the model's forward so that any token stream trains a masked LM
(the native BERT and model=hf share it)."""

from __future__ import annotations

import torch

from trainer.config import ConfigError

_EVAL_MASK_SEED = 1234


def check_mask_id(mask_token_id: int | None) -> int:
    if mask_token_id is None:
        raise ConfigError("task=mlm: the data's tokenizer has no mask token (its tokenizer_config.json or "
                          "special_tokens_map.json names none, and it has no [MASK]); set model.mask_token_id")
    return mask_token_id


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, special_tokens_mask: torch.Tensor | None,
                *, prob: float, mask_token_id: int, vocab_size: int, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked inputs, labels with -100 where no prediction is asked), as BERT's recipe: prob of the
    real (not padding, not special) positions are chosen; of those 80% become the mask token, 10% a
    random token, 10% stay. Eval draws from a fixed seed, so eval losses are comparable. No host sync."""
    gen = None
    if not training:
        gen = torch.Generator(device=input_ids.device).manual_seed(_EVAL_MASK_SEED)
    u = torch.rand(input_ids.shape, device=input_ids.device, generator=gen)
    chosen = u < prob
    if attention_mask is not None:
        chosen &= attention_mask.bool()
    if special_tokens_mask is not None:
        chosen &= ~special_tokens_mask.bool()
    labels = torch.where(chosen, input_ids, -100)
    # Reuse u to split the chosen positions 80/10/10 without a second draw.
    r = u / prob
    random_ids = torch.randint(0, vocab_size, input_ids.shape, device=input_ids.device, generator=gen)
    inputs = torch.where(chosen & (r < 0.8), mask_token_id, input_ids)
    inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, inputs)
    return inputs, labels
