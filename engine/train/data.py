"""The shard set of a run: read and checked before any work, cut into training and validation batches.

Everything comes from the manifest (labels, sample rate; for feature shards the model's input size and the
training set's normalisation). The shard reader splits the data by rank itself: every rank gets the same
number of batches, so DDP never waits on a rank that ran out.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from engine.config import ConfigError
from engine.feature_shards import prepare_model_config
from engine.train.config import DataConfig, TrainConfig
from shards.crop_stream import CropStream
from shards.format import load_manifest
from shards.reader import make_loader
from shards.window_stream import WindowStream

__all__ = ["LOOP_LIMIT", "Loaders", "ShardSet", "check_shards", "check_window_lengths", "make_loaders", "open_shard_set"]

log = logging.getLogger(__name__)

LOOP_LIMIT = 2.0
"""A crop or evaluation window up to this many times the split's longest track is filled by looping the track
(a 30-s window over 29.9-s clips); a longer one is refused: every window would be mostly repeats. Not for
feature-sequence shards (embeddings, MSD segments), whose documented recipe pools a long crop of a looped short
sequence (``configs/probe.yaml``: 30 windows, the whole clip's mean): there a longer window is only logged."""


@dataclass(frozen=True)
class ShardSet:
    """The facts of the shard set a run trains on, and its window lengths in samples (frames for features)."""

    manifest: dict[str, Any]
    labels: list[str]
    sample_rate: int  # Hz (feature shards: the nominal frame rate)
    segment_samples: int  # training crop
    eval_samples: int  # evaluation window
    hop_samples: int  # evaluation window hop


@dataclass
class Loaders:
    """This process's batches and the run's length in them."""

    train_stream: CropStream
    train_loader: Any
    valid_loader: Any
    steps_per_epoch: int  # training batches per process per epoch (whole accumulation cycles)
    optim_steps_per_epoch: int  # optimiser steps per epoch
    epochs: int


def check_shards(manifest: dict[str, Any], cfg: DataConfig) -> None:
    """Fail fast on a shard set that cannot train: missing or empty splits, labels unseen in training."""
    splits = manifest["splits"]
    need = [cfg.train_split, cfg.valid_split]
    for split in need:
        if split not in splits:
            raise ConfigError(f"{cfg.shards}: no {split!r} split (has {sorted(splits)}); set data.train_split/valid_split")
        if not splits[split]["tracks"]:
            key = "data.train_split" if split == cfg.train_split else "data.valid_split"
            raise ConfigError(
                f"{cfg.shards}: split {split!r} ({key}) has no tracks; remake the shard set with a share for it "
                "(make_shards.py --split-ratios, e.g. 0.7,0.15,0.15) or name another split"
            )
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


def open_shard_set(cfg: TrainConfig) -> tuple[TrainConfig, ShardSet]:
    """Read and check ``data.shards``; returns ``cfg`` with the model config completed from the manifest (feature
    shards: ``feature_dim`` and the training set's normalisation, so config.yaml and every checkpoint carry
    them) and the :class:`ShardSet`."""
    manifest = load_manifest(cfg.data.shards)
    check_shards(manifest, cfg.data)
    sample_rate = int(manifest["sample_rate"])
    segment_samples = int(round(cfg.data.segment_seconds * sample_rate))
    eval_seconds = cfg.data.eval_segment_seconds
    eval_samples = int(round(eval_seconds * sample_rate)) if eval_seconds else segment_samples
    hop = cfg.data.eval_hop_seconds
    hop_samples = int(round(hop * sample_rate)) if hop else eval_samples
    cfg = dataclasses.replace(cfg, model=prepare_model_config(
        cfg.model, manifest, cfg.data.shards, split=cfg.data.train_split, segment_frames=segment_samples,
        batch_size=cfg.data.batch_size, seed=cfg.run.seed, holdout_fold=cfg.data.holdout_fold,
    ))  # fmt: skip
    labels = list(manifest["labels"])
    return cfg, ShardSet(manifest, labels, sample_rate, segment_samples, eval_samples, hop_samples)


def make_loaders(cfg: TrainConfig, shards: ShardSet, rank: int, world: int) -> Loaders:
    """Training and validation loaders of process ``rank`` of ``world``, and the run's length: epochs of whole
    accumulation cycles (``optim.max_steps_per_epoch`` caps them; ``optim.max_steps`` sets the epoch count)."""
    data = cfg.data
    train_stream = CropStream(
        data.shards, data.train_split, crop_samples=shards.segment_samples,
        batch_size=data.batch_size, seed=cfg.run.seed, shuffle_buffer=data.shuffle_buffer,
        rank=rank, world_size=world, holdout_fold=data.holdout_fold, folds="exclude",
        crops_per_track=data.crops_per_track, grid_hop=shards.hop_samples if data.crop_grid else 0,
    )  # fmt: skip
    valid_stream = WindowStream(
        data.shards, data.valid_split, window_samples=shards.eval_samples,
        hop_samples=shards.hop_samples, batch_size=data.eval_batch_size, rank=rank, world_size=world,
    )  # fmt: skip
    workers = None if data.num_workers < 0 else data.num_workers
    train_loader = make_loader(train_stream, num_workers=workers)
    valid_loader = make_loader(valid_stream, num_workers=workers)
    steps_per_epoch = len(train_stream)
    if cfg.optim.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.optim.max_steps_per_epoch)
    # whole accumulation cycles only: no half-accumulated gradient leaks into the next epoch (or a resumed run)
    steps_per_epoch -= steps_per_epoch % cfg.optim.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"data.batch_size={data.batch_size} gives {len(train_stream)} batches per process per epoch, fewer "
            f"than one accumulation cycle (optim.grad_accum={cfg.optim.grad_accum}); lower either"
        )
    check_window_lengths(cfg.data, shards, train_stream, valid_stream)
    optim_steps_per_epoch = steps_per_epoch // cfg.optim.grad_accum
    epochs = math.ceil(cfg.optim.max_steps / optim_steps_per_epoch) if cfg.optim.max_steps else cfg.optim.epochs
    return Loaders(train_stream, train_loader, valid_loader, steps_per_epoch, optim_steps_per_epoch, epochs)


def _window_fits(
    what: str, key: str, window: int, split: str, lengths: list[int], rate: int, limit: float | None
) -> bool:
    """Whether ``window`` (samples / frames) is no longer than the longest of ``lengths``; logs a longer one
    that looping can fill, raises :class:`ConfigError` for one over ``limit`` times the longest (None: no limit)."""
    longest = max(lengths, default=0)
    if window <= longest:
        return True
    w_s, l_s = window / rate, longest / rate
    if limit is not None and window > limit * longest:
        raise ConfigError(
            f"{key}: the {what} ({w_s:g} s) is more than {LOOP_LIMIT:g} times the longest track of split {split!r} "
            f"({l_s:g} s): every {what} would be that track looped; set {key} <= {l_s:g} (or up to "
            f"{LOOP_LIMIT * l_s:g} to loop short tracks)"
        )
    log.warning(
        "%s: the %s (%g s) is longer than every track of split %r (longest %g s): tracks are looped to fill it",
        key, what, w_s, split, l_s,
    )  # fmt: skip
    return False


def check_window_lengths(cfg: DataConfig, shards: ShardSet, train: CropStream, valid: WindowStream) -> None:
    """Refuse an evaluation window or training crop that no track of its split comes near (see
    :data:`LOOP_LIMIT`). The validation stream has scanned its tracks already; the training split is scanned
    only when the crop is longer than every validation track."""
    eval_key = "data.eval_segment_seconds" if cfg.eval_segment_seconds else "data.segment_seconds"
    rate = shards.sample_rate
    limit = None if shards.manifest.get("kind") == "features" else LOOP_LIMIT
    valid_lengths = valid.track_lengths()
    _window_fits("evaluation window", eval_key, shards.eval_samples, cfg.valid_split, valid_lengths, rate, limit)
    if shards.segment_samples > max(valid_lengths, default=0):
        lengths = train.track_lengths()
        _window_fits("training crop", "data.segment_seconds", shards.segment_samples, cfg.train_split, lengths, rate, limit)
