"""Name the parameter tensors whose gradients were not finite, at the log step after a skipped step.

The clip policy measured each tensor's gradient norm on the way to the total (clipping.TensorNorms)
and the step kept them by reference, so good steps pay nothing; only for a step the log read shows
was skipped does this look at them: one pass, one host read. A tensor's norm is non-finite exactly
when one of its gradient's elements is (or their squares overflow, which makes the step's norm
non-finite too).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.clipping import TensorNorms

MAX_NAMED = 5


def nonfinite_positions(tensors: TensorNorms) -> list[int]:
    """Positions in the run's params (build's order) of the tensors whose gradient norm is not finite.

    Under FSDP the norms are of each rank's shards: full_tensor() reduces them, a collective every
    rank reaches, as every rank sees the same skipped steps.
    """
    norms = tensors.norms.full_tensor() if hasattr(tensors.norms, "full_tensor") else tensors.norms
    bad = torch.isfinite(norms).logical_not_().nonzero().flatten().tolist()
    return [tensors.present[i] for i in bad] if tensors.present is not None else bad


# Why a skipped step's tensors cannot be named (Meter.first_nonfinite gives one of these for positions).
NOT_MEASURED = "the clip policy returned no per-tensor norms"
NOT_KEPT = "the checkpoint resumed from, written before they were kept, does not say"


def describe(model: nn.Module, params: list[torch.Tensor], step: int, positions: list[int] | str, skipped: int) -> str:
    """One line on an interval's skipped steps: the first one's (`step`) non-finite tensors by name
    (at most 5), from their positions in params (or why they are not known), and how many more.
    """
    others = f"; {skipped - 1} more skipped steps in this interval" if skipped > 1 else ""
    if isinstance(positions, str):
        return f"step {step}: gradients not finite, update skipped (which tensors: {positions}){others}"
    if not positions:
        return (f"step {step}: every parameter tensor's gradient norm is finite but their total overflowed, "
                f"update skipped{others}")
    names = {id(p): name for name, p in model.named_parameters()}
    named = ", ".join(names.get(id(params[i]), f"params[{i}]") for i in positions[:MAX_NAMED])
    more = f" (first {MAX_NAMED})" if len(positions) > MAX_NAMED else ""
    return (f"step {step}: gradients not finite in {len(positions)} of {len(params)} parameter tensors{more}: "
            f"{named}; update skipped{others}")
