"""Adaptive clipping policies: AGC, ZClip, AutoClip and AdaGC. Same interface as trainer/clipping.py.

Their statistics live on the device and every decision is a tensor operation, so none of them
adds a host sync to the step. Non-finite norms (a step that will be skipped) never enter the
statistics. Their state is saved in checkpoints (``state_dict``).
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from trainer import distributed
from trainer.clipping import ClipResult, TensorNorms, _grads, measure, present, scale_to_norm, total_norm


def _clip_to(params: list[torch.Tensor], norm: torch.Tensor, target: torch.Tensor,
             tensors: TensorNorms | None) -> ClipResult:
    """Scale all gradients so their total L2 norm is at most target (a tensor; inf: leave them)."""
    coef = scale_to_norm(params, norm, target)
    return ClipResult(norm, norm * coef, coef < 1.0, tensors)


class ZClip:
    """Z-score clipping (Kumar et al., 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training").

    After ``warmup_steps`` steps whose norms seed the mean and variance, an EMA (``alpha``) of the
    total norm's mean and variance is kept. A norm whose z-score exceeds ``z_thresh`` is clipped to
    mean + z_thresh * std / (z / z_thresh) (the paper's adaptive scaling: the further out, the
    harder), and that clipped value, not the spike, updates the EMA. ``max_norm`` optionally caps
    every step, warm-up included.
    """

    def __init__(self, alpha: float, z_thresh: float, warmup_steps: int, eps: float = 1e-6,
                 max_norm: float | None = None):
        self.alpha, self.z_thresh, self.warmup_steps, self.eps = alpha, z_thresh, warmup_steps, eps
        self.max_norm = math.inf if max_norm is None else float(max_norm)
        self.calls = 0  # a host counter: how many steps this policy has seen
        self.buffer: torch.Tensor | None = None  # the warm-up norms
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    def __call__(self, params: list[torch.Tensor]) -> ClipResult:
        norm, tensors = measure(params, 2.0)
        finite = torch.isfinite(norm)
        if self.buffer is None:
            self.buffer = torch.full((self.warmup_steps,), math.nan, device=norm.device)
        cap = torch.full_like(norm, self.max_norm)
        if self.calls < self.warmup_steps:
            self.buffer[self.calls] = torch.where(finite, norm, math.nan)
            self.calls += 1
            if self.calls == self.warmup_steps:
                self.mean = torch.nanmean(self.buffer)
                self.var = torch.nanmean((self.buffer - self.mean) ** 2)
            return _clip_to(params, norm, cap, tensors)
        self.calls += 1
        std = self.var.sqrt()
        z = (norm - self.mean) / (std + self.eps)
        spike = z > self.z_thresh
        threshold = self.mean + self.z_thresh * std / (z / self.z_thresh)
        target = torch.minimum(torch.where(spike, threshold, math.inf), cap)
        seen = torch.where(spike, threshold, norm)
        mean = self.alpha * self.mean + (1 - self.alpha) * seen
        var = self.alpha * self.var + (1 - self.alpha) * (seen - mean) ** 2
        self.mean, self.var = torch.where(finite, mean, self.mean), torch.where(finite, var, self.var)
        return _clip_to(params, norm, target, tensors)

    def state_dict(self) -> dict[str, object]:
        return {"calls": self.calls, "buffer": self.buffer, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.calls, self.buffer, self.mean, self.var = state["calls"], state["buffer"], state["mean"], state["var"]


class AutoClip:
    """AutoClip (Seetharaman et al., 2020): clip to the ``percentile``-th percentile of the norms seen.

    The history, the current step included, is the last ``history`` finite norms (a ring buffer
    on the device), so memory stays bounded on long runs.
    """

    def __init__(self, percentile: float, history: int):
        self.q = percentile / 100.0
        self.size = history
        self.calls = 0
        self.norms: torch.Tensor | None = None

    def __call__(self, params: list[torch.Tensor]) -> ClipResult:
        norm, tensors = measure(params, 2.0)
        if self.norms is None:
            self.norms = torch.full((self.size,), math.nan, device=norm.device)
        self.norms[self.calls % self.size] = torch.where(torch.isfinite(norm), norm, math.nan)
        self.calls += 1
        return _clip_to(params, norm, torch.nanquantile(self.norms, self.q), tensors)

    def state_dict(self) -> dict[str, object]:
        return {"calls": self.calls, "norms": self.norms}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.calls, self.norms = state["calls"], state["norms"]


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """Per output unit (row) for matrices and kernels; the whole tensor for biases and gains."""
    if x.dim() <= 1:
        return x.norm()
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))


class AGC:
    """Adaptive gradient clipping (Brock et al., 2021, NFNets), unit-wise.

    Each unit's gradient norm is clipped to ``clipping`` times its weight norm (floored at
    ``eps``). Biases and gains are one unit each, as in the paper's reference code. Parameters
    whose names match a pattern in ``exclude`` (fnmatch, e.g. ``head.*``; the paper leaves the
    final classifier unclipped) are left alone. The total norm is measured before and after.
    """

    needs_whole_rows = True  # it measures each row of a weight, which FSDP's shards split: build refuses the pair

    def __init__(self, clipping: float, eps: float = 1e-3, exclude: list[str] | None = None):
        self.clipping, self.eps = clipping, eps
        self.exclude = list(exclude or [])
        self.excluded: set[int] = set()  # ids of excluded parameters, set by bind()

    def bind(self, model: nn.Module) -> None:
        """Resolve exclude patterns to parameters; it needs their names, which __call__ does not get."""
        self.excluded = {id(p) for name, p in model.named_parameters()
                         if any(fnmatch.fnmatch(name, pat) for pat in self.exclude)}

    def __call__(self, params: list[torch.Tensor]) -> ClipResult:
        norm, tensors = measure(params, 2.0)
        grads = _grads(params)
        clipped = torch.zeros((), dtype=torch.bool, device=norm.device)
        for p in params:
            if p.grad is None or id(p) in self.excluded:
                continue
            max_norm = unitwise_norm(p.detach()).clamp(min=self.eps) * self.clipping
            grad_norm = unitwise_norm(p.grad)
            trigger = grad_norm > max_norm
            p.grad.mul_(torch.where(trigger, max_norm / grad_norm.clamp(min=1e-6), 1.0))
            clipped |= trigger.any()
        return ClipResult(norm, total_norm(grads, 2.0), clipped, tensors)


def tensor_norms(grads: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each gradient tensor's L2 norm, [tensors], and the tensors to scale in place. FSDP's
    gradients are DTensor shards: each rank squares its shards' norms and one all-reduce sums them,
    so every rank has the whole tensors' norms; the local shards are what it scales."""
    if grads and hasattr(grads[0], "to_local"):
        local = [g.to_local() for g in grads]
        squares = torch.stack(torch._foreach_norm(local)) ** 2
        return local, distributed.all_reduce_sum(squares).sqrt()
    return grads, torch.stack(torch._foreach_norm(grads))


class AdaGC:
    """AdaGC (Wang et al., 2025, "AdaGC: Enhancing LLM Pretraining Stability via Adaptive Gradient
    Clipping"): each parameter tensor's gradient is clipped against an EMA of its own past norms.

    For ``warmup_steps`` steps the total norm is clipped to ``max_norm`` and each tensor's reference
    norm is the smallest clipped norm it has had. After, a tensor whose norm exceeds ``ratio`` times
    its reference is scaled to it, and the reference moves as an EMA (``beta``) of the tensor's
    clipped norms. As the authors' PyTorch code (lishuai-97/AdaGC, clip_ratio 1.04, beta 0.99, 100
    warm-up steps): a clipped tensor enters the EMA at its threshold. All on the device, foreach;
    a non-finite step (skipped anyway) leaves the references as they were. Under FSDP each rank
    squares the norms of its shards and one all-reduce sums them: every rank gets the whole
    tensors' norms, and the same coefficients.
    """

    def __init__(self, max_norm: float, ratio: float, beta: float, warmup_steps: int, eps: float = 1e-6):
        self.max_norm, self.ratio, self.beta, self.warmup_steps, self.eps = max_norm, ratio, beta, warmup_steps, eps
        self.calls = 0  # a host counter: steps seen
        self.reference: torch.Tensor | None = None  # per tensor, in the order of the gradients

    def __call__(self, params: list[torch.Tensor]) -> ClipResult:
        grads, norms = tensor_norms(_grads(params))
        norm = torch.linalg.vector_norm(norms)
        finite = torch.isfinite(norm)
        if self.reference is None:
            self.reference = torch.full_like(norms, math.inf)
        self.calls += 1
        if self.calls <= self.warmup_steps:
            coef = torch.clamp(self.max_norm / (norm + self.eps), max=1.0)
            torch._foreach_mul_(grads, coef)
            clipped_norms = norms * coef
            seen = torch.minimum(self.reference, clipped_norms)
            clipped = coef < 1.0
        else:
            threshold = self.ratio * self.reference
            over = norms > threshold
            coefs = torch.where(over, threshold / (norms + self.eps), 1.0)
            torch._foreach_mul_(grads, list(coefs.unbind()))
            clipped_norms = norms * coefs
            entered = torch.minimum(norms, threshold)  # a clipped tensor enters the EMA at its threshold
            seen = torch.where(torch.isinf(self.reference), entered,
                               self.beta * self.reference + (1 - self.beta) * entered)
            clipped = over.any()
        self.reference = torch.where(finite, seen, self.reference)
        tensors = TensorNorms(norms, present(params, grads))
        return ClipResult(norm, torch.linalg.vector_norm(clipped_norms), clipped, tensors)

    def state_dict(self) -> dict[str, object]:
        return {"calls": self.calls, "reference": self.reference}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.calls, self.reference = state["calls"], state["reference"]
