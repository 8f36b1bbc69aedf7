"""Front end for precomputed feature sequences (Million Song Dataset segments): no signal processing.

A model whose ``features.features`` is ``["precomputed"]`` is fed feature shards (manifest kind
``"features"``): batches ``[B, frames, D]`` float16 (MSD: ``D = 25`` = timbre 12 | chroma 12 | loudness_max 1
per segment). :class:`PrecomputedFrontend` turns them into the backbone layout ``[B, 1, D, frames]`` float32
and normalises each dimension, so every registered backbone (``cnn1d``, ``rnn``, ``crnn``, ...) trains on
them unchanged:

* ``norm="stats"``: ``(x - mean[d]) / std[d]`` with per-dimension statistics of the training set, stored in
  the config (``norm_mean`` / ``norm_std``, length D) and so in every checkpoint. ``engine.train`` computes
  them from the training shards when they are missing (:func:`estimate_sequence_stats`).
* ``norm="batchnorm"``: a learned ``BatchNorm1d(D)``; ``norm="none"``: raw values.

The feature dimension comes from ``FrontendConfig.feature_dim`` (0: the length of ``norm_mean``); training
fills it from the manifest. Only time-axis augmentation makes sense on such sequences:
:func:`sequence_augment_config` keeps SpecAugment's time masks (and mixup) and switches off the waveform
augmentations, pitch shift, time stretch and frequency masks (dimensions are heterogeneous: masking or
shifting across timbre / chroma / loudness is not a plausible variation of the music).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from kernels.augment_config import AugmentConfig
from kernels.features import PRECOMPUTED, FrontendConfig

__all__ = [
    "PRECOMPUTED",
    "PrecomputedFrontend",
    "estimate_sequence_stats",
    "is_precomputed",
    "sequence_augment_config",
]

log = logging.getLogger(__name__)

_NORMS = ("stats", "batchnorm", "none")


def is_precomputed(cfg: FrontendConfig) -> bool:
    """True when ``cfg`` describes a feature-sequence model (``features == ["precomputed"]``)."""
    return PRECOMPUTED in cfg.features


def _feature_dim(cfg: FrontendConfig) -> int:
    return int(cfg.feature_dim or len(cfg.norm_mean))


class PrecomputedFrontend(nn.Module):
    """Feature sequences ``[B, frames, D]`` (float16 / float32) -> float32 ``[B, 1, D, frames]``.

    Args:
        cfg: the front-end config; ``features`` must be ``["precomputed"]``; ``norm`` is ``"stats"`` (with
            ``norm_mean`` / ``norm_std`` of length D), ``"batchnorm"`` or ``"none"``.
        feature_dim: D; default ``cfg.feature_dim``, else ``len(cfg.norm_mean)``.

    ``out_shape(frames) -> (1, D, frames)``. Computed in float32 also under ``torch.autocast``.
    """

    def __init__(self, cfg: FrontendConfig, feature_dim: int | None = None) -> None:
        super().__init__()
        if list(cfg.features) != [PRECOMPUTED]:
            raise ValueError(f"PrecomputedFrontend needs features == ['precomputed'], got {cfg.features}")
        dim = int(feature_dim or _feature_dim(cfg))
        if dim < 1:
            raise ValueError(
                "precomputed features: the feature dimension is unknown (set frontend.feature_dim, or train on "
                "feature shards: engine.train fills it from the manifest)"
            )
        if cfg.norm not in _NORMS:
            raise ValueError(f"frontend.norm: {cfg.norm!r} is not one of {list(_NORMS)}")
        self.cfg = cfg
        self.feature_dim = dim
        self.channels, self.bins = 1, dim
        self.norm_kind = cfg.norm
        self.bn: nn.BatchNorm1d | None = None
        if cfg.norm == "stats":
            if len(cfg.norm_mean) != dim or len(cfg.norm_std) != dim:
                raise ValueError(
                    f"precomputed features: norm='stats' needs norm_mean / norm_std of length D={dim} "
                    f"(got {len(cfg.norm_mean)} / {len(cfg.norm_std)}); engine.train computes them from the "
                    "training shards when they are empty"
                )
            if any(not (s > 0 and math.isfinite(s)) for s in cfg.norm_std):
                raise ValueError("precomputed features: norm_std must be finite and > 0")
            mean = torch.tensor(cfg.norm_mean, dtype=torch.float32).view(1, 1, dim, 1)
            std = torch.tensor(cfg.norm_std, dtype=torch.float32).view(1, 1, dim, 1)
            self.register_buffer("norm_mean", mean, persistent=False)  # rebuilt from the config
            self.register_buffer("norm_std", std, persistent=False)
        elif cfg.norm == "batchnorm":
            self.bn = nn.BatchNorm1d(dim)

    def out_shape(self, num_frames: int) -> tuple[int, int, int]:
        """``(C, F, frames) = (1, D, num_frames)``: sequences keep their length."""
        return 1, self.feature_dim, int(num_frames)

    def forward(self, feats: Tensor) -> Tensor:
        if feats.dim() != 3 or feats.shape[-1] != self.feature_dim:
            raise ValueError(
                f"precomputed features: expected [B, frames, D={self.feature_dim}], got {tuple(feats.shape)} "
                "(this model was trained on feature shards such as MSD; it does not take audio)"
            )
        if not feats.is_floating_point():
            raise TypeError(f"precomputed features must be floating point, got {feats.dtype}")
        with torch.autocast(feats.device.type, enabled=False):
            x = feats.float()  # (B, frames, D)
            if self.norm_kind == "stats":  # on the stored layout: one pass over contiguous memory, same values
                x = (x - self.norm_mean.view(1, 1, -1)) / self.norm_std.view(1, 1, -1)
            y = x.transpose(1, 2)  # (B, D, frames), a view
            if self.bn is not None:
                y = self.bn(y)
            return y.unsqueeze(1)  # (B, 1, D, frames)


def sequence_augment_config(cfg: AugmentConfig) -> AugmentConfig:
    """The augmentations that apply to feature sequences: time masks and mixup (see the module docstring)."""
    return dataclasses.replace(
        cfg,
        gain_p=0.0,
        noise_p=0.0,
        shift_p=0.0,
        polarity_p=0.0,
        time_stretch_p=0.0,
        pitch_shift_p=0.0,
        freq_masks=0,
    )


@torch.no_grad()
def estimate_sequence_stats(batches: Iterable[Tensor]) -> tuple[list[float], list[float]]:
    """Per-dimension ``(mean, std)`` (lists of length D) over every frame of ``[B, frames, D]`` batches.

    Accumulated in float64 (sum and sum of squares); std is clamped to >= 1e-5.
    """
    total: Tensor | None = None
    total_sq: Tensor | None = None
    count = 0
    for x in batches:
        if x.dim() != 3:
            raise ValueError(
                f"estimate_sequence_stats: expected [B, frames, D] batches, got {tuple(x.shape)}"
            )
        y = x.double().reshape(-1, x.shape[-1])  # (B * frames, D)
        s, sq = y.sum(0), y.pow(2).sum(0)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += y.shape[0]
    if total is None or total_sq is None or count == 0:
        raise ValueError("estimate_sequence_stats got no frames")
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-5)
    return mean.tolist(), std.tolist()
