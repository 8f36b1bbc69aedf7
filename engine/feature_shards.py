"""Training on feature-sequence shards (manifest kind ``"features"``, e.g. the Million Song Dataset).

The training loop, evaluation, cross-validation and comparison are the same as for audio; what differs is
settled here, once, from the manifest:

* the batch holds ``"feats"`` float16 ``[B, frames, D]`` instead of ``"wave"``
  (:func:`engine.models.inputs.model_input`);
* the model must be a precomputed-feature model (``model.features.features: [precomputed]``) and an audio
  model must not be trained on feature shards (:func:`check_model_fits_shards`, a clear ConfigError;
  the rule is :func:`engine.models.inputs.check_data_fits_model`);
* ``model.features.feature_dim`` comes from the manifest, and the per-dimension normalisation statistics
  (``norm_mean`` / ``norm_std``) are computed from training crops when missing, so the saved config (and every
  checkpoint) carries them (:func:`prepare_model_config`).

Time settings stay in seconds: the manifest's ``sample_rate`` of a feature set is its nominal frame rate
(MSD: 4 segments / s), so ``data.segment_seconds: 30`` means crops of 120 segments.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from engine.config import ConfigError
from engine.models import ModelConfig
from engine.models.inputs import check_data_fits_model, input_kind
from kernels.precomputed import estimate_sequence_stats

log = logging.getLogger(__name__)

__all__ = ["STATS_MAX_BATCHES", "check_model_fits_shards", "prepare_model_config"]

#: Training batches read to estimate the normalisation statistics (e.g. 64 x 32 crops x 120 frames).
STATS_MAX_BATCHES = 64


def check_model_fits_shards(model_cfg: ModelConfig, manifest: dict[str, Any], shards: str) -> None:
    """ConfigError when the model's input (waveform vs precomputed features) does not match the shard set."""

    def error(model_kind: str, kind: str) -> ConfigError:
        if kind == "features":
            return ConfigError(
                f"{shards} holds precomputed feature sequences (kind 'features', D={manifest.get('feature_dim')}, "
                f"layout {manifest.get('layout')!r}), not audio: set model.features.features=[precomputed] "
                f"(compare: --features precomputed; got {model_cfg.features.features})"
            )
        return ConfigError(
            f"model.features.features=[precomputed] needs feature shards (e.g. --layout msd), but {shards} "
            f"holds {kind}: choose waveform features (logmel, mfcc, chroma, cqt)"
        )

    check_data_fits_model(input_kind(model_cfg), manifest.get("kind", "audio"), error)


def prepare_model_config(
    model_cfg: ModelConfig,
    manifest: dict[str, Any],
    shards: str,
    *,
    split: str,
    segment_frames: int,
    batch_size: int,
    seed: int,
    holdout_fold: int = -1,
    max_batches: int = STATS_MAX_BATCHES,
) -> ModelConfig:
    """The model config to train on ``shards``: checked against the manifest and, for feature shards,
    completed with ``feature_dim`` and per-dimension normalisation statistics of ``split``.

    Statistics are estimated from up to ``max_batches`` training crops of ``segment_frames`` frames, read by a
    single-process :class:`~shards.crop_stream.CropStream` with ``seed`` (so every rank, and a resumed run, gets
    the same numbers). They are computed unless ``norm_mean`` is already set or ``norm="batchnorm"``; ``norm``
    becomes ``"stats"``. Audio shards return ``model_cfg`` unchanged.
    """
    check_model_fits_shards(model_cfg, manifest, shards)
    if manifest.get("kind", "audio") != "features":
        return model_cfg
    feats = model_cfg.features
    dim = int(manifest.get("feature_dim") or 0)
    have = int(getattr(feats, "feature_dim", 0) or 0)
    if dim and have and have != dim:
        raise ConfigError(f"model.features.feature_dim={have} but {shards} holds D={dim} features per frame")
    dim = dim or have
    if hasattr(feats, "feature_dim") and dim:
        feats = dataclasses.replace(feats, feature_dim=dim)
    if feats.norm_mean and dim and len(feats.norm_mean) != dim:
        raise ConfigError(
            f"model.features.norm_mean has {len(feats.norm_mean)} values but {shards} holds D={dim} features"
        )
    if not feats.norm_mean and feats.norm != "batchnorm":
        from shards.crop_stream import CropStream

        stream = CropStream(
            shards, split, crop_samples=segment_frames, batch_size=batch_size, seed=seed,
            rank=0, world_size=1, holdout_fold=holdout_fold, folds="exclude",
        )  # fmt: skip
        limit = min(len(stream), max_batches)
        batches = (b["feats"] for _, b in zip(range(limit), stream))
        mean, std = estimate_sequence_stats(batches)
        if dim and len(mean) != dim:
            raise ConfigError(f"{shards}: manifest says D={dim} but its {split} shards hold D={len(mean)}")
        feats = dataclasses.replace(feats, norm="stats", norm_mean=mean, norm_std=std)
        if hasattr(feats, "feature_dim") and not dim:
            feats = dataclasses.replace(feats, feature_dim=len(mean))
        log.info(
            "precomputed features: per-dimension mean/std of %d features from %d training batches "
            "(stored in model.features.norm_mean / norm_std)",
            len(mean),
            limit,
        )
    return dataclasses.replace(model_cfg, features=feats)
