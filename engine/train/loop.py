"""The training loop, top to bottom, with Hugging Face Accelerate: :func:`train_by_gradient` (``optim.solver:
gradient``; :mod:`engine.train.solvers` dispatches).

Accelerate places the model, wraps it in DDP and runs mixed precision. Each epoch: train
(:func:`train_epoch`), evaluate on the validation split (:func:`evaluate_epoch`: segment- and track-level
accuracy and macro F1, gathered once across ranks), log, step the schedule, write ``last.pt`` / ``best.pt``
and the history (:class:`~engine.train.records.RunRecords`) and the training state
(:func:`~engine.train.state.save_train_state`), so ``--resume`` continues exactly where the run stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from engine.config import ConfigError
from engine.distributed import accelerate_precision, make_accelerator
from engine.evaluation_loop import evaluate_stream
from engine.models.inputs import model_input
from engine.optim import ddp_kwargs
from engine.tasks import Selection, Task, get_task
from engine.train.config import TrainConfig
from engine.train.data import Loaders, ShardSet, make_loaders, open_shard_set
from engine.train.learner import Learner, build_learner
from engine.train.prefix import attach_prefix_cache, init_head_exactly
from engine.train.records import RunRecords
from engine.train.state import (
    TrainState,
    epoch_seed,
    open_run_dir,
    resume_train_state,
    save_train_state,
    seed_everything,
)  # fmt: skip
from kernels.augment import reseed_all
from shards.format import manifest_task
from shards.outputs import prepare_output_dir

if TYPE_CHECKING:
    from accelerate import Accelerator

    from engine.feature_cache import FeatureStore, PrefixCache

logger = get_logger(__name__)

__all__ = ["TrainedEpoch", "evaluate_epoch", "train_by_gradient", "train_epoch"]


def train_by_gradient(cfg: TrainConfig, feature_cache: str | Path | FeatureStore | None = None) -> dict[str, Any]:
    """Train a model as ``cfg`` says by epochs of its optimiser (``optim.solver: gradient``); returns ``{run_dir,
    best_checkpoint, last_checkpoint, history, best, ...}``. ``feature_cache``: with ``optim.cache_frozen_prefix``,
    a :class:`~engine.feature_cache.FeatureStore` whose memory keeps the frozen prefix outputs (``cv`` shares one
    across its folds; a directory or None: a new in-memory one); otherwise not used.

    Everything that can be checked is checked before the run directory is made: the output folder
    (:class:`shards.outputs.OutputError`), the shard set, the splits and the window lengths (:class:`ConfigError`)."""
    prepare_output_dir(cfg.run.out_dir or "runs", flag="--out (run.out_dir)" if cfg.run.out_dir else None)
    accelerator = make_accelerator(
        mixed_precision=accelerate_precision(cfg.run.precision), gradient_accumulation_steps=cfg.optim.grad_accum,
        cpu=cfg.run.cpu, kwargs_handlers=ddp_kwargs(cfg.optim.freeze_epochs),
    )  # fmt: skip
    cfg, shards = open_shard_set(cfg)  # checked before any work; the model config completed from the manifest
    task = get_task(manifest_task(shards.manifest))  # single- or multi-label: the shard set says
    selection = task.selection(cfg.eval.select_metric)  # ConfigError before any work
    weight = task.loss_weight(shards.manifest, cfg.data.train_split, shards.labels, cfg.optim)  # [K] or None
    data = make_loaders(cfg, shards, accelerator.process_index, accelerator.num_processes)  # checks the windows
    run_dir, state_dir = open_run_dir(cfg, accelerator)  # the same on every rank; config.yaml written
    learner = build_learner(cfg, shards, data.optim_steps_per_epoch, accelerator)
    prefix_cache = attach_prefix_cache(cfg, learner, feature_cache)  # optim.cache_frozen_prefix (else None)
    state = resume_train_state(accelerator, state_dir, learner.net) if cfg.run.resume else TrainState()
    weight = weight.to(accelerator.device) if weight is not None else None
    records = RunRecords(run_dir, cfg, shards, learner.eval_net, learner.n_params, accelerator, task.checkpoint_extra(),
                         weights="ema" if learner.ema is not None else "raw")  # fmt: skip
    log_start(cfg, accelerator, learner, data)
    if cfg.optim.head_init != "none":  # epoch 0 is the exactly initialised head; training epochs are 1, 2, ...
        learner.first_epoch = 1
        if not state.history:  # a fresh run (a resumed one has its epoch-0 row)
            head_init_epoch(cfg, accelerator, learner, data, shards, task, weight, prefix_cache, state, records,
                            selection, run_dir)  # fmt: skip

    while state.epoch < data.epochs + learner.first_epoch:
        epoch = state.epoch
        trained = train_epoch(cfg, accelerator, learner, data, state, weight, run_dir, task)
        metrics, ckpt_extra = evaluate_epoch(learner.eval_net, data.valid_loader, accelerator, shards.labels, weight,
                                             cfg.run.precision, cfg.eval.track_aggregate, task)  # fmt: skip
        row = {
            "epoch": epoch, "step": state.step, "lr": learner.optimizer.param_groups[0]["lr"],
            "train_loss": trained.loss, "train_acc": trained.acc, **metrics,
            "train_clips_per_s": trained.clips_per_s, "epoch_seconds": time.perf_counter() - trained.started,
        }  # fmt: skip
        improved = end_epoch(state, row, learner, selection)
        log_epoch(epoch, row, task)
        records.epoch_end(epoch, row, improved, state.history, ckpt_extra)
        save_train_state(accelerator, run_dir, state, learner.net)
        if cfg.optim.early_stop_patience and state.bad_epochs >= cfg.optim.early_stop_patience:
            logger.info(f"early stop: no {selection.label} improvement for {state.bad_epochs} epochs", main_process_only=True)
            break

    summary = records.finish(state)
    accelerator.wait_for_everyone()
    # no accelerator.end_training(): it destroys the process group, and cv/compare train again in-process
    return summary


def head_init_epoch(
    cfg: TrainConfig, accelerator: Accelerator, learner: Learner, data: Loaders, shards: ShardSet, task: Task,
    weight: torch.Tensor | None, prefix_cache: PrefixCache | None, state: TrainState, records: RunRecords,
    selection: Selection, run_dir: Path,
) -> None:  # fmt: skip
    """``optim.head_init: lbfgs``: fit the head exactly (:func:`engine.train.prefix.init_head_exactly`), validate
    it and record it as epoch 0 (history row, ``last.pt``, ``best.pt`` unless a later epoch beats it, state)."""
    if accelerator.num_processes > 1:
        raise ConfigError("optim.head_init: lbfgs fits in one process; launch without torchrun / accelerate launch")
    t0 = time.perf_counter()
    fit = init_head_exactly(cfg, shards, learner, task, weight, prefix_cache)
    metrics, extra = evaluate_epoch(learner.eval_net, data.valid_loader, accelerator, shards.labels, weight,
                                    cfg.run.precision, cfg.eval.track_aggregate, task)  # fmt: skip
    row = {
        "epoch": 0, "step": 0, "lr": learner.optimizer.param_groups[0]["lr"], "train_loss": fit["train_loss"],
        "train_acc": fit["train_acc"], **metrics, "train_clips_per_s": 0.0,
        "epoch_seconds": time.perf_counter() - t0, "head_init": cfg.optim.head_init, "C": fit["C"],
        "train_windows": fit["train_windows"],
    }  # fmt: skip
    improved = end_epoch(state, row, learner, selection)
    log_epoch(0, row, task)
    records.epoch_end(0, row, improved, state.history, extra)
    save_train_state(accelerator, run_dir, state, learner.net)


@dataclass
class TrainedEpoch:
    """The training half of an epoch's history row (every rank agrees)."""

    loss: float  # mean batch loss, averaged over ranks
    acc: float  # training accuracy on the (mixed) batches, over every rank's clips (multi-label: tag accuracy)
    clips_per_s: float  # training clips per second, all ranks, this session's batches only
    started: float  # time.perf_counter() when the epoch started


def train_epoch(
    cfg: TrainConfig, accelerator: Accelerator, learner: Learner, data: Loaders, state: TrainState,
    weight: torch.Tensor | None, run_dir: Path, task: Task,
) -> TrainedEpoch:  # fmt: skip
    """Train epoch ``state.epoch`` from batch ``state.epoch_step`` (> 0: resuming mid-epoch) to its end (or
    ``optim.max_steps``); counts ``state.step`` and saves the state every ``run.save_every_steps`` batches."""
    model, net, world = learner.model, learner.net, accelerator.num_processes
    epoch, done, rank = state.epoch, state.epoch_step, accelerator.process_index
    if not done:
        seed_everything(epoch_seed(cfg.run.seed, epoch, rank))  # dropout, mixup, ...
        reseed_all(net, epoch_seed(cfg.run.seed, epoch, rank))
    data.train_stream.set_epoch(epoch, start_batch=done)  # the first `done` items: {} placeholders, nothing read
    model.train()
    learner.freezer.apply(epoch - learner.first_epoch)  # run.freeze for this epoch (a function of the epoch: resumes exactly)
    t0, seen, n_steps = time.perf_counter(), state.epoch_seen, done
    seen0 = seen  # clips trained before a mid-epoch stop: not this session's throughput
    loss_sum = torch.full((), state.epoch_loss, device=accelerator.device)
    correct = torch.full((), state.epoch_correct if accelerator.is_main_process else 0.0, device=accelerator.device)
    bar = tqdm(total=data.steps_per_epoch, initial=done, desc=f"epoch {epoch}", disable=not (cfg.run.progress and accelerator.is_main_process), leave=False)
    rng = torch.get_rng_state()
    batches = iter(data.train_loader)
    torch.set_rng_state(rng)  # making the iterator draws a seed: keep the restored stream exactly where it was
    for i, batch in enumerate(batches):
        if i < done:
            continue  # trained before the stop; batches i >= done are those of the uninterrupted epoch
        if i >= data.steps_per_epoch or (cfg.optim.max_steps and state.step >= cfg.optim.max_steps):
            break
        wave = model_input(batch).to(accelerator.device, non_blocking=True)  # wave [B, T] or feats [B, N, D]
        targets = task.targets(batch, learner.num_classes, accelerator.device)  # float [B, K]
        with accelerator.accumulate(model):
            with accelerator.autocast():
                logits, mixed = model(wave, targets)
            loss = task.loss(logits, mixed, cfg.optim.label_smoothing, weight)
            accelerator.backward(loss)
            if cfg.optim.grad_clip and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            learner.optimizer.step()
            learner.optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                state.step += 1
                if learner.sched_kind == "step":
                    learner.scheduler.step()
                if learner.ema is not None:
                    learner.ema.update(net)
        loss_sum += loss.detach()
        correct += task.hits(logits, targets)
        seen += targets.shape[0]
        n_steps += 1
        bar.update(1)
        if n_steps % cfg.run.log_every == 0:  # the only host syncs of the step loop
            bar.set_postfix(loss=f"{loss_sum.item() / n_steps:.3f}", clips_s=f"{(seen - seen0) * world / (time.perf_counter() - t0):.0f}")
        every = cfg.run.save_every_steps
        if every and n_steps % every == 0 and n_steps % cfg.optim.grad_accum == 0 and n_steps < data.steps_per_epoch:
            state.epoch_step, state.epoch_seen = n_steps, seen
            state.epoch_loss = float(accelerator.reduce(loss_sum.clone(), "mean"))
            state.epoch_correct = float(accelerator.reduce(correct.clone(), "sum"))
            save_train_state(accelerator, run_dir, state, net)
    bar.close()
    state.epoch_step, state.epoch_loss, state.epoch_correct, state.epoch_seen = 0, 0.0, 0.0, 0
    train_time = time.perf_counter() - t0
    return TrainedEpoch(
        loss=float(accelerator.reduce(loss_sum, "mean")) / max(1, n_steps),
        acc=float(accelerator.reduce(correct, "sum")) / max(1, seen * world),
        clips_per_s=(seen - seen0) * world / max(train_time, 1e-9),
        started=t0,
    )


def evaluate_epoch(
    model: torch.nn.Module,
    loader: Any,
    accelerator: Accelerator,
    label_names: list[str],
    weight: torch.Tensor | None,
    precision: str = "fp32",
    aggregate: str = "mean_prob",
    task: Task | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The epoch's validation figures and what its checkpoints carry in ``extra`` (:meth:`engine.tasks.Task.validation`).

    Single-label: loss, segment- and track-level accuracy and macro F1, every track counted once -- the figures
    of ``python -m engine evaluate`` (:func:`engine.evaluation_loop.evaluate_stream`), so the two never disagree
    on a checkpoint. ``valid_track_*`` use the ``aggregate`` of windows; the track accuracy of both aggregates is
    reported too. Multi-label: loss, track and segment mAP and ROC-AUC, track F1 at 0.5; ``extra`` holds the
    per-tag thresholds that maximise each tag's F1 on the validation tracks."""
    task = task or get_task("singlelabel")
    result = evaluate_stream(model, loader, accelerator, len(label_names), precision=precision, weight=weight,
                             task=task.name)  # fmt: skip
    row, extra = task.validation(result.probs, result.labels, result.tracks, label_names, aggregate)
    return {"valid_loss": result.loss, **row}, extra


def end_epoch(state: TrainState, row: dict[str, Any], learner: Learner, selection: Selection) -> bool:
    """Close the epoch of ``row``: history, the plateau schedule, the best selection figure (``state.best_loss``
    holds it as a number to minimise: the loss, or minus a metric) and patience; ``state.epoch`` moves on.
    Returns whether the selection figure improved (the first epoch always does when it is a metric)."""
    state.history.append(row)
    if learner.sched_kind == "plateau":
        learner.scheduler.step(row["valid_loss"])
    value = selection.value(row) if selection.key != "valid_loss" else row["valid_loss"]
    improved = value < state.best_loss or (selection.key != "valid_loss" and state.best_epoch < 0)
    if improved:
        state.best_loss, state.best_epoch, state.bad_epochs = value, row["epoch"], 0
    else:
        state.bad_epochs += 1
    state.epoch = row["epoch"] + 1
    return improved


def log_start(cfg: TrainConfig, accelerator: Accelerator, learner: Learner, data: Loaders) -> None:
    logger.info(
        f"training {cfg.model.arch} ({learner.n_params:,} parameters) on {accelerator.num_processes} process(es), "
        f"{accelerator.device}, {learner.num_classes} classes, {data.steps_per_epoch} steps/epoch x {cfg.data.batch_size} x "
        f"{accelerator.num_processes}, {data.epochs} epochs"
        + (f" ({cfg.optim.max_steps} optimiser steps)" if cfg.optim.max_steps else ""),
        main_process_only=True,
    )


def log_epoch(epoch: int, row: dict[str, Any], task: Task) -> None:
    logger.info(
        f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | valid loss {row['valid_loss']:.4f} "
        f"{task.log_figures(row)} | {row['train_clips_per_s']:.0f} clips/s",
        main_process_only=True,
    )
