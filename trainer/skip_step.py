"""Skip-step (guard.skip): leave out an update whose loss or gradient norm spikes, decided on the device.

OLMo-core's SkipStepOptimizer, with the statistics and the decision kept on the device: a step
whose loss or total gradient norm is more than ``sigma`` standard deviations above the mean of
the last ``window`` finite steps (once half a window has been seen) is flagged, and the flag joins
the non-finite flag as the ``found_inf`` fused optimizers take, so the update is skipped with no
host sync, weights and optimizer state untouched. As in OLMo-core, a skipped spike still joins the
window: a window of good steps only never takes in a lasting rise of the loss, and then skips
every step after it for good, a run frozen (the instability benchmark showed it:
recipes/stability.md). The standard deviation is the sample one (n - 1), as torch.std_mean gives
OLMo-core. With more than one process the loss judged is the mean over the ranks, so that every
rank skips alike.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer import distributed


class SkipStep:
    def __init__(self, sigma: float, window: int, device: torch.device):
        self.sigma, self.window = float(sigma), int(window)
        # The last finite steps' [loss, norm], a ring; their running sum and sum of squares; how many
        # it holds (at most window) and the slot the next one goes to: all on the device, in float64
        # (a variance from running sums keeps its digits), shaped so that no step needs a cast or view.
        f64 = dict(dtype=torch.float64, device=device)
        self.values = torch.zeros(window, 2, **f64)
        self.sum, self.sumsq = torch.zeros(2, **f64), torch.zeros(2, **f64)
        self.count = torch.zeros((), **f64)
        self.head = torch.zeros(1, dtype=torch.long, device=device)

    @classmethod
    def from_config(cls, g: Any, device: torch.device) -> "SkipStep | None":
        """The skip-step guard.skip asks for; None when it is off."""
        return cls(g.skip_sigma, g.skip_window, device) if g.skip else None

    def __call__(self, loss: torch.Tensor, norm: torch.Tensor, found_inf: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's spike flag, and the flag to skip it on (spiked or not finite): 1.0 or 0.0,
        device tensors. A finite step joins the window, spiked or not.

        found_inf: the step's non-finite flag; such a step is skipped as that, is no spike, and
        never joins. About forty small ops (trainer bench --variant guard.skip=true), no host sync."""
        x = torch.stack([loss.detach(), norm]).double()
        world = distributed.world().size
        if world > 1:
            # Every rank must decide alike: the norm is the same on all, the loss is each rank's, so
            # it is averaged (one scalar collective, no host sync; only with guard.skip).
            x = distributed.all_reduce_sum(x) / torch.tensor([world, 1.0], dtype=x.dtype, device=x.device)
        mean = self.sum / self.count.clamp(min=1)
        var = (self.sumsq - self.sum * mean) / (self.count - 1).clamp(min=1)
        excess = x - mean
        # excess > sigma * std, without the square root; judged once half a window is there
        spike = ((excess > 0) & (excess * excess > self.sigma ** 2 * var)).any()
        spike = spike & (self.count >= max(2, self.window // 2))
        spiked = spike * (1 - found_inf)
        skip = spiked + found_inf  # the two never both
        finite = found_inf == 0
        old = self.values.index_select(0, self.head)[0]
        new = torch.where(finite, x, old)
        self.sum += new - old
        self.sumsq += new * new - old * old
        self.values.index_copy_(0, self.head, new[None])
        self.head = (self.head + finite) % self.window
        self.count = (self.count + finite).clamp(max=self.window)
        return spiked, skip

    def recent(self) -> list[list[float]]:
        """The window's [loss, norm] pairs, oldest first (a host sync)."""
        return _in_order(self.values, int(self.count), int(self.head))

    def state_dict(self) -> dict[str, object]:
        # The tensors as they are: saving them is the checkpoint's own copy, no read in the loop.
        return {"values": self.values, "count": self.count, "head": self.head}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """The most recent steps that fit this window (guard.skip_window may have changed)."""
        recent = _in_order(state["values"], int(state["count"]), int(state["head"]))[-self.window:]
        self.values.zero_()
        if recent:
            self.values[:len(recent)] = torch.tensor(recent, dtype=torch.float64, device=self.values.device)
        self.sum.copy_(self.values.sum(0))
        self.sumsq.copy_((self.values * self.values).sum(0))
        self.count.fill_(len(recent))
        self.head.fill_(len(recent) % self.window)


def _in_order(values: torch.Tensor, count: int, head: int) -> list[list[float]]:
    """A ring's [loss, norm] pairs, oldest first."""
    window = values.shape[0]
    return values[[(head - count + i) % window for i in range(count)]].tolist()
