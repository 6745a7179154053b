"""One optimizer step, in the order of the PyTorch AMP recipe.

autocast forward -> loss / grad_accum -> scaled backward (per micro-batch)
-> unscale_ -> clip -> step (skipped if the gradients are not finite) -> scaler update.

Everything returned is a device tensor: nothing here waits for the device. The step adds as few
device ops as it can to what a hand-written loop runs (trainer bench counts them): the loss is
the one the backward used, the skip flag is two ops on the norm the clip measured anyway.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Mapping, NamedTuple

import torch
from torch import nn

from trainer.clipping import ClipResult, TensorNorms
from trainer.config import ConfigError
from trainer.monitoring.layers import LayerProbe
from trainer.precision import Precision
from trainer.skip_step import SkipStep


class StepResult(NamedTuple):
    loss: torch.Tensor  # mean loss over the step's micro-batches
    norm: torch.Tensor  # total gradient norm before clipping, unscaled
    clipped_norm: torch.Tensor | None  # after clipping; None: the policy derives it from norm (clipped_stats)
    clipped: torch.Tensor | None  # bool: did clipping change the gradients; None as clipped_norm
    skipped: torch.Tensor  # 1.0 when the gradients were not finite and the update was skipped, else 0.0
    spiked: torch.Tensor | None = None  # with guard.skip: 1.0 when the update was skipped as a spike
    tensors: TensorNorms | None = None  # each gradient tensor's norm (the clip's), to name non-finite ones
    extras: dict[str, torch.Tensor] | None = None  # the model's other outputs (model_loss), mean over micro-batches


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's tensors on the device, copied without waiting (from pinned memory on CUDA)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _sync_gradients(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Under DDP, all-reduce gradients only on the last micro-batch of a step."""
    if last or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def model_loss(out: torch.Tensor | Mapping[str, torch.Tensor]
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """What model(**batch) returned, as (loss, extras): the loss tensor itself, or a mapping's "loss"
    (trained on) and its other entries (scalar tensors, such as the GPT's "z_loss"), logged as
    train/<name>."""
    if isinstance(out, torch.Tensor):
        return out, None
    if not isinstance(out, Mapping) or "loss" not in out:
        what = "a dict without a \"loss\"" if isinstance(out, Mapping) else type(out).__name__
        raise ConfigError(f"model._target_: forward(**batch) returned {what}; it must return the loss (a scalar "
                          "tensor), or a dict of scalar tensors with the loss under \"loss\"")
    return out["loss"], {k: v for k, v in out.items() if k != "loss"}


def _add_extras(total: dict[str, torch.Tensor] | None, extras: dict[str, torch.Tensor], grad_accum: int
                ) -> dict[str, torch.Tensor]:
    """The running mean over a step's micro-batches of each extra, as the step's loss is."""
    scaled = {k: v.detach().float() / grad_accum for k, v in extras.items()}
    return scaled if total is None else {k: total[k] + v for k, v in scaled.items()}


def not_finite(norm: torch.Tensor) -> torch.Tensor:
    """1.0 if norm is inf or NaN, else 0.0, as a float32 tensor: the ``found_inf`` fused optimizers take.

    norm - norm is 0 for a finite norm and NaN otherwise, and only NaN differs from itself: two ops,
    where ``(~torch.isfinite(norm)).float()`` dispatches sixteen (abs, ne, eq, mul, casts).
    """
    found_inf = norm - norm
    if found_inf.dtype != torch.float32:  # a norm of half-precision gradients
        found_inf = found_inf.float()
    return found_inf.ne_(found_inf)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Iterable[dict[str, torch.Tensor]],
    grad_accum: int,
    precision: Precision,
    clip: Callable[[list[torch.Tensor]], ClipResult],
    params: list[torch.Tensor],
    probe: LayerProbe | None = None,
    skip: SkipStep | None = None,
) -> StepResult:
    """Accumulate gradients over grad_accum micro-batches, then clip once and step once.

    A probe (log steps only, with log.per_layer=true) measures per-layer norms and updates; skip
    (guard.skip) flags a spiking step, whose update is then skipped like a non-finite one.
    """
    loss_sum = extras = None
    for i, batch in enumerate(micro_batches):
        with _sync_gradients(model, last=i == grad_accum - 1):
            with precision.autocast():
                loss, more = model_loss(model(**batch))
                # Dividing each micro-batch's mean loss makes the accumulated gradient that of the mean
                # over all grad_accum * batch_size samples, as if it were one large batch.
                loss = loss / grad_accum
            precision.backward(loss)
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        if more:
            extras = _add_extras(extras, more, grad_accum)

    precision.unscale_(optimizer)  # clip thresholds and logged norms are in true units
    if probe:
        probe.measure_grads()
    result = clip(params)
    skipped = not_finite(result.norm)
    spiked, found_inf = skip(loss_sum, result.norm, skipped) if skip else (None, skipped)
    if probe:
        probe.snapshot()
    precision.step(optimizer, found_inf, spikes=spiked is not None)
    if probe:
        probe.measure_updates()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum, result.norm, result.clipped_norm, result.clipped, skipped, spiked, result.tensors,
                      extras)
