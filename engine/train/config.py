"""The training config: ``TrainConfig`` and its sections ``data``, ``model``, ``optim``, ``eval``, ``run``.

Loaded from YAML with ``section.key=value`` overrides (:func:`engine.config.load_config`), strict; every numeric
field declares its range with :func:`registry.fields.bounded` (checked by ``from_dict`` before the cross-field
checks of each section's ``validate``); the resolved
config is what ``run.out_dir/config.yaml`` and every checkpoint hold (:func:`yaml_dump`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from engine.config import ConfigError
from engine.distributed import canonical_precision
from engine.models import ModelConfig
from registry.fields import bounded, check_bounds

__all__ = ["DataConfig", "EvalConfig", "OptimConfig", "RunConfig", "TrainConfig", "yaml_dump"]


@dataclass
class DataConfig:
    """The shard set and how it is cut into batches: training crops, evaluation windows (seconds)."""

    shards: str = ""  # shard-set directory (with manifest.json)
    train_split: str = "train"
    valid_split: str = "valid"
    segment_seconds: float = bounded(3.0, gt=0, unit="s")  # training crop (and evaluation window unless eval_segment_seconds), seconds
    crops_per_track: int = bounded(1, ge=1)  # distinct random crops of each track per epoch (all enter the shuffle buffer)
    eval_segment_seconds: float | None = bounded(
        None, gt=0, unit="s", none="the training crop; for whole-track evaluation give the clip length, e.g. 30"
    )  # evaluation window, seconds; None = segment_seconds. Longer
    # windows (e.g. 30 = a whole 30-s clip) suit models that pool globally; lower eval_batch_size with them
    eval_hop_seconds: float | None = bounded(None, gt=0, unit="s", none="the evaluation window")  # evaluation window hop; None = the evaluation window
    batch_size: int = bounded(32, ge=1)  # per process
    eval_batch_size: int = bounded(64, ge=1)
    num_workers: int = bounded(-1, ge=-1, note="-1 = by core count, 0 = in the training process")  # DataLoader workers per process; -1 = by core count
    shuffle_buffer: int = bounded(512, ge=1, note="1 = no shuffling of samples")  # samples per worker
    # snap each training crop's start down to the evaluation window grid (shards.windows.window_starts with
    # eval_hop_seconds): crops repeat across epochs and equal validation windows (optim.cache_frozen_prefix needs it)
    crop_grid: bool = False
    holdout_fold: int = bounded(-1, ge=-1, note="-1 = no cross-validation")  # >= 0: cross-validation, train on the other folds of train_split (this one is the test fold)

    def validate(self) -> None:
        check_bounds(self, "data")  # from_dict checked them already, naming the full path; direct callers too


@dataclass
class OptimConfig:
    """Optimiser, schedule (:mod:`engine.optim`), run length, loss and fine-tuning settings."""

    # "gradient": the epoch loop (engine.train.loop); "lbfgs": the exact L2 logistic regression of a linear head on
    # fixed features, fitted once (engine.train.exact: stats backbone, hidden 0, deterministic front end)
    solver: Literal["gradient", "lbfgs"] = "gradient"
    solver_c: float | None = bounded(None, gt=0, none="chosen by inner cross-validation")  # lbfgs: scikit-learn's C
    # (inverse L2 strength); None = the best of solver_cs by inner cross-validation (LogisticRegressionCV)
    solver_cs: int = bounded(10, ge=1)  # lbfgs: the C grid, np.logspace(-4, 4, solver_cs)
    solver_folds: int = bounded(5, ge=2)  # lbfgs: inner folds when the shard set has no folds to reuse
    solver_scoring: Literal["auto", "accuracy", "neg_log_loss", "roc_auc"] = "auto"  # lbfgs: what picks C in the
    # inner CV; auto = accuracy single-label, neg_log_loss multi-label (LogisticRegressionCV's scoring)
    solver_tol: float = bounded(1e-6, gt=0)  # lbfgs: largest |gradient| of the mean objective at the end
    # (scikit-learn LogisticRegression: 1e-4, probabilities ~1e-2 off the optimum; 1e-8: float64 precision, slower)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    momentum: float = bounded(0.9, ge=0, lt=1)  # sgd only
    schedule: Literal["plateau", "cosine", "onecycle", "none"] = "plateau"  # cosine, onecycle: per optimiser step
    plateau_factor: float = bounded(0.5, gt=0, lt=1, note="the lr is multiplied by it")
    plateau_patience: int = bounded(2, ge=0)  # epochs without validation-loss improvement before the lr drops
    min_lr: float = bounded(0.0, ge=0)  # cosine: the lr the decay ends at
    warmup_steps: int = bounded(0, ge=0, together=("max_steps",))  # cosine / none: linear warmup over this many optimiser steps
    warmup_fraction: float = bounded(0.0, ge=0, lt=1)  # ... or over this fraction of the run's optimiser steps (not both)
    epochs: int = bounded(30, ge=1)
    max_steps: int = bounded(0, ge=0, together=("warmup_steps",))  # > 0: train this many optimiser steps (epochs = ceil(max_steps / steps per epoch))
    max_steps_per_epoch: int = bounded(0, ge=0, note="0 = the whole epoch")  # 0 = the whole epoch; > 0 caps it (quick runs, benchmarks)
    early_stop_patience: int = bounded(6, ge=0, note="0 = off")  # epochs without validation-loss improvement; 0 = off
    label_smoothing: float = bounded(0.0, ge=0, lt=1)
    grad_clip: float = bounded(0.0, ge=0, note="0 = off")  # max gradient norm; 0 = off
    grad_accum: int = bounded(1, ge=1)
    class_weights: bool = False  # weight the loss by inverse training-class frequency (imbalanced sets)
    pos_weight: Literal["none", "balanced"] = "none"  # multi-label: weight each tag's positives by its
    # training negatives / positives (rare tags); engine.tasks
    ema_decay: float = bounded(0.0, ge=0, lt=1, note="0 = off; e.g. 0.999")  # > 0: keep an exponential moving average of the weights (e.g. 0.999), validate,
    # early-stop on and save it (best.pt / last.pt hold the average); 0 = off
    freeze_epochs: int = bounded(0, ge=0, note="0 = the whole run")  # run.freeze prefixes are frozen for this many epochs, then trained; 0 = the whole run
    pretrained_lr_scale: float = bounded(1.0, gt=0)  # lr factor of the weights loaded by run.init_from (the new head: optim.lr)
    # keep the output of the backbone's frozen prefix (musicnn: the front end) per input window in memory and
    # train only what follows it (engine.train.prefix): needs data.crop_grid, run.freeze covering the prefix for
    # the whole run (freeze_epochs 0), a cacheable front end and no mixup; cv folds share the cache
    cache_frozen_prefix: bool = False
    # "lbfgs": before the first step of a fresh run, fit the linear head exactly (engine.train.exact's solver,
    # C = solver_c or 1) on every evaluation window of the training tracks, and validate it as epoch 0
    head_init: Literal["none", "lbfgs"] = "none"

    def validate(self) -> None:
        check_bounds(self, "optim")
        if self.warmup_steps and self.warmup_fraction:
            raise ConfigError("give optim.warmup_steps or optim.warmup_fraction, not both")
        if (self.warmup_steps or self.warmup_fraction) and self.schedule not in ("cosine", "none"):
            raise ConfigError(
                f"optim.warmup_* works with schedule cosine or none (onecycle warms up itself), not {self.schedule!r}"
            )
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr must be in [0, optim.lr], got {self.min_lr}")


@dataclass
class RunConfig:
    """Where and how the run executes: directory, seed, precision, device, logging, resume, transfer learning."""

    out_dir: str = ""  # run directory; "" = runs/<arch>-<timestamp>
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16", "no"] = "fp32"  # autocast (engine.distributed.PRECISIONS); "no": fp32
    cpu: bool = False  # force CPU even when a GPU is there
    compile: bool = False  # torch.compile the model
    log_every: int = bounded(20, ge=1, note="steps between loss updates")  # steps between loss/throughput updates (the only .item() calls)
    resume: bool = False  # continue the run in out_dir from its last saved state
    save_every_steps: int = bounded(0, ge=0, note="0 = at epoch ends only")  # also save the training state every N batches mid-epoch (0 = at epoch ends only)
    init_from: str = ""  # checkpoint to start from (transfer learning)
    # YAML/JSON {dataset label: init_from label | null}: which pretrained output row each label starts from
    # (default: the same name up to case and punctuation; null: a fresh row); engine.checkpoint.init_from
    init_label_map: str = ""
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes to freeze (optim.freeze_epochs: how long)
    # every BatchNorm normalises by its running statistics in training too and leaves them as they are (its affine
    # parameters still train): a small-set fine-tune whose head was fitted on eval-mode features (optim.head_init)
    # would otherwise see other features from the first step (batch statistics of 16 crops)
    freeze_norm_stats: bool = False
    tensorboard: bool = True
    progress: bool = True

    def validate(self) -> None:
        check_bounds(self, "run")
        if self.init_label_map and not self.init_from:
            raise ConfigError("run.init_label_map needs run.init_from (the checkpoint whose labels it maps to)")
        self.precision = canonical_precision(self.precision)  # configs and checkpoints that say accelerate's "no"


@dataclass
class EvalConfig:
    """How validation scores a track from its windows."""

    # how the windows of a track make its prediction: mean of probabilities (robust to one confidently wrong
    # window; the headline) or of log-probabilities (their product); both are always reported
    track_aggregate: Literal["mean_prob", "mean_logprob"] = "mean_prob"  # one of metrics.TRACK_AGGREGATES
    # the figure that picks best.pt and that early stopping watches: "auto" = the task's default (single-label:
    # loss, multi-label: map); single-label also accuracy / f1, multi-label roc_auc / f1 / loss (engine.tasks)
    select_metric: Literal["auto", "loss", "accuracy", "f1", "map", "roc_auc"] = "auto"


@dataclass
class TrainConfig:
    """Everything a training run reads: one section per dataclass above (``model``: :class:`ModelConfig`)."""

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
        if self.optim.cache_frozen_prefix:
            self.check_prefix_cache()
        if self.optim.head_init != "none" and self.optim.solver != "gradient":
            raise ConfigError(f"optim.head_init={self.optim.head_init} starts a gradient run from an exact head; "
                              f"optim.solver={self.optim.solver} already fits the head exactly: leave head_init at none")

    def check_prefix_cache(self) -> None:
        """ConfigError naming each setting that makes ``optim.cache_frozen_prefix`` serve stale prefix outputs
        (the model-dependent rules are checked when the model is built: :mod:`engine.train.prefix`)."""
        bad = []
        if not self.data.crop_grid:
            bad.append("data.crop_grid must be true (random crops would never repeat)")
        if not self.run.freeze:
            bad.append("run.freeze must name the backbone's prefix modules")
        if self.optim.freeze_epochs:
            bad.append(f"optim.freeze_epochs must be 0 (the prefix frozen for the whole run), got {self.optim.freeze_epochs}")
        if self.model.augment.enabled and self.model.augment.mixup_p > 0:
            bad.append("model.augment.mixup_p must be 0 (mixup mixes before the prefix)")
        if self.optim.solver != "gradient":
            bad.append("optim.solver must be gradient")
        if bad:
            raise ConfigError("optim.cache_frozen_prefix: " + "; ".join(bad))


def yaml_dump(data: dict[str, Any]) -> str:
    """A config dict as YAML in field order (what run.out_dir/config.yaml holds and --print-config prints)."""
    # libyaml's dumper when PyYAML has it (same text; 4x faster on a feature set's stored normalisation vectors)
    return yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
