"""The optimiser and its learning-rate schedule, and the fine-tuning controls: learning-rate groups and
freezing by epoch.

``engine.train`` builds its optimiser with :func:`make_optimizer` (over :func:`param_groups`), its schedule with
:func:`make_scheduler` (per optimiser step: :class:`WarmupCosine`, OneCycle; per epoch: ReduceLROnPlateau), and
calls a :class:`Freezer` at every epoch start. The fine-tuning settings (``OptimConfig`` / ``RunConfig`` in
``engine/train/config.py``)::

    run.init_from: musicnn:MSD_musicnn     # weights to start from (engine.checkpoint.init_from)
    run.freeze: [backbone.input_bn, backbone.timbral, backbone.temporal, backbone.midend]
    optim.freeze_epochs: 2                 # frozen for epochs 0-1, trained from epoch 2 on (0: for the whole run)
    optim.pretrained_lr_scale: 0.1         # loaded weights learn at 0.1 x optim.lr, the new head at optim.lr

* **Groups.** Every parameter is in the optimiser, frozen or not (a parameter whose ``grad`` is None is
  skipped by Adam/AdamW/SGD: no update, no weight decay, no moment state), so unfreezing needs no new
  optimiser and the saved optimiser state always has the same layout. With ``pretrained_lr_scale != 1`` the
  parameters ``init_from`` loaded form the group ``"pretrained"`` at ``lr * scale`` and the rest (the
  re-initialised head, front-end parameters kept as built) the group ``"new"`` at ``lr``; every schedule
  scales both alike (the ratio stays).
* **Freezing.** ``requires_grad`` of the parameters under ``run.freeze`` is set from the epoch alone, at the
  start of each epoch (``frozen = epoch < freeze_epochs``; ``freeze_epochs: 0`` = the whole run), so a resumed
  run -- at an epoch boundary or mid-epoch -- freezes exactly what the uninterrupted one did. Frozen layers
  compute their function unchanged: their BatchNorm layers run in eval mode (running statistics kept) while
  frozen. Backward stops at the first trained layer, so frozen epochs are cheaper.
* **Several processes.** DDP registers the parameters that require gradients when it wraps the model: a
  whole-run freeze happens before (those parameters stay out of DDP); a temporary one after, with DDP's
  ``find_unused_parameters`` on so the frozen epochs' missing gradients are expected (:func:`ddp_kwargs`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.config import ConfigError

if TYPE_CHECKING:
    from engine.train.config import OptimConfig

log = logging.getLogger(__name__)

__all__ = ["Freezer", "WarmupCosine", "ddp_kwargs", "make_optimizer", "make_scheduler", "param_groups", "total_steps"]


def param_groups(model: nn.Module, cfg: Any, pretrained: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Optimiser parameter groups of ``model`` (every parameter, frozen ones included).

    ``cfg`` is the optimiser config (``lr``, ``pretrained_lr_scale``); ``pretrained`` the tensor names loaded
    from ``run.init_from`` (``init_from(...)["loaded"]``; buffers among them are ignored). One group
    ``"all"`` at ``cfg.lr`` when the scale is 1 or nothing was loaded; else ``"new"`` at ``cfg.lr`` and
    ``"pretrained"`` at ``cfg.lr * scale`` (an empty group is left out).
    """
    scale = float(getattr(cfg, "pretrained_lr_scale", 1.0))
    named = list(model.named_parameters())
    loaded = set(pretrained)
    if scale == 1.0 or not loaded.intersection(n for n, _ in named):
        return [{"params": [p for _, p in named], "lr": cfg.lr, "name": "all"}]
    groups = [
        {"params": [p for n, p in named if n not in loaded], "lr": cfg.lr, "name": "new"},
        {"params": [p for n, p in named if n in loaded], "lr": cfg.lr * scale, "name": "pretrained"},
    ]
    return [g for g in groups if g["params"]]


def ddp_kwargs(freeze_epochs: int) -> list[Any]:
    """Accelerate ``kwargs_handlers`` for a temporary freeze: DDP with ``find_unused_parameters=True`` (the
    frozen parameters produce no gradient during the frozen epochs); none otherwise."""
    if freeze_epochs <= 0:
        return []
    from accelerate.utils import DistributedDataParallelKwargs  # noqa: PLC0415

    return [DistributedDataParallelKwargs(find_unused_parameters=True)]


class Freezer:
    """Freeze the parameters under ``prefixes`` for the first ``epochs`` epochs (0: the whole run).

    ``norm_stats`` (``run.freeze_norm_stats``): every BatchNorm of the model keeps normalising by its running
    statistics in training, and they stay as they are. Make it before the model is wrapped for DDP: a whole-run
    freeze takes effect at once (DDP then leaves those parameters out), a temporary one at the first
    :meth:`apply`. Call :meth:`apply` after ``model.train()`` at
    the start of every epoch. Prefixes are checked here (:class:`ConfigError` naming the model's modules for
    one that matches nothing).
    """

    def __init__(self, model: nn.Module, prefixes: list[str], epochs: int, norm_stats: bool = False) -> None:
        if epochs < 0:
            raise ConfigError(f"optim.freeze_epochs must be >= 0 (0: the whole run), got {epochs}")
        if epochs and not prefixes:
            raise ConfigError("optim.freeze_epochs needs run.freeze: the parameter-name prefixes to freeze")
        self.model, self.prefixes, self.epochs = model, list(prefixes), int(epochs)
        params = dict(model.named_parameters())
        was = {n: p.requires_grad for n, p in params.items()}
        self.names = freeze_parameters(model, self.prefixes) if self.prefixes else []  # checks the prefixes
        if self.epochs:  # temporary: nothing frozen before apply()
            for n, p in params.items():
                p.requires_grad_(was[n])
        self.params = [params[n] for n in self.names]
        stems = tuple(p.rstrip(".") + "." for p in self.prefixes)
        self.norms = [m for n, m in model.named_modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and (n + ".").startswith(stems)]  # fmt: skip
        # run.freeze_norm_stats: every BatchNorm in eval mode in every epoch (its affine parameters still train)
        self.held_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if norm_stats else []

    def frozen(self, epoch: int) -> bool:
        """Whether the parameters under the prefixes are frozen in ``epoch``."""
        return bool(self.prefixes) and (self.epochs == 0 or epoch < self.epochs)

    def apply(self, epoch: int) -> bool:
        """Set ``requires_grad`` (and the frozen BatchNorms' eval mode) for ``epoch``; returns whether frozen."""
        frozen = self.frozen(epoch)
        for p in self.params:
            p.requires_grad_(not frozen)
        if frozen and self.model.training:
            for m in self.norms:
                m.eval()  # running statistics stay the pretrained ones
        if self.model.training:
            for m in self.held_norms:
                m.eval()
        if self.epochs and epoch == self.epochs:
            log.info("epoch %d: %d parameter tensors under %s unfrozen", epoch, len(self.params), self.prefixes)
        return frozen


# ------------------------------------------------------------------------------------ optimiser and schedule
def make_optimizer(
    model: nn.Module, cfg: OptimConfig, pretrained: list[str] | tuple[str, ...] = ()
) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (adam, adamw or sgd with Nesterov momentum) over :func:`param_groups` (every parameter,
    frozen ones too; ``pretrained``: the tensor names ``run.init_from`` loaded)."""
    params = param_groups(model, cfg, pretrained)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


@dataclass
class WarmupCosine:
    """``LambdaLR`` factor of optimiser step ``step`` (0-based): linear warmup ``(step + 1) / warmup`` over the
    first ``warmup`` steps, then a cosine from 1 down to ``floor`` (= min_lr / lr) at step ``total``
    (``cosine=False``: constant 1 after the warmup). A plain object, so the scheduler state saves it."""

    warmup: int
    total: int
    floor: float = 0.0
    cosine: bool = True

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(cfg: OptimConfig, steps_per_epoch: int) -> int:
    """Optimiser steps of the whole run: ``optim.max_steps``, else epochs x optimiser steps per epoch."""
    return cfg.max_steps or max(1, cfg.epochs * steps_per_epoch)


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int) -> tuple[Any, str]:
    """(scheduler or None, when it steps: 'step' (each optimiser step) | 'plateau' (each epoch) | 'none').
    ``steps_per_epoch`` counts optimiser steps."""
    total = total_steps(cfg, steps_per_epoch)
    warmup = cfg.warmup_steps or int(round(cfg.warmup_fraction * total))
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        ), "plateau"
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warmup, total, cfg.min_lr / cfg.lr)), "step"
    if cfg.schedule == "onecycle":
        max_lr = [g["lr"] for g in opt.param_groups]  # per group: keeps optim.pretrained_lr_scale
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total), "step"
    if warmup:
        return torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warmup, total, cosine=False)), "step"
    return None, "none"


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter named ``prefix`` or under ``prefix.``; returns their names.
    A prefix that names no parameter is a :class:`ConfigError` (with examples of the names there are)."""
    params = dict(model.named_parameters())
    frozen = []
    for prefix in prefixes:
        hits = [n for n in params if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            tops = sorted({n.rsplit(".", 2)[0] for n in params})
            raise ConfigError(
                f"freeze: no parameter name starts with {prefix!r}; e.g. {', '.join(tops[:12])}"
                + (" ..." if len(tops) > 12 else "")
            )
        for n in hits:
            params[n].requires_grad_(False)
        frozen.extend(hits)
    return frozen
