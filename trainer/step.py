"""One optimizer step, in the order of the PyTorch AMP recipe.

autocast forward -> loss / grad_accum -> scaled backward (per micro-batch)
-> unscale_ -> clip -> step (skipped if the gradients are not finite) -> scaler update.

Everything returned is a device tensor: nothing here waits for the device.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, NamedTuple

import torch
from torch import nn

from trainer.clipping import ClipResult
from trainer.monitoring.layers import LayerProbe
from trainer.precision import Precision


class StepResult(NamedTuple):
    loss: torch.Tensor  # mean loss over the step's micro-batches
    norm: torch.Tensor  # total gradient norm before clipping, unscaled
    clipped_norm: torch.Tensor  # total gradient norm after clipping
    clipped: torch.Tensor  # bool
    finite: torch.Tensor  # bool: False means the update was skipped


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's tensors on the device, copied without waiting (from pinned memory on CUDA)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _sync_gradients(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Under DDP, all-reduce gradients only on the last micro-batch of a step."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Iterable[dict[str, torch.Tensor]],
    grad_accum: int,
    precision: Precision,
    clip: Callable[[list[torch.Tensor]], ClipResult],
    params: list[torch.Tensor],
    probe: LayerProbe | None = None,
) -> StepResult:
    """Accumulate gradients over grad_accum micro-batches, then clip once and step once.

    A probe (log steps only, with log.per_layer=true) measures per-layer norms and updates.
    """
    loss_sum = torch.zeros((), device=params[0].device)
    for i, batch in enumerate(micro_batches):
        with _sync_gradients(model, last=i == grad_accum - 1):
            with precision.autocast():
                # Dividing each micro-batch's mean loss makes the accumulated gradient that of the mean
                # over all grad_accum * batch_size samples, as if it were one large batch.
                loss = model(**batch) / grad_accum
            precision.backward(loss)
        loss_sum += loss.detach()

    precision.unscale_(optimizer)  # clip thresholds and logged norms are in true units
    if probe:
        probe.measure_grads()
    result = clip(params)
    finite = torch.isfinite(result.norm)
    if probe:
        probe.snapshot()
    precision.step(optimizer, finite)
    if probe:
        probe.measure_updates()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum, result.norm, result.clipped_norm, result.clipped, finite)
