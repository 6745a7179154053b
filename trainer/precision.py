"""Mixed-precision policies: autocast dtype and, for fp16 only, a GradScaler.

Chosen by the ``amp`` config group. The train step calls these in the order of the PyTorch
AMP recipe: autocast forward, ``backward`` (scaled), ``unscale_``, clip, ``step``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch


@dataclass
class Precision:
    name: str
    device_type: str
    dtype: torch.dtype | None  # autocast dtype; None: plain fp32, no autocast
    scaler: torch.amp.GradScaler | None = None
    min_scale: float = 0.0  # a loss scale below this means training has diverged

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to true units, so clipping thresholds and logged norms mean what they say."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, found_inf: torch.Tensor, spikes: bool = False) -> None:
        """Apply the update unless found_inf is 1.0 (gradients not finite; with spikes=True, or the
        step spiked); update the loss scale (on non-finite gradients only)."""
        if self.scaler:
            if spikes:
                # After unscale_, GradScaler.step only hands its own non-finite flag to the optimizer;
                # found_inf holds that flag (the unscaled norm is not finite exactly then) or a spike.
                # update() backs the scale off on the scaler's flag alone, as unscale_ recorded it.
                step_if_finite(optimizer, found_inf)
            else:
                # The scaler found the infs itself during unscale_, and skips the step on them.
                self.scaler.step(optimizer)
            self.scaler.update()
        else:
            step_if_finite(optimizer, found_inf)

    def loss_scale(self) -> float:
        """Current loss scale (1.0 without a scaler). Syncs with the device: call at log intervals."""
        return self.scaler.get_scale() if self.scaler else 1.0


def step_if_finite(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """optimizer.step(), skipped when ``found_inf`` (a float32 tensor) is 1.0, leaving weights and
    state untouched.

    On an accelerator, optimizers that support AMP's on-device skip (torch's fused AdamW/SGD/Adam)
    receive the flag (step_on_device), so there is no host sync; any other optimizer needs the flag
    on the host: one sync per step. On a CPU the device is the host: the flag is read where it
    already is, with no sync to avoid, while the on-device skip would cost fused AdamW a ``sub_``
    per parameter tensor every step (it takes the flag back off each step count): 1.3% of the
    tiny bench preset's instructions per step.
    """
    if found_inf.device.type != "cpu" and getattr(optimizer, "_step_supports_amp_scaling", False):
        step_on_device(optimizer, found_inf)
    elif not found_inf.item():
        optimizer.step()


def step_on_device(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """The on-device skip: the flag handed to a fused optimizer as ``found_inf``, exactly as
    GradScaler hands it; the optimizer leaves weights and state as they were when it is 1.0."""
    optimizer.grad_scale = None
    optimizer.found_inf = found_inf
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf


def fp32(device: torch.device) -> Precision:
    return Precision("fp32", device.type, None)


def bf16(device: torch.device) -> Precision:
    return Precision("bf16", device.type, torch.bfloat16)


def fp16(device: torch.device, init_scale: float, growth_factor: float, backoff_factor: float,
         growth_interval: int, min_scale: float = 0.0) -> Precision:
    scaler = torch.amp.GradScaler(device.type, init_scale=init_scale, growth_factor=growth_factor,
                                  backoff_factor=backoff_factor, growth_interval=growth_interval)
    return Precision("fp16", device.type, torch.float16, scaler, min_scale)


def _matmul_seconds(dtype: torch.dtype | None, size: int = 128, repeats: int = 5) -> float:
    """The fastest of `repeats` square matmuls under autocast to dtype (None: fp32)."""
    a = torch.randn(size, size)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for _ in range(3):  # untimed: the first calls in a process pay the math library's start-up
            a @ a
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
    return best


def emulation_factor(precision: Precision, device: torch.device) -> float | None:
    """On a CPU without native half precision (oneDNN's own check), how much slower a matmul in
    the autocast dtype measured than in fp32 (a few milliseconds); None where it is native."""
    if device.type != "cpu" or precision.dtype is None:
        return None
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    native = getattr(torch.ops.mkldnn, check.get(precision.dtype, ""), None)
    if native is None or native():
        return None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like for like, and fair on a busy machine (threads would spin against it)
    try:
        return _matmul_seconds(precision.dtype) / _matmul_seconds(None)
    finally:
        torch.set_num_threads(threads)


def cpu_note(precision: Precision, factor: float) -> str:
    """The start-up note for an emulated autocast dtype."""
    return (f"amp={precision.name} on this CPU: no native {precision.name}, so autocast is emulated (a matmul "
            f"measured {factor:.0f}x slower than fp32 here); on this CPU, amp=fp32 trains faster")
