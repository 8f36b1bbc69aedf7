"""Training: one top-to-bottom loop over WebDataset shards, with Hugging Face Accelerate.

Runs unchanged as::

    python -m engine train --config configs/crnn.yaml data.shards=DIR
    accelerate launch --multi_gpu --num_processes 4 -m engine.train --config configs/crnn.yaml data.shards=DIR
    torchrun --nproc_per_node 2 -m engine.train --config ...

The package, in the order a run uses it:

* :mod:`~engine.train.config` -- ``TrainConfig`` and its sections (``data``, ``model``, ``optim``, ``eval``, ``run``);
* :mod:`~engine.train.data` -- the shard set, checked, and this process's loaders;
* :mod:`~engine.train.learner` -- the model, its optimiser and schedule (:mod:`engine.optim`), EMA, freezing;
* :mod:`~engine.train.solvers` -- :func:`train`: the run by ``optim.solver`` (``gradient``: the loop below;
  ``lbfgs``: :mod:`~engine.train.exact`, the exact logistic regression of a linear head on fixed features);
* :mod:`~engine.train.loop` -- :func:`~engine.train.loop.train_by_gradient` (loss, targets and validation metrics from the shard set's task, :mod:`engine.tasks`): train an epoch, evaluate it on the validation split, record, save;
* :mod:`~engine.train.records` -- ``last.pt`` / ``best.pt``, history, curves, TensorBoard, ``summary.json``;
* :mod:`~engine.train.state` -- seeds per (seed, epoch, rank), the saved state and its swap, resume checks;
* :mod:`~engine.train.exact` -- :func:`~engine.train.exact.fit_exact`: features once, L-BFGS to the optimum
  (C by inner cross-validation), the fit loaded into the head, validated, the same run directory;
* :mod:`~engine.train.cli` -- the command line.

Each epoch: train, validate (segment- and track-level accuracy and macro F1, gathered once across ranks),
log, step the schedule, write ``last.pt`` / ``best.pt`` (model checkpoints with the whole config, enough
to rebuild the model) and ``state/`` (``Accelerator.save_state``: optimiser, scheduler, EMA, RNG) so
``--resume`` continues exactly where the run stopped: data order, augmentation and dropout are seeded from
``(seed, epoch)``, so a resumed run computes what the uninterrupted run would have.

Recipes for small sets: ``data.crops_per_track`` (several crops of each track per epoch),
``optim.max_steps`` (length in optimiser steps; the schedule runs per step, with ``optim.warmup_steps`` /
``warmup_fraction`` and cosine decay to ``optim.min_lr``), ``optim.ema_decay`` (an exponential moving
average of the weights, :class:`engine.ema.EMA`: it is what validation evaluates, early stopping watches
and the checkpoints hold) and ``data.eval_segment_seconds`` (evaluation windows longer than the training
crop; the checkpoint carries the window so ``evaluate`` / ``classify`` use it).
"""

from engine.train.cli import build_parser, config_from_args, main, print_config
from engine.train.config import DataConfig, EvalConfig, OptimConfig, RunConfig, TrainConfig
from engine.train.solvers import train
from engine.train.state import TrainState, check_resume_config, saved_state_dir

__all__ = [
    "DataConfig", "EvalConfig", "OptimConfig", "RunConfig", "TrainConfig", "TrainState", "build_parser",
    "check_resume_config", "config_from_args", "main", "print_config", "saved_state_dir", "train",
]  # fmt: skip
