"""Training: one top-to-bottom loop over WebDataset shards, with Hugging Face Accelerate.

Runs unchanged as::

    python -m engine train --config configs/crnn.yaml data.shards=DIR
    accelerate launch --multi_gpu --num_processes 4 -m engine.train --config configs/crnn.yaml data.shards=DIR
    torchrun --nproc_per_node 2 -m engine.train --config ...

Accelerate places the model, wraps it in DDP and runs mixed precision; the shard reader splits the data by
rank itself (every rank gets the same number of batches, so DDP never waits on a rank that ran out).
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

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from engine.checkpoint import CheckpointError, init_from, save_checkpoint
from engine.config import ConfigError, from_dict, load_config, to_dict
from engine.distributed import make_accelerator
from engine.ema import EMA
from engine.feature_shards import model_input, prepare_model_config
from engine.logs import setup_logging
from engine.metrics import TRACK_AGGREGATES
from engine.models import ModelConfig, build_model, count_parameters
from engine.optim import Freezer, ddp_kwargs, param_groups
from engine.validate import evaluate_stream
from kernels.augment import augment_rng_state, reseed_all, set_augment_rng_state
from shards.crop_stream import CropStream
from shards.format import ManifestError, load_manifest
from shards.reader import make_loader
from shards.window_stream import WindowStream

logger = get_logger(__name__)


# ----------------------------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    shards: str = ""  # shard-set directory (with manifest.json)
    train_split: str = "train"
    valid_split: str = "valid"
    segment_seconds: float = 3.0  # training crop (and evaluation window unless eval_segment_seconds), seconds
    crops_per_track: int = 1  # distinct random crops of each track per epoch (all enter the shuffle buffer)
    eval_segment_seconds: float | None = None  # evaluation window, seconds; None = segment_seconds. Longer
    # windows (e.g. 30 = a whole 30-s clip) suit models that pool globally; lower eval_batch_size with them
    eval_hop_seconds: float | None = None  # evaluation window hop; None = the evaluation window
    batch_size: int = 32  # per process
    eval_batch_size: int = 64
    num_workers: int = -1  # DataLoader workers per process; -1 = by core count
    shuffle_buffer: int = 512
    holdout_fold: int = -1  # >= 0: cross-validation, train on the other folds of train_split (this one is the test fold)

    def validate(self) -> None:
        if self.segment_seconds <= 0:
            raise ConfigError(f"data.segment_seconds must be > 0, got {self.segment_seconds}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("data.batch_size and data.eval_batch_size must be >= 1")
        if self.eval_hop_seconds is not None and self.eval_hop_seconds <= 0:
            raise ConfigError(f"data.eval_hop_seconds must be > 0 (or null: one window), got {self.eval_hop_seconds}")
        if self.crops_per_track < 1:
            raise ConfigError(f"data.crops_per_track must be >= 1, got {self.crops_per_track}")
        if self.eval_segment_seconds is not None and self.eval_segment_seconds <= 0:
            raise ConfigError(
                f"data.eval_segment_seconds must be > 0 (or null: the training crop), got {self.eval_segment_seconds}; "
                "for whole-track evaluation give the clip length (e.g. 30)"
            )


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: Literal["plateau", "cosine", "onecycle", "none"] = "plateau"  # cosine, onecycle: per optimiser step
    plateau_factor: float = 0.5
    plateau_patience: int = 2  # epochs without validation-loss improvement before the lr drops
    min_lr: float = 0.0  # cosine: the lr the decay ends at
    warmup_steps: int = 0  # cosine / none: linear warmup over this many optimiser steps
    warmup_fraction: float = 0.0  # ... or over this fraction of the run's optimiser steps (not both)
    epochs: int = 30
    max_steps: int = 0  # > 0: train this many optimiser steps (epochs = ceil(max_steps / steps per epoch))
    max_steps_per_epoch: int = 0  # 0 = the whole epoch; > 0 caps it (quick runs, benchmarks)
    early_stop_patience: int = 6  # epochs without validation-loss improvement; 0 = off
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    grad_accum: int = 1
    class_weights: bool = False  # weight the loss by inverse training-class frequency (imbalanced sets)
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights (e.g. 0.999), validate,
    # early-stop on and save it (best.pt / last.pt hold the average); 0 = off
    freeze_epochs: int = 0  # run.freeze prefixes are frozen for this many epochs, then trained; 0 = the whole run
    pretrained_lr_scale: float = 1.0  # lr factor of the weights loaded by run.init_from (the new head: optim.lr)

    def validate(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.grad_accum < 1:
            raise ConfigError("optim.lr must be > 0, optim.epochs and optim.grad_accum >= 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_steps < 0 or self.warmup_steps < 0:
            raise ConfigError("optim.max_steps and optim.warmup_steps must be >= 0")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"optim.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.warmup_steps and self.warmup_fraction:
            raise ConfigError("give optim.warmup_steps or optim.warmup_fraction, not both")
        if (self.warmup_steps or self.warmup_fraction) and self.schedule not in ("cosine", "none"):
            raise ConfigError(
                f"optim.warmup_* works with schedule cosine or none (onecycle warms up itself), not {self.schedule!r}"
            )
        if not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"optim.min_lr must be in [0, optim.lr], got {self.min_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must be in [0, 1) (0 = off; e.g. 0.999), got {self.ema_decay}")
        if self.freeze_epochs < 0 or self.pretrained_lr_scale <= 0:
            raise ConfigError("optim.freeze_epochs must be >= 0 (0: whole run) and optim.pretrained_lr_scale > 0")


@dataclass
class RunConfig:
    out_dir: str = ""  # run directory; "" = runs/<arch>-<timestamp>
    seed: int = 0
    precision: Literal["no", "fp16", "bf16"] = "no"
    cpu: bool = False  # force CPU even when a GPU is there
    compile: bool = False  # torch.compile the model
    log_every: int = 20  # steps between loss/throughput updates (the only .item() calls)
    resume: bool = False  # continue the run in out_dir from its last saved state
    save_every_steps: int = 0  # also save the training state every N batches mid-epoch (0 = at epoch ends only)
    init_from: str = ""  # checkpoint to start from (transfer learning)
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes to freeze (optim.freeze_epochs: how long)
    tensorboard: bool = True
    progress: bool = True

    def validate(self) -> None:
        if self.log_every < 1:
            raise ConfigError(
                f"run.log_every must be >= 1 (steps between loss updates), got {self.log_every}"
            )


@dataclass
class EvalConfig:
    # how the windows of a track make its prediction: mean of probabilities (robust to one confidently wrong
    # window; the headline) or of log-probabilities (their product); both are always reported
    track_aggregate: Literal["mean_prob", "mean_logprob"] = "mean_prob"  # one of metrics.TRACK_AGGREGATES


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        if not self.data.shards:
            raise ConfigError("data.shards is required (a shard-set directory made by tools/make_shards.py)")
        if self.run.resume and not self.run.out_dir:
            raise ConfigError("run.resume needs run.out_dir: the run directory to continue")


# ------------------------------------------------------------------------------------------ train state
@dataclass
class TrainState:
    """What the loop needs to continue; saved with ``Accelerator.save_state``."""

    epoch: int = 0  # next epoch to run
    step: int = 0  # optimiser steps so far
    best_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # mid-epoch position (save_every_steps): batches of `epoch` done, and the epoch's running sums so far
    epoch_step: int = 0
    epoch_loss: float = 0.0  # sum of batch losses, averaged over ranks
    epoch_correct: float = 0.0  # correct training predictions, summed over ranks
    epoch_seen: int = 0  # training clips per rank

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


# -------------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """One seed per (run seed, epoch, rank): what makes a resumed epoch equal the uninterrupted one."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31 - 1)


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against (possibly mixed) soft targets ``[B, K]``; logits ``[B, K]``; mean over batch."""
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / targets.shape[1]
    logp = F.log_softmax(logits.float(), dim=1)
    per_class = -targets * logp
    if weight is not None:
        per_class = per_class * weight
    return per_class.sum(dim=1).mean()


def check_shards(manifest: dict[str, Any], cfg: DataConfig) -> None:
    """Fail fast on a shard set that cannot train: missing or empty splits, labels unseen in training."""
    splits = manifest["splits"]
    need = [cfg.train_split, cfg.valid_split]
    for split in need:
        if split not in splits:
            raise ConfigError(f"{cfg.shards}: no {split!r} split (has {sorted(splits)}); set data.train_split/valid_split")
        if not splits[split]["tracks"]:
            raise ConfigError(f"{cfg.shards}: split {split!r} is empty")
    train_labels = {k for k, n in splits[cfg.train_split]["per_label"].items() if n > 0}
    for split in need[1:]:
        unseen = sorted(k for k, n in splits[split]["per_label"].items() if n > 0 and k not in train_labels)
        if unseen:
            raise ConfigError(
                f"{cfg.shards}: labels {unseen} occur in {split!r} but never in {cfg.train_split!r}; "
                "re-shard with stratified splits or drop those classes"
            )
    if cfg.holdout_fold >= 0 and cfg.holdout_fold >= int(manifest.get("folds") or 0):
        raise ConfigError(
            f"data.holdout_fold={cfg.holdout_fold} but the shard set has {manifest.get('folds') or 0} folds "
            "(make shards with --folds K)"
        )


#: Settings a resumed run must share with the run it continues (the rest -- epochs, workers, logging -- may change).
RESUME_FIXED = ("model", "data.shards", "data.train_split", "data.valid_split", "data.segment_seconds",
                "data.crops_per_track", "data.batch_size", "data.holdout_fold", "optim.ema_decay", "run.seed")  # fmt: skip


def check_resume_config(saved_path: Path, cfg: TrainConfig) -> None:
    """ConfigError when ``cfg`` changes what the run in ``saved_path``'s directory was trained with (a
    changed model or data setting would silently mix two runs in one history and checkpoint)."""
    import yaml

    if not saved_path.is_file():
        return  # state saved by an older version without config.yaml: nothing to compare
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = to_dict(cfg)
    changed = []
    for key in RESUME_FIXED:
        a, b = saved, now
        for part in key.split("."):
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
        if key == "data.shards" and isinstance(a, str) and isinstance(b, str):
            a, b = os.path.realpath(a), os.path.realpath(b)  # the same directory spelled differently
        if a != b:
            changed.append(key)
    if changed:
        raise ConfigError(
            f"run.resume: {', '.join(changed)} differ from the run in {saved_path.parent} ({saved_path.name}); "
            "resume with the same settings (optim, workers and logging may change) or start a new --out"
        )


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, pretrained: list[str] | tuple[str, ...] = ()) -> torch.optim.Optimizer:
    params = param_groups(model, cfg, pretrained)  # every parameter (frozen ones too), lr groups: engine/optim.py
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


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int):
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


def class_weight_tensor(manifest: dict[str, Any], split: str, labels: list[str]) -> torch.Tensor:
    """Inverse-frequency weights ``[K]`` normalised to mean 1 (classes absent from training get weight 1)."""
    counts = manifest["splits"][split]["per_label"]
    n = torch.tensor([float(counts.get(name, 0)) for name in labels])
    w = torch.where(n > 0, n.sum() / (len(labels) * n.clamp(min=1)), torch.ones_like(n))
    return w / w.mean()


def validate(
    model: torch.nn.Module,
    loader: Any,
    accelerator: Accelerator,
    label_names: list[str],
    weight: torch.Tensor | None,
    precision: str = "no",
    aggregate: str = "mean_prob",
) -> dict[str, float]:
    """Validation loss, segment- and track-level accuracy and macro F1, every track counted once: the loop
    and the figures of ``python -m engine evaluate`` (:func:`engine.validate.evaluate_stream`), so the two
    never disagree on a checkpoint. ``valid_track_*`` use the ``aggregate`` of windows; the track accuracy
    of both aggregates is reported too."""
    result = evaluate_stream(model, loader, accelerator, len(label_names), precision=precision, weight=weight)
    m = result.metrics(label_names, aggregate)
    return {
        "valid_loss": result.loss,
        "valid_acc": m["segment"]["accuracy"],
        "valid_f1": m["segment"]["macro_f1"],
        "valid_track_acc": m["track"]["accuracy"],
        "valid_track_f1": m["track"]["macro_f1"],
        **{f"valid_track_acc_{a}": m[f"track_{a}"]["accuracy"] for a in TRACK_AGGREGATES},
        "valid_windows": int(m["segment"]["n"]),
        "valid_tracks": int(m["track"]["n"]),
    }


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


def saved_state_dir(run_dir: str | Path) -> Path | None:
    """The newest complete training state of a run, or None.

    ``state/`` normally; ``state.old/`` when a run was killed between the two renames of
    :func:`save_train_state`. A ``state.new/`` is never complete until renamed (``train_state.json`` is
    written into it last), so a kill while saving leaves the previous state intact.
    """
    for name in ("state", "state.old"):
        d = Path(run_dir) / name
        if (d / "train_state.json").is_file():
            return d
    return None


def save_train_state(accelerator: Accelerator, run_dir: Path, state: TrainState, net: torch.nn.Module) -> None:
    """``Accelerator.save_state`` into ``state.new/``, then swap it in: a kill at any moment leaves one
    complete state (model, optimiser, scheduler, RNG and loop state from the *same* epoch) to resume from."""
    new, cur, old = run_dir / "state.new", run_dir / "state", run_dir / "state.old"
    if accelerator.is_main_process:
        shutil.rmtree(new, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(new))  # every rank writes its own RNG state into it
    # each rank's augmentation streams (seeded per rank): what a mid-epoch resume needs to draw the same
    torch.save(augment_rng_state(net), new / f"augment_rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (new / "train_state.json").write_text(json.dumps(state.state_dict()))  # last: marks it complete
        shutil.rmtree(old, ignore_errors=True)
        if cur.exists():
            os.replace(cur, old)
        os.replace(new, cur)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    with open(run_dir / "history.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    if history:
        keys = list(history[0])
        with open(run_dir / "history.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(history)


# ----------------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train a model as ``cfg`` says; returns ``{run_dir, best_checkpoint, last_checkpoint, history, best}``."""
    accelerator = make_accelerator(
        mixed_precision=cfg.run.precision, gradient_accumulation_steps=cfg.optim.grad_accum, cpu=cfg.run.cpu,
        kwargs_handlers=ddp_kwargs(cfg.optim.freeze_epochs),
    )
    rank, world = accelerator.process_index, accelerator.num_processes

    # -- data: everything read from the manifest, checked before any work
    manifest = load_manifest(cfg.data.shards)
    check_shards(manifest, cfg.data)
    labels: list[str] = list(manifest["labels"])
    sample_rate = int(manifest["sample_rate"])
    segment_samples = int(round(cfg.data.segment_seconds * sample_rate))
    eval_seconds = cfg.data.eval_segment_seconds
    eval_samples = int(round(eval_seconds * sample_rate)) if eval_seconds else segment_samples  # evaluation window
    hop = cfg.data.eval_hop_seconds
    hop_samples = int(round(hop * sample_rate)) if hop else eval_samples
    # feature shards (MSD): sample_rate is the nominal frame rate; the model gets feature_dim and the training
    # set's per-dimension normalisation here (so config.yaml and every checkpoint carry them)
    cfg = dataclasses.replace(cfg, model=prepare_model_config(
        cfg.model, manifest, cfg.data.shards, split=cfg.data.train_split, segment_frames=segment_samples,
        batch_size=cfg.data.batch_size, seed=cfg.run.seed, holdout_fold=cfg.data.holdout_fold,
    ))  # fmt: skip

    # -- run directory: chosen on the main process, the same on every rank
    run_dir = [cfg.run.out_dir or f"runs/{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"]
    if world > 1:
        broadcast_object_list(run_dir)
    run_dir = Path(run_dir[0])
    state_dir = saved_state_dir(run_dir)
    if cfg.run.resume and state_dir is None:
        raise ConfigError(f"run.resume: no saved state in {run_dir / 'state'} (nothing to resume; drop --resume to start)")
    if cfg.run.resume:
        check_resume_config(run_dir / "config.yaml", cfg)
    elif (run_dir / "last.pt").exists():  # checked on every rank: one rank raising alone would hang the rest
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml_dump(to_dict(cfg)))
    accelerator.wait_for_everyone()

    train_stream = CropStream(
        cfg.data.shards, cfg.data.train_split, crop_samples=segment_samples,
        batch_size=cfg.data.batch_size, seed=cfg.run.seed, shuffle_buffer=cfg.data.shuffle_buffer,
        rank=rank, world_size=world, holdout_fold=cfg.data.holdout_fold, folds="exclude",
        crops_per_track=cfg.data.crops_per_track,
    )  # fmt: skip
    valid_stream = WindowStream(
        cfg.data.shards, cfg.data.valid_split, window_samples=eval_samples,
        hop_samples=hop_samples, batch_size=cfg.data.eval_batch_size, rank=rank, world_size=world,
    )  # fmt: skip
    workers = None if cfg.data.num_workers < 0 else cfg.data.num_workers
    train_loader = make_loader(train_stream, num_workers=workers)
    valid_loader = make_loader(valid_stream, num_workers=workers)
    steps_per_epoch = len(train_stream)
    if cfg.optim.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.optim.max_steps_per_epoch)
    # whole accumulation cycles only: no half-accumulated gradient leaks into the next epoch (or a resumed run)
    steps_per_epoch -= steps_per_epoch % cfg.optim.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} gives {len(train_stream)} batches per process per epoch, fewer "
            f"than one accumulation cycle (optim.grad_accum={cfg.optim.grad_accum}); lower either"
        )
    optim_steps_per_epoch = steps_per_epoch // cfg.optim.grad_accum
    epochs = math.ceil(cfg.optim.max_steps / optim_steps_per_epoch) if cfg.optim.max_steps else cfg.optim.epochs

    # -- model, optimiser, schedule
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model, len(labels), sample_rate, segment_samples)
    loaded = init_from(model, cfg.run.init_from)["loaded"] if cfg.run.init_from else []
    freezer = Freezer(model, cfg.run.freeze, cfg.optim.freeze_epochs)  # before DDP wraps the model
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = count_parameters(model)
    optimizer = make_optimizer(model, cfg.optim, loaded)
    scheduler, sched_kind = make_scheduler(optimizer, cfg.optim, optim_steps_per_epoch)
    if eval_samples != segment_samples:
        check_eval_window(model, eval_samples, cfg.model.features.feature_dim)
    ema = EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None  # a copy of the initial weights
    model, optimizer = accelerator.prepare(model, optimizer)
    if ema is not None:
        ema.model.to(accelerator.device)
    if cfg.run.compile:
        model = torch.compile(model)
    state = TrainState()
    # the loop state itself lives in train_state.json (written last into each saved state, read on resume)
    if scheduler is not None:
        accelerator.register_for_checkpointing(scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)  # the average resumes with the run
    if cfg.run.resume:
        try:
            accelerator.load_state(str(state_dir))
        except (RuntimeError, KeyError) as err:
            raise ConfigError(f"cannot resume from {state_dir}: it was saved by a different model/config ({err})") from err
        state.load_state_dict(json.loads((state_dir / "train_state.json").read_text()))
        if state.epoch_step:  # stopped mid-epoch: the augmentation streams continue where they were
            aug_file = state_dir / f"augment_rng_{rank}.pt"
            if not aug_file.is_file():
                raise ConfigError(f"cannot resume mid-epoch: {aug_file} is missing (saved by {world} process(es)?)")
            set_augment_rng_state(accelerator.unwrap_model(model), torch.load(aug_file, weights_only=False))
        logger.info(f"resumed {run_dir} at epoch {state.epoch}", main_process_only=True)
    weight = class_weight_tensor(manifest, cfg.data.train_split, labels).to(accelerator.device) if cfg.optim.class_weights else None

    tb = None
    if cfg.run.tensorboard and accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(run_dir / "tensorboard"))
    logger.info(
        f"training {cfg.model.arch} ({n_params:,} parameters) on {world} process(es), {accelerator.device}, "
        f"{len(labels)} classes, {steps_per_epoch} steps/epoch x {cfg.data.batch_size} x {world}, {epochs} epochs"
        + (f" ({cfg.optim.max_steps} optimiser steps)" if cfg.optim.max_steps else ""),
        main_process_only=True,
    )
    config_dict = to_dict(cfg)
    ckpt_meta = dict(labels=labels, sample_rate=sample_rate, segment_samples=segment_samples,
                     window_samples=eval_samples if eval_samples != segment_samples else None,
                     extra={"weights": "ema" if ema is not None else "raw"})  # fmt: skip
    net = accelerator.unwrap_model(model)
    eval_net = ema.model if ema is not None else net  # what validation scores and the checkpoints hold

    # -- the loop
    while state.epoch < epochs:
        epoch, done = state.epoch, state.epoch_step  # done > 0: resuming in the middle of this epoch
        if not done:
            seed_everything(epoch_seed(cfg.run.seed, epoch, rank))  # dropout, mixup, ...
            reseed_all(net, epoch_seed(cfg.run.seed, epoch, rank))
        train_stream.set_epoch(epoch, start_batch=done)  # the first `done` items: {} placeholders, nothing read
        model.train()
        freezer.apply(epoch)  # run.freeze for this epoch (a function of the epoch: resumes exactly)
        t0, seen, n_steps = time.perf_counter(), state.epoch_seen, done
        seen0 = seen  # clips trained before a mid-epoch stop: not this session's throughput
        loss_sum = torch.full((), state.epoch_loss, device=accelerator.device)
        correct = torch.full((), state.epoch_correct if accelerator.is_main_process else 0.0, device=accelerator.device)
        bar = tqdm(total=steps_per_epoch, initial=done, desc=f"epoch {epoch}", disable=not (cfg.run.progress and accelerator.is_main_process), leave=False)
        rng = torch.get_rng_state()
        batches = iter(train_loader)
        torch.set_rng_state(rng)  # making the iterator draws a seed: keep the restored stream exactly where it was
        for i, batch in enumerate(batches):
            if i < done:
                continue  # trained before the stop; batches i >= done are those of the uninterrupted epoch
            if i >= steps_per_epoch or (cfg.optim.max_steps and state.step >= cfg.optim.max_steps):
                break
            wave = model_input(batch).to(accelerator.device, non_blocking=True)  # wave [B, T] or feats [B, N, D]
            y = batch["label"].to(accelerator.device, non_blocking=True)
            with accelerator.accumulate(model):
                targets = F.one_hot(y, len(labels)).float()
                with accelerator.autocast():
                    logits, mixed = model(wave, targets)
                loss = soft_cross_entropy(logits, mixed, cfg.optim.label_smoothing, weight)
                accelerator.backward(loss)
                if cfg.optim.grad_clip and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients:
                    state.step += 1
                    if sched_kind == "step":
                        scheduler.step()
                    if ema is not None:
                        ema.update(net)
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            n_steps += 1
            bar.update(1)
            if n_steps % cfg.run.log_every == 0:  # the only host syncs of the step loop
                bar.set_postfix(loss=f"{loss_sum.item() / n_steps:.3f}", clips_s=f"{(seen - seen0) * world / (time.perf_counter() - t0):.0f}")
            every = cfg.run.save_every_steps
            if every and n_steps % every == 0 and n_steps % cfg.optim.grad_accum == 0 and n_steps < steps_per_epoch:
                state.epoch_step, state.epoch_seen = n_steps, seen
                state.epoch_loss = float(accelerator.reduce(loss_sum.clone(), "mean"))
                state.epoch_correct = float(accelerator.reduce(correct.clone(), "sum"))
                save_train_state(accelerator, run_dir, state, net)
        bar.close()
        state.epoch_step, state.epoch_loss, state.epoch_correct, state.epoch_seen = 0, 0.0, 0.0, 0
        train_time = time.perf_counter() - t0
        train_loss = float(accelerator.reduce(loss_sum, "mean")) / max(1, n_steps)
        train_acc = float(accelerator.reduce(correct, "sum")) / max(1, seen * world)

        metrics = validate(eval_net, valid_loader, accelerator, labels, weight, cfg.run.precision, cfg.eval.track_aggregate)
        lr = optimizer.param_groups[0]["lr"]
        row = {
            "epoch": epoch, "step": state.step, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
            **metrics, "train_clips_per_s": (seen - seen0) * world / max(train_time, 1e-9), "epoch_seconds": time.perf_counter() - t0,
        }  # fmt: skip
        state.history.append(row)
        if sched_kind == "plateau":
            scheduler.step(metrics["valid_loss"])
        improved = metrics["valid_loss"] < state.best_loss
        if improved:
            state.best_loss, state.best_epoch, state.bad_epochs = metrics["valid_loss"], epoch, 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch + 1
        logger.info(
            f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.3f} | valid loss {metrics['valid_loss']:.4f} "
            f"acc {metrics['valid_acc']:.3f} track acc {metrics['valid_track_acc']:.3f} f1 {metrics['valid_track_f1']:.3f} "
            f"| {row['train_clips_per_s']:.0f} clips/s",
            main_process_only=True,
        )
        if accelerator.is_main_process:
            save_checkpoint(run_dir / "last.pt", model=eval_net, config=config_dict, epoch=epoch, metrics=row, **ckpt_meta)
            if improved:
                save_checkpoint(run_dir / "best.pt", model=eval_net, config=config_dict, epoch=epoch, metrics=row, **ckpt_meta)
            write_history(run_dir, state.history)
            if tb is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        tb.add_scalar(k, v, epoch)
                tb.flush()
            _plot_curves(run_dir, state.history)
        save_train_state(accelerator, run_dir, state, net)
        if cfg.optim.early_stop_patience and state.bad_epochs >= cfg.optim.early_stop_patience:
            logger.info(f"early stop: no validation-loss improvement for {state.bad_epochs} epochs", main_process_only=True)
            break

    best = next((r for r in state.history if r["epoch"] == state.best_epoch), state.history[-1] if state.history else {})
    summary = {
        "run_dir": str(run_dir),
        "best_checkpoint": str(run_dir / "best.pt"),
        "last_checkpoint": str(run_dir / "last.pt"),
        "best_epoch": state.best_epoch,
        "best": best,
        "history": state.history,
        "parameters": n_params,
        "weights": "ema" if ema is not None else "raw",
        "world_size": world,
        "labels": labels,
    }
    if accelerator.is_main_process:
        (run_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    if tb is not None:
        tb.close()
    accelerator.wait_for_everyone()
    # no accelerator.end_training(): it destroys the process group, and cv/compare train again in-process
    return summary


def _plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    # matplotlib is imported when the first epoch ends, not at start
    from engine.plots import training_curves_png

    training_curves_png(history, run_dir / "curves.png")


def print_config(args: argparse.Namespace) -> int:
    """``--print-config``: the resolved config (file + overrides) as YAML on stdout; exit status 0, or 2 with
    the config error (train and cv)."""
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(yaml_dump(to_dict(cfg)))
    return 0


def yaml_dump(data: dict[str, Any]) -> str:
    """A config dict as YAML in field order (what run.out_dir/config.yaml holds and --print-config prints)."""
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine train",
        description="Train a genre model on a shard set. Any config field can be overridden as section.key=value "
        "(e.g. optim.lr=3e-4 model.arch=crnn data.batch_size=64).",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (sections: data, model, optim, run)")
    p.add_argument("--config", help="YAML config (see configs/*.yaml); overrides apply on top")
    p.add_argument("--shards", help="shard-set directory (= data.shards)")
    p.add_argument("--out", help="run directory (= run.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")
    p.add_argument("--init-from", help="start from this checkpoint's weights (= run.init_from)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides)
    for flag, key in (("shards", "data.shards"), ("out", "run.out_dir"), ("init_from", "run.init_from")):
        if getattr(args, flag):
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.resume:
        overrides.append("run.resume=true")
    return load_config(TrainConfig, args.config, overrides)


def main(argv: list[str] | None = None) -> int:

    setup_logging()
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides before and after options
    if args.print_config:
        return print_config(args)
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg)
    except (ConfigError, CheckpointError, ManifestError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as err:
        print(
            f"error: out of memory ({err}). Lower data.batch_size (now {cfg.data.batch_size}), use "
            "optim.grad_accum to keep the effective batch, or run.precision=bf16.",
            file=sys.stderr,
        )
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best"]
        print(f"run: {summary['run_dir']}")
        print(f"checkpoint: {summary['best_checkpoint']}")
        if best:
            print(f"valid track accuracy: {100 * best['valid_track_acc']:.1f}% (epoch {summary['best_epoch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DataConfig", "EvalConfig", "OptimConfig", "RunConfig", "TrainConfig", "train", "main", "from_dict"]
