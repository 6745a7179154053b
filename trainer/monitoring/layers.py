"""Per-layer diagnostics (``log.per_layer=true``): each module's gradient norm and update/weight ratio.

Measured only on log steps, when the loop hands a LayerProbe to the step; on other steps, and
when off, it costs nothing.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.nn.utils import get_total_norm


class LayerProbe:
    def __init__(self, model: nn.Module):
        """model: the user's own (build.unwrap), so module names carry no wrapper's prefix."""
        groups: dict[str, list[torch.Tensor]] = defaultdict(list)
        for name, p in model.named_parameters():
            if p.requires_grad:
                module = name.rpartition(".")[0] or name
                groups[module].append(p)
        self.names = list(groups)
        self.groups = list(groups.values())
        self.grad_norms: torch.Tensor | None = None
        self.ratios: torch.Tensor | None = None
        self._before: list[list[torch.Tensor]] = []

    def measure_grads(self) -> None:
        """Each module's gradient norm (call after unscale_, before clipping)."""
        self.grad_norms = torch.stack([
            get_total_norm([p.grad for p in ps if p.grad is not None] or [torch.zeros(1)], 2.0, foreach=True)
            for ps in self.groups
        ])

    def snapshot(self) -> None:
        self._before = [[p.detach().clone() for p in ps] for ps in self.groups]

    def measure_updates(self) -> None:
        """||w_after - w_before|| / ||w_before|| per module (call after the optimizer step)."""
        self.ratios = torch.stack([
            get_total_norm([p.detach() - b for p, b in zip(ps, before, strict=True)], 2.0, foreach=True)
            / get_total_norm(before, 2.0, foreach=True).clamp(min=1e-12)
            for ps, before in zip(self.groups, self._before, strict=True)
        ])
        self._before = []

    def read(self) -> dict[str, float]:
        """TensorBoard tags and values of the last measured step (one host read)."""
        grads, ratios = torch.stack([self.grad_norms.float(), self.ratios.float()]).tolist()
        return {
            **{f"layers/grad_norm/{n}": v for n, v in zip(self.names, grads, strict=True)},
            **{f"layers/update_ratio/{n}": v for n, v in zip(self.names, ratios, strict=True)},
        }
