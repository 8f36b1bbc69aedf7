"""The model wrapper, its config and the architecture registry.

A genre model is one ``nn.Module`` that takes raw waveforms and returns logits::

    wave int16|float [B, T] ──▶ WaveAugment ──▶ Frontend ──▶ [B, C, F, frames] ──▶ SpecAugment
        ──▶ Mixup (training, with targets) ──▶ backbone ──▶ logits [B, K]

The front end (on-device features) and the augmentations live inside the model, so training, evaluation,
batch classification and export all see the same computation; augmentations are identity in eval mode.

A model with ``features.features == ["precomputed"]`` takes feature sequences instead of waveforms (feature
shards, e.g. the Million Song Dataset)::

    feats float16|float [B, frames, D] ──▶ PrecomputedFrontend (per-dimension normalisation) ──▶
        [B, 1, D, frames] ──▶ SpecAugment (time masks only) ──▶ Mixup ──▶ backbone ──▶ logits [B, K]

and ``sample_rate`` / ``segment_samples`` are then the shard set's nominal frame rate and the crop in frames.

Backbones are registered by name in :data:`ARCHS`. Each one is an ``nn.Module`` subclass with a nested
``Config`` dataclass and ``__init__(self, cfg, in_shape: (C, F, frames), num_classes)``; its ``forward``
maps features ``[B, C, F, frames]`` to logits ``[B, K]`` for *any* frame count (global pooling), so short
training crops and longer evaluation windows both work. Every backbone names its final ``nn.Linear``
``classifier`` (``backbone.classifier`` in a :class:`GenreModel`), which transfer learning re-initialises.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from engine.config import ConfigError, from_dict, to_dict
from engine.models.inputs import input_kind
from kernels.augment import build_augment, reseed_all
from kernels.augment_config import AugmentConfig
from kernels.features import FrontendConfig, build_frontend
from kernels.precomputed import PrecomputedFrontend, sequence_augment_config
from registry import Registry

log = logging.getLogger(__name__)

ARCHS: Registry[type[nn.Module]] = Registry("architecture")

HEAD_NAME = "classifier"
"""Attribute name of every backbone's final ``nn.Linear`` (the head replaced by transfer learning)."""


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class ModelConfig:
    """Which architecture, its parameters, the feature stack and the augmentations.

    ``params`` is checked against the architecture's nested ``Config`` dataclass (unknown keys and wrong
    types are errors); :meth:`arch_config` returns it as that dataclass.
    """

    arch: str = "cnn"
    params: dict[str, Any] = field(default_factory=dict)
    features: FrontendConfig = field(default_factory=FrontendConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    channels_last: bool = False

    def arch_class(self) -> type[nn.Module]:
        try:
            return ARCHS.get(self.arch)
        except KeyError as e:
            raise ConfigError(f"model.arch: {e.args[0]}") from None

    def arch_config(self) -> Any:
        """``params`` as the architecture's ``Config`` dataclass (raises :class:`ConfigError`)."""
        cls = self.arch_class()
        config_cls = getattr(cls, "Config", None)
        if config_cls is None or not dataclasses.is_dataclass(config_cls):
            raise ConfigError(f"architecture {self.arch!r} has no nested Config dataclass")
        return from_dict(config_cls, self.params, f"model.params ({self.arch})")

    def validate(self) -> None:
        """Fail fast: unknown architecture, bad ``params``, or a feature stack the architecture rejects."""
        arch_cfg = self.arch_config()
        check = getattr(self.arch_class(), "check_features", None)
        if callable(check):
            check(arch_cfg, self.features)


# ---------------------------------------------------------------------------------------------------------
# Building blocks shared by the backbones


class InputNorm(nn.Module):
    """Learned per-feature standardisation of the backbone input.

    ``mode="channel"``: ``BatchNorm2d(C)`` over ``[B, C, F, frames]`` (one statistic per feature map);
    ``mode="bin"``: one statistic per (channel, bin), i.e. ``BatchNorm1d(C*F)`` -- right for stacked
    heterogeneous features (MFCC c0 vs deltas vs chroma have very different scales).
    """

    def __init__(self, in_shape: tuple[int, int, int], mode: str) -> None:
        super().__init__()
        c, f, _ = in_shape
        self.mode = mode
        if mode == "channel":
            self.norm: nn.Module = nn.BatchNorm2d(c)
        elif mode == "bin":
            self.norm = nn.BatchNorm1d(c * f)
        elif mode == "none":
            self.norm = nn.Identity()
        else:
            raise ConfigError(f"input_norm must be 'channel', 'bin' or 'none', got {mode!r}")

    def forward(self, x: Tensor) -> Tensor:  # (B, C, F, frames) -> same
        if self.mode != "bin":
            return self.norm(x)
        b, c, f, t = x.shape
        return self.norm(x.reshape(b, c * f, t)).reshape(b, c, f, t)


class TemporalPool(nn.Module):
    """Pool a sequence ``[B, frames, D]`` to ``[B, D]``: ``mean``, ``max``, ``meanmax`` (concatenated:
    ``[B, 2D]``) or ``attention`` (learned softmax weights over frames)."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("mean", "max", "meanmax", "attention"):
            raise ConfigError(f"pool must be mean, max, meanmax or attention, got {mode!r}")
        self.mode = mode
        self.out_dim = 2 * dim if mode == "meanmax" else dim
        self.score = nn.Linear(dim, 1) if mode == "attention" else None

    def forward(self, x: Tensor) -> Tensor:  # (B, frames, D) -> (B, D or 2D)
        if self.mode == "mean":
            return x.mean(dim=1)
        if self.mode == "max":
            return x.amax(dim=1)
        if self.mode == "meanmax":
            return torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=-1)
        assert self.score is not None
        weights = torch.softmax(self.score(x), dim=1)  # (B, frames, 1)
        return (weights * x).sum(dim=1)


def clamp_pool(size: int, p: int) -> tuple[int, int]:
    """A pool size that does not exceed the (statically known) axis ``size``; returns (pool, new size)."""
    p = max(1, min(p, size))
    return p, max(1, -(-size // p))


# ---------------------------------------------------------------------------------------------------------
# The wrapper


class _NoMixup(nn.Module):
    """Stands in for Mixup after :meth:`GenreModel.strip_augmentation`."""

    def forward(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return x, targets


class GenreModel(nn.Module):
    """Raw waveform ``[B, T]`` (int16 or float in [-1, 1], at ``sample_rate`` Hz) -> logits ``[B, K]``; or,
    for a precomputed-feature model (``cfg.features.features == ["precomputed"]``, :attr:`input_kind`
    ``"features"``), feature sequences ``[B, frames, D]`` -> logits ``[B, K]``.

    Args:
        cfg: the :class:`ModelConfig` (validated here).
        num_classes: K, the number of genre labels.
        sample_rate: Hz of the waveforms this model is fed.
        segment_samples: training crop length in samples (frames for a precomputed-feature model); fixes the
            backbone's ``in_shape`` (the backbones pool globally, so longer or shorter windows work at
            inference too).

    ``forward(wave)`` returns logits; ``forward(wave, targets)`` with float targets ``[B, K]`` returns
    ``(logits, targets)``, the targets mixed when mixup is on in training mode. Augmentations only act in
    training mode; eval-mode output is deterministic.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, sample_rate: int, segment_samples: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"a genre model needs at least 2 classes, got {num_classes}")
        if sample_rate <= 0 or segment_samples <= 0:
            raise ConfigError(
                f"sample_rate and segment_samples must be positive, got {sample_rate} and {segment_samples}"
            )
        cfg.validate()
        self.cfg = cfg
        self.num_classes = int(num_classes)
        self.sample_rate = int(sample_rate)
        self.segment_samples = int(segment_samples)

        self.input_kind = input_kind(cfg)  # "features" (feature sequences) or "wave"
        augment = cfg.augment
        self.frontend: nn.Module
        try:  # the front ends (f_max, CQT range) and the augmentation config check with plain ValueError
            if self.input_kind == "features":
                self.frontend = PrecomputedFrontend(cfg.features)
                augment = sequence_augment_config(augment)  # time masks + mixup: nothing else fits sequences
            else:
                self.frontend = build_frontend(cfg.features, sample_rate)
            self.wave_aug, self.spec_aug, self.mixup = build_augment(augment, sample_rate)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(str(err)) from err
        self.in_shape: tuple[int, int, int] = tuple(int(v) for v in self.frontend.out_shape(segment_samples))
        arch_cls = cfg.arch_class()
        arch_cfg = cfg.arch_config()
        check = getattr(arch_cls, "check_input", None)
        if callable(check):
            check(arch_cfg, self.in_shape)
        self.backbone = arch_cls(arch_cfg, self.in_shape, self.num_classes)
        if cfg.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        # wave [B, T] -> backbone.prefix output, served from a cache of the frozen prefix (set by the training
        # loop with optim.cache_frozen_prefix: engine.feature_cache.PrefixCache.by_content); None: computed
        self.prefix_cache: Callable[[Tensor], Tensor] | None = None

    @property
    def arch(self) -> str:
        return self.cfg.arch

    def config_dict(self) -> dict[str, Any]:
        """The model config as a plain dict (what checkpoints store under ``config["model"]``)."""
        return to_dict(self.cfg)

    def features(self, wave: Tensor) -> Tensor:
        """Waveform ``[B, T]`` -> backbone input ``[B, C, F, frames]`` (wave and spec augmentation included
        in training mode). A precomputed-feature model takes ``[B, frames, D]`` here instead."""
        if self.input_kind == "features":
            return self.spec_aug(self.frontend(wave))  # (B, frames, D) -> (B, 1, D, frames)
        if wave.dim() != 2:
            raise ValueError(f"expected waveforms [B, T], got shape {tuple(wave.shape)}")
        if wave.dtype == torch.int16:
            # convert once, on the device: wave augmentation works on float
            wave = wave.to(torch.float32) / 32768.0
        elif not wave.is_floating_point():
            raise TypeError(f"waveforms must be int16 or floating point, got {wave.dtype}")
        wave = self.wave_aug(wave)
        x = self.frontend(wave)  # (B, C, F, frames)
        return self.spec_aug(x)

    def forward(self, wave: Tensor, targets: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        if self.prefix_cache is not None:  # mixup is off with a prefix cache (checked where it is set)
            logits = self.backbone.after_prefix(self.prefix_cache(wave))
            return logits if targets is None else (logits, targets)
        return self.head(self.features(wave), targets)

    def prefix_features(self, wave: Tensor) -> Tensor:
        """Waveform ``[B, T]`` -> the output of the backbone's frozen prefix (``backbone.prefix``, e.g. musicnn's
        front end ``[B, 561, T]``): :meth:`features`, channels-last, ``backbone.prefix``. What a
        :class:`~engine.feature_cache.PrefixCache` stores and ``backbone.after_prefix`` reads."""
        x = self.features(wave)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone.prefix(x)

    def head(self, x: Tensor, targets: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """The rest of :meth:`forward` after :meth:`features`: backbone input ``x [B, C, F, frames]`` ->
        mixup (training, with float targets ``[B, K]``), channels-last, backbone -> logits ``[B, K]``, or
        ``(logits, targets)`` with targets. What a cache of fixed front-end features feeds
        (:mod:`engine.feature_cache`)."""
        if targets is not None:
            if targets.shape != (x.shape[0], self.num_classes):
                raise ValueError(
                    f"targets must be [B, K] = [{x.shape[0]}, {self.num_classes}], got {tuple(targets.shape)}"
                )
            x, targets = self.mixup(x, targets.to(x.dtype))
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.backbone(x)
        return logits if targets is None else (logits, targets)

    @torch.no_grad()
    def probabilities(self, wave: Tensor) -> Tensor:
        """Class probabilities ``[B, K]`` (softmax of eval-mode logits; restores the previous mode)."""
        was_training = self.training
        self.eval()
        try:
            return torch.softmax(self(wave).float(), dim=-1)
        finally:
            self.train(was_training)

    def reseed_augmentation(self, seed: int) -> int:
        """Reseed every random augmentation (e.g. per epoch and rank); returns how many were reseeded."""
        return reseed_all(self, seed)

    def strip_augmentation(self) -> GenreModel:
        """Replace the augmentation modules by identities (for export); returns ``self``."""
        self.wave_aug = nn.Identity()
        self.spec_aug = nn.Identity()
        self.mixup = _NoMixup()
        return self

    def extra_repr(self) -> str:
        return (
            f"arch={self.cfg.arch}, num_classes={self.num_classes}, sample_rate={self.sample_rate}, "
            f"segment_samples={self.segment_samples}, in_shape={self.in_shape}"
        )


def build_model(cfg: ModelConfig, num_classes: int, sample_rate: int, segment_samples: int) -> GenreModel:
    """Build a :class:`GenreModel` (see its docstring for the arguments)."""
    model = GenreModel(cfg, num_classes, sample_rate, segment_samples)
    log.info(
        "built %s: in_shape=%s, %d classes, %s parameters",
        cfg.arch,
        model.in_shape,
        num_classes,
        f"{count_parameters(model):,}",
    )
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
