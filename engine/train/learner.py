"""The model of a run and what updates it: built (or initialised from a checkpoint), frozen by epoch, its
optimiser and schedule (:mod:`engine.optim`), the EMA of its weights, placed and wrapped by Accelerate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from engine.checkpoint import init_from
from engine.config import ConfigError
from engine.ema import EMA
from engine.models import build_model, count_parameters
from engine.optim import Freezer, make_optimizer, make_scheduler
from engine.train.config import TrainConfig
from engine.train.data import ShardSet
from engine.train.state import seed_everything

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["Learner", "build_learner", "check_eval_window"]


@dataclass
class Learner:
    """What the loop trains, steps and saves."""

    model: torch.nn.Module  # prepared by Accelerate (DDP-wrapped on several processes; compiled with run.compile)
    net: torch.nn.Module  # the bare model (augmentation streams, EMA updates)
    eval_net: torch.nn.Module  # what validation scores and the checkpoints hold: the EMA copy, else net
    optimizer: torch.optim.Optimizer
    scheduler: Any  # None, or steps per optimiser step ("step") or per epoch ("plateau")
    sched_kind: str  # "step" | "plateau" | "none"
    ema: EMA | None
    freezer: Freezer
    n_params: int
    num_classes: int  # K
    first_epoch: int = 0  # the first training epoch (1 with optim.head_init: epoch 0 is the initialised head)


def check_eval_window(model: torch.nn.Module, window: int, feature_dim: int | None) -> None:
    """ConfigError now, not after an epoch, when the model cannot score evaluation windows of ``window``
    samples (frames): an architecture whose head fixes the input length (``musicnn_vgg``)."""
    shape = (1, window, feature_dim or 1) if getattr(model, "input_kind", "wave") == "features" else (1, window)
    was_training = model.training
    model.eval()  # no augmentation, no dropout: no random numbers drawn
    try:
        with torch.no_grad():
            model(torch.zeros(shape, device=next(model.parameters()).device))
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"data.eval_segment_seconds: this model cannot score {window}-sample windows ({err}); its architecture "
            "fixes the input length, so evaluate on windows of the training crop (leave eval_segment_seconds unset)"
        ) from err
    finally:
        model.train(was_training)


def build_learner(cfg: TrainConfig, shards: ShardSet, optim_steps_per_epoch: int, accelerator: Accelerator) -> Learner:
    """The model seeded from ``run.seed`` (weights from ``run.init_from`` if set), its freezer, optimiser, schedule
    (``optim_steps_per_epoch`` long epochs) and EMA, prepared by ``accelerator``; the schedule and the EMA are
    registered for ``Accelerator.save_state``."""
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model, len(shards.labels), shards.sample_rate, shards.segment_samples)
    loaded = []
    if cfg.run.init_from:  # the dataset's labels that the checkpoint also has start from its output rows
        init = init_from(model, cfg.run.init_from, labels=shards.labels, label_map=cfg.run.init_label_map or None)
        loaded = init["loaded"]
    freezer = Freezer(model, cfg.run.freeze, cfg.optim.freeze_epochs, cfg.run.freeze_norm_stats)  # before DDP wraps
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = count_parameters(model)
    optimizer = make_optimizer(model, cfg.optim, loaded)
    scheduler, sched_kind = make_scheduler(optimizer, cfg.optim, optim_steps_per_epoch)
    if shards.eval_samples != shards.segment_samples:
        check_eval_window(model, shards.eval_samples, cfg.model.features.feature_dim)
    ema = EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None  # a copy of the initial weights
    model, optimizer = accelerator.prepare(model, optimizer)
    if ema is not None:
        ema.model.to(accelerator.device)
    if cfg.run.compile:
        model = torch.compile(model)
    if scheduler is not None:
        accelerator.register_for_checkpointing(scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)  # the average resumes with the run
    net = accelerator.unwrap_model(model)
    eval_net = ema.model if ema is not None else net
    return Learner(model, net, eval_net, optimizer, scheduler, sched_kind, ema, freezer, n_params, len(shards.labels))
