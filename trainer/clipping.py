"""Gradient-clipping policies, chosen by the ``clip`` config group.

A policy is called once per optimizer step on the accumulated, unscaled gradients and
returns tensors (never Python numbers, so the step needs no host sync): the total norm
before clipping, the total norm after, and whether it clipped. The total norm is always
measured, even by ``NoClip``, because it is logged and because a non-finite norm is how
the step detects non-finite gradients.

A policy whose post-clip norm follows from the pre-clip norm and settings that hold for a whole
log interval (``NormClip``, ``NoClip``) returns None for both and gives them for all the
interval's steps at once at the log step (``clipped_stats``): the step then runs no op beyond
torch's own clip_grad_norm_.

Every built-in policy also returns each gradient tensor's norm (TensorNorms), a step of the work
the total norm does anyway, kept by reference: a log step names the tensors of a step whose
gradients were not finite from them (monitoring/nonfinite.py), and good steps pay nothing for it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from trainer.controller import Controller


class TensorNorms(NamedTuple):
    """Each gradient tensor's norm before clipping, in the order of the parameters that had one."""

    norms: torch.Tensor  # stacked; under FSDP a DTensor whose full_tensor() reduces the shards' norms
    present: tuple[int, ...] | None  # the positions in params of those parameters; None: every one


class ClipResult(NamedTuple):
    norm: torch.Tensor  # total gradient norm before clipping (norm_type of the policy, else L2)
    clipped_norm: torch.Tensor | None = None  # the same norm after clipping; None: see clipped_stats
    clipped: torch.Tensor | None = None  # bool: did clipping change the gradients; None: see clipped_stats
    tensors: TensorNorms | None = None  # each tensor's norm, to name non-finite ones; None: not measured


def _plain(norm: torch.Tensor) -> torch.Tensor:
    """A norm as one plain tensor equal on every rank.

    Under FSDP the gradients are DTensor shards, and a norm of them is a DTensor whose full_tensor()
    reduces the shards' norms across ranks: the true global norm (as torchtitan's clip_grad_norm_
    does). Under DDP the gradients are already all-reduced, so every rank has it.
    """
    if type(norm) is torch.Tensor:  # one process, or DDP: DTensor is not imported (a second of start-up)
        return norm
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def total_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """get_total_norm (foreach), as one plain tensor equal on every rank."""
    return _plain(get_total_norm(grads, norm_type, foreach=True))


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def present(params: list[torch.Tensor], grads: list[torch.Tensor]) -> tuple[int, ...] | None:
    """TensorNorms.present: the positions of the parameters with a gradient, when some have none."""
    return None if len(grads) == len(params) else tuple(i for i, p in enumerate(params) if p.grad is not None)


def measure(params: list[torch.Tensor], norm_type: float = 2.0) -> tuple[torch.Tensor, TensorNorms | None]:
    """The gradients' total norm, as total_norm, and each tensor's norm on the way.

    The same three ops as torch's get_total_norm (one _foreach_norm, a stack, a vector_norm) on
    gradients on one device (build puts the model on one), so the total is the same bits; it keeps
    the stacked per-tensor norms, which get_total_norm drops.
    """
    grads = _grads(params)
    if not grads:
        return total_norm(grads, norm_type), None
    each = torch.stack(torch._foreach_norm(grads, norm_type))
    return _plain(torch.linalg.vector_norm(each, norm_type)), TensorNorms(each, present(params, grads))


def scale_to_norm(params: list[torch.Tensor], norm: torch.Tensor, max_norm: float | torch.Tensor) -> torch.Tensor:
    """Scale all gradients so their total norm is at most max_norm (torch's clip_grads_with_norm_).

    Returns the coefficient torch applied, so the post-clip norm is norm * coef: no second pass.
    """
    clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def clip_by_norm(params: list[torch.Tensor], max_norm: float, norm_type: float
                 ) -> tuple[torch.Tensor, TensorNorms | None]:
    """torch's clip_grad_norm_ (foreach), in two parts so the norm is returned as a tensor."""
    norm, tensors = measure(params, norm_type)
    clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm, tensors


class NormClip:
    """Scale all gradients together so their total norm is at most max_norm (torch's clip_grad_norm_).

    With ``controller=True`` it carries a Controller (trainer/controller.py) that may move
    max_norm and ask the loop to lower the LR; the other keys configure it.
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0, controller: bool = False, **controller_keys):
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.controller = Controller(**controller_keys) if controller else None
        self._clip = clip_by_norm

    def compile(self) -> None:
        """Run the norm and the scaling under torch.compile (trainer.compile=true): a handful of
        kernels become one or two. A max_norm the controller moves compiles once more, then the
        value is a graph input (dynamo's automatic dynamic)."""
        self._clip = torch.compile(clip_by_norm)

    def __call__(self, params: list[torch.Tensor]) -> ClipResult:
        norm, tensors = self._clip(params, self.max_norm, self.norm_type)
        return ClipResult(norm, tensors=tensors)

    def clipped_stats(self, norms: list[float]) -> tuple[list[float], list[bool]]:
        """Post-clip norms and clipped flags of an interval's steps, from their pre-clip norms (on the
        host, at the log step), with the coefficient torch's clip_grads_with_norm_ applied.

        max_norm is the interval's: the controller moves it only after the log step has read them.
        """
        coefs = [min(self.max_norm / (n + 1e-6), 1.0) for n in norms]
        return [n * c for n, c in zip(norms, coefs)], [n > self.max_norm for n in norms]

    def state_dict(self) -> dict[str, object]:
        return {"max_norm": self.max_norm, "controller": self.controller.state_dict() if self.controller else {}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.max_norm = state["max_norm"]
        if self.controller:
            self.controller.load_state_dict(state["controller"])


class ValueClip:
    """Clamp each gradient element to [-clip_value, clip_value] (torch's clip_grad_value_)."""

    def __init__(self, clip_value: float):
        self.clip_value = float(clip_value)

    def __call__(self, params: list[torch.Tensor]) -> ClipResult:
        norm, tensors = measure(params, 2.0)
        grads = _grads(params)
        clipped = total_norm(grads, float("inf")) > self.clip_value
        torch.nn.utils.clip_grad_value_(params, self.clip_value, foreach=True)
        return ClipResult(norm, total_norm(grads, 2.0), clipped, tensors)


class NoClip:
    """Leave gradients as they are; still measure their L2 norm."""

    def __call__(self, params: list[torch.Tensor]) -> ClipResult:
        norm, tensors = measure(params, 2.0)
        return ClipResult(norm, tensors=tensors)

    def clipped_stats(self, norms: list[float]) -> tuple[list[float], list[bool]]:
        return norms, [False] * len(norms)
