"""Compute a model's front-end features once per clip and reuse them: for recipes that train only what sits
after a fixed front end (a linear probe or the ``stats`` head on MFCC / chroma, a head on a frozen front end).

:class:`GenreModel` runs ``wave -> WaveAugment -> front end -> SpecAugment -> Mixup -> backbone``
(:meth:`GenreModel.features` is the first three). The backbone input ``[B, C, F, frames]`` of a clip is
therefore a fixed function of its samples exactly when

* the front end holds no parameter with ``requires_grad`` (``features.trainable: false``, or frozen),
* the front end holds no BatchNorm (``features.norm: batchnorm`` standardises each batch by its own
  statistics in training and updates running statistics: stateful, and trainable when affine),
* wave and spectrogram augmentation are inactive (every ``*_p`` = 0 and no masks, or ``augment.enabled:
  false``, or :meth:`GenreModel.strip_augmentation`): they redraw per call in training mode.

Mixup does not prevent caching: it mixes backbone inputs *after* the front end, so :meth:`GenreModel.head`
applies it to cached features as :meth:`GenreModel.forward` would. :func:`uncacheable_reason` says which
rule a model breaks; :class:`FeatureCache` refuses such a model.

:class:`FeatureCache` maps a :class:`ClipKey` (track key, crop start and length, in input samples: audio
samples, or frames for a precomputed-feature model) to the features of that crop, computed by
``model.features`` under ``no_grad``; in memory, and optionally as ``.npy`` files under
``<directory>/<fingerprint>/`` where the fingerprint hashes the front-end config and sample rate (a changed
front end never reads stale files). ``computed`` counts the clips it computed, ``memory_hits`` /
``disk_hits`` the clips it served. A :class:`FeatureStore` (a directory and a memory that outlive one cache)
lets several caches in one process share what they computed: ``cv`` gives one to every fold's fit, so a fold
reads the clips an earlier fold computed from memory, not from disk. :meth:`FeatureCache.by_content` keys each
input row by its content (sha1 of its bytes) instead: what a caller without track keys (a model's forward) uses.

:class:`PrefixCache` goes one step further for gradient fine-tuning: it stores the output of the backbone's
frozen *prefix* (the backbone protocol ``prefix_modules`` / ``prefix(x)`` / ``after_prefix(h)``, e.g. musicnn's
front end) after the front end, ``GenreModel.prefix_features``. That is a fixed function of the clip when the
front end is cacheable (above), every parameter of the prefix modules is frozen and their BatchNorms run on
running statistics (:func:`moving_prefix_reason`), and mixup is off (it mixes before the prefix; the training
loop checks that, :mod:`engine.train.prefix`). Prefix outputs are kept in memory only (no ``.npy`` files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from engine.config import to_dict
from engine.models.base import GenreModel

log = logging.getLogger(__name__)

__all__ = [
    "ClipKey",
    "FeatureCache",
    "FeatureStore",
    "NotCacheableError",
    "PrefixCache",
    "content_keys",
    "frontend_fingerprint",
    "moving_prefix_reason",
    "uncacheable_reason",
]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class NotCacheableError(ValueError):
    """The model's backbone input is not a fixed function of the clip (the message says why)."""


class ClipKey(NamedTuple):
    """One crop of one track: ``track`` (its key in the shard set), ``start`` and ``length`` in input
    samples (frames for a precomputed-feature model)."""

    track: str
    start: int
    length: int


def uncacheable_reason(model: GenreModel) -> str | None:
    """Why ``model``'s front-end output cannot be cached (every rule broken, joined), or None if it can."""
    reasons = []
    trainable = [n for n, p in model.frontend.named_parameters() if p.requires_grad]
    if trainable:
        reasons.append(f"the front end has trainable parameters ({', '.join(trainable)})")
    norms = [n or "frontend" for n, m in model.frontend.named_modules() if isinstance(m, _NORMS)]
    if norms or model.cfg.features.norm == "batchnorm":
        reasons.append(f"the front end normalises by batch statistics (norm: batchnorm: {', '.join(norms)})")
    for stage in ("wave_aug", "spec_aug"):
        chain = getattr(model, stage)
        if getattr(chain, "is_active", False):
            parts = ", ".join(getattr(chain, "parts", {}).keys())
            reasons.append(f"{stage} is active in training ({parts}): features are redrawn every call")
    return "; ".join(reasons) or None


def prefix_modules(model: GenreModel) -> dict[str, nn.Module]:
    """The backbone's frozen-prefix modules by parameter-name prefix (``backbone.timbral``, ...); empty when
    the backbone lacks the prefix protocol (``prefix_modules``, ``prefix``, ``after_prefix``)."""
    bb = model.backbone
    if not all(callable(getattr(bb, f, None)) for f in ("prefix", "after_prefix")):
        return {}
    return {f"backbone.{name}": getattr(bb, name) for name in getattr(bb, "prefix_modules", ())}


def moving_prefix_reason(model: GenreModel, norms: bool = True) -> str | None:
    """Why the output of ``model``'s backbone prefix is not a fixed function of its input right now (no prefix
    protocol, a trainable parameter, with ``norms`` a BatchNorm in training mode), or None."""
    modules = prefix_modules(model)
    if not modules:
        return f"the {model.cfg.arch} backbone has no frozen-prefix protocol (prefix_modules, prefix, after_prefix)"
    trainable = [f"{stem}.{n}" for stem, m in modules.items() for n, p in m.named_parameters() if p.requires_grad]
    if trainable:
        return f"prefix parameters are trainable ({', '.join(trainable[:4])}{', ...' if len(trainable) > 4 else ''})"
    training = [f"{stem}.{n}".rstrip(".") for stem, m in modules.items() for n, b in m.named_modules()
                if norms and isinstance(b, _NORMS) and b.training]  # fmt: skip
    if training:
        return f"prefix BatchNorms normalise by batch statistics ({', '.join(training[:4])})"
    return None


def content_keys(rows: Tensor) -> list[ClipKey]:
    """One key per input row ``[B, ...]``, named by its content (sha1 of its bytes): equal rows, equal keys."""
    arr = rows.detach().cpu().numpy()
    return [ClipKey("sha1:" + hashlib.sha1(r.tobytes()).hexdigest(), 0, int(r.shape[0])) for r in arr]


def frontend_fingerprint(model: GenreModel) -> str:
    """16 hex digits naming the front end: its config, input kind and sample rate."""
    spec = {"features": to_dict(model.cfg.features), "input_kind": model.input_kind, "sample_rate": model.sample_rate}
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


WaveSource = Tensor | Callable[[list[int]], Tensor]


@dataclass
class FeatureStore:
    """Features kept for several :class:`FeatureCache` objects in one process: ``directory`` (optional root of
    the ``.npy`` files) and ``memory`` (per front-end fingerprint, ``{ClipKey: features}``)."""

    directory: Path | None = None
    memory: dict[str, dict[ClipKey, Tensor]] = field(default_factory=dict)


class FeatureCache:
    """Front-end features per :class:`ClipKey` for one model (see the module docstring).

    Args:
        model: a cacheable :class:`GenreModel` (else :class:`NotCacheableError` with the reason).
        directory: optional root for ``.npy`` files (``<directory>/<fingerprint>/<hash>.npy``, float32 as
            computed); None keeps everything in memory only; a :class:`FeatureStore`: its directory, and its
            memory shared with the other caches given the same store.
        store_device: where the in-memory copies live (default CPU; a GPU keeps a small set there).
    """

    def __init__(
        self, model: GenreModel, directory: str | Path | FeatureStore | None = None,
        store_device: torch.device | str = "cpu",
    ) -> None:  # fmt: skip
        reason = uncacheable_reason(model)
        if reason:
            raise NotCacheableError(f"front-end features of this model cannot be cached: {reason}")
        self.model = model
        self.fingerprint = self._fingerprint(model)
        store = directory if isinstance(directory, FeatureStore) else FeatureStore(directory and Path(directory))
        self.directory = store.directory / self.fingerprint if store.directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.store_device = torch.device(store_device)
        self._memory = store.memory.setdefault(self.fingerprint, {})
        self.computed = 0
        self.memory_hits = 0
        self.disk_hits = 0

    def _fingerprint(self, model: GenreModel) -> str:
        return frontend_fingerprint(model)

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, key: ClipKey) -> bool:
        return key in self._memory or (self._path(key) is not None and self._path(key).exists())

    def _path(self, key: ClipKey) -> Path | None:
        if self.directory is None:
            return None
        name = hashlib.sha1(f"{key.track}\0{key.start}\0{key.length}".encode()).hexdigest()
        return self.directory / f"{name}.npy"

    def _from_disk(self, key: ClipKey) -> Tensor | None:
        path = self._path(key)
        if path is None or not path.exists():
            return None
        return torch.from_numpy(np.load(path))

    def _to_disk(self, key: ClipKey, feats: Tensor) -> None:
        path = self._path(key)
        if path is None:
            return
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, feats.detach().cpu().numpy())
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none

    @torch.no_grad()
    def _compute(self, wave: Tensor) -> Tensor:
        # model.features is wave_aug -> front end -> spec_aug; both augmentations are inactive here (checked),
        # and the front end has no mode-dependent part, so train / eval mode give the same values
        return self.model.features(wave)

    def features(self, keys: Sequence[ClipKey], wave: WaveSource, device: torch.device | str | None = None) -> Tensor:
        """Backbone input ``[B, C, F, frames]`` for ``keys`` (one per row), computing only the missing ones.

        ``wave``: the batch's input ``[B, T]`` (``[B, frames, D]`` for a precomputed-feature model), or a
        callable that returns the rows for a list of indices into ``keys`` (so audio is only decoded for
        clips not in the cache). Rows of one call must share a shape (one crop length). Returned on
        ``device`` (default: the model's device).
        """
        device = torch.device(device) if device is not None else next(self.model.parameters()).device
        out: list[Tensor | None] = [None] * len(keys)
        missing: list[int] = []
        for i, key in enumerate(keys):
            hit = self._memory.get(key)
            if hit is not None:
                self.memory_hits += 1
            else:
                hit = self._from_disk(key)
                if hit is not None:
                    self.disk_hits += 1
                    self._memory[key] = hit.to(self.store_device)
            if hit is None:
                missing.append(i)
            out[i] = hit
        if missing:
            rows = wave(missing) if callable(wave) else wave[missing]
            feats = self._compute(rows.to(device))
            self.computed += len(missing)
            for j, i in enumerate(missing):
                one = feats[j].clone()  # its own storage: keep no view of the whole batch alive
                self._memory[keys[i]] = one.to(self.store_device)
                self._to_disk(keys[i], one)
                out[i] = one
        return torch.stack([t.to(device) for t in out if t is not None])

    def by_content(self, rows: Tensor) -> Tensor:
        """:meth:`features` of input rows ``[B, T]`` (``[B, frames, D]``) keyed by :func:`content_keys`, on
        their device."""
        return self.features(content_keys(rows), rows, rows.device)

    def counts(self) -> dict[str, int]:
        """``{"computed", "memory_hits", "disk_hits", "stored"}``: for logs."""
        return {
            "computed": self.computed,
            "memory_hits": self.memory_hits,
            "disk_hits": self.disk_hits,
            "stored": len(self._memory),
        }


class PrefixCache(FeatureCache):
    """The backbone's frozen-prefix output (``GenreModel.prefix_features``) per clip, in memory (see the module
    docstring); ``store``'s memory is shared with other prefix caches of the same front end and prefix weights
    (the fingerprint hashes both), its directory ignored. :class:`NotCacheableError` when the front end is not
    cacheable or the prefix is not frozen (:func:`moving_prefix_reason`); a prefix that starts moving later
    (unfrozen, a BatchNorm back in training mode) raises RuntimeError at the next computation."""

    def __init__(self, model: GenreModel, store: FeatureStore | None = None, store_device: torch.device | str = "cpu") -> None:
        # the BatchNorms are checked at each computation: the freezer puts them in eval mode each epoch
        reason = moving_prefix_reason(model, norms=False)
        if reason:
            raise NotCacheableError(f"the backbone prefix cannot be cached: {reason}")
        super().__init__(model, FeatureStore(None, store.memory if store is not None else {}), store_device)

    def _fingerprint(self, model: GenreModel) -> str:
        h = hashlib.sha1(f"prefix\0{frontend_fingerprint(model)}".encode())
        for stem, module in prefix_modules(model).items():  # the frozen weights and statistics themselves
            for name, t in module.state_dict().items():
                h.update(f"{stem}.{name}".encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return "prefix-" + h.hexdigest()[:16]

    @torch.no_grad()
    def _compute(self, wave: Tensor) -> Tensor:
        reason = moving_prefix_reason(self.model)
        if reason:
            raise RuntimeError(f"cached prefix outputs went stale: {reason}")
        return self.model.prefix_features(wave)
