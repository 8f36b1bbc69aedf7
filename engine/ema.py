"""Exponential moving average of a model's weights (Polyak averaging), updated after each optimiser step.

The averaged model is what small-data recipes evaluate and keep: it smooths the noise of the last steps
of SGD on a small set, so its validation figures (and early stopping on them) are steadier than the raw
weights'. Used by :mod:`engine.train` (``optim.ema_decay``); the state rides in ``Accelerator.save_state``
(``register_for_checkpointing``), so a resumed run continues the same average.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """``ema = d * ema + (1 - d) * weights`` after each optimiser step, with the decay warmed up.

    The decay of update ``n`` (0-based) is ``min(decay, (1 + n) / (10 + n))`` (as TensorFlow's
    ``ExponentialMovingAverage(num_updates=n)``): 0.1 at the first update, 0.5 at the 8th, 0.9 at the 80th,
    0.99 at the 890th, so the average forgets the random initialisation after a few steps rather than
    after ``1 / (1 - decay)`` of them. Every floating-point tensor of the state dict is averaged --
    parameters and BatchNorm running statistics alike (as timm's ``ModelEmaV3``); integer buffers
    (``num_batches_tracked``) are copied.

    Args:
        model: the (unwrapped) model being trained; copied, in eval mode, without gradients, on its device.
        decay: the target decay in ``(0, 1)``, e.g. 0.999.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, n: int) -> float:
        """The decay used by update ``n`` (0-based)."""
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each optimiser step)."""
        weight = 1.0 - self.decay_at(self.updates)
        self.updates += 1
        avg, cur = [], []
        src = model.state_dict()
        for name, e in self.model.state_dict().items():
            if e.is_floating_point():
                avg.append(e)
                cur.append(src[name])
            else:
                e.copy_(src[name])
        if avg:
            torch._foreach_lerp_(avg, cur, weight)  # e += weight * (w - e)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])
