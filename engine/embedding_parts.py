"""What ``engine embed`` computes per window: one model's named output, or several parts side by side.

A part maps int16 windows ``[n, T]`` to float32 rows ``[n, D]`` on the host:

* :class:`ModelPart` -- a checkpoint's backbone output ``outputs(x)[name]`` (musicnn ``meanmax``, 1,506, ...);
* :class:`StatsPart` -- ``stats``, the classic clip statistics: the ``configs/stats.yaml`` front end (MFCC(20)
  + deltas + chroma, 72 bands, float32) pooled over the window's frames by
  :func:`engine.models.stats.pooled_statistics` (mean, then std: 144 values).

:func:`build_parts` reads ``engine embed``'s model argument: one checkpoint or pretrained name (the embedding of
one model, as it always was), or a comma-separated list (``musicnn:MSD_musicnn,musicnn:MTT_musicnn,stats``)
whose rows :class:`EmbeddingParts` concatenates in the order given. Every part scores the same windows: the
window is the first model's (its checkpoint's window at the shard set's rate), so ``stats`` alone has none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.checkpoint import SELF_RESAMPLING_FEATURES, load_checkpoint, model_config_from
from engine.checkpoint_format import CheckpointError
from engine.config import CONFIG_DIR, config_json, from_dict, load_yaml
from engine.distributed import AUTOCAST_DTYPES, check_precision
from engine.models import GenreModel, ModelConfig, build_model
from engine.models.stats import pooled_statistics
from engine.pretrained import is_pretrained_spec, pretrained_names, resolve_checkpoint
from engine.scoring import forward
from shards.writer import sha256_file

__all__ = ["STATS", "STATS_CONFIG", "EmbedError", "EmbeddingParts", "ModelPart", "StatsPart", "build_parts",
           "embedding_model"]  # fmt: skip

STATS = "stats"  # the part name of the classic clip statistics
STATS_CONFIG = CONFIG_DIR / "stats.yaml"  # its front end and statistics: model.features, model.params.stats


class EmbedError(ValueError):
    """An embedding job that cannot run as asked (model without named outputs, rate mismatch, changed settings)."""


def embedding_model(ckpt: dict[str, Any], sample_rate: int) -> tuple[GenreModel, int]:
    """The checkpoint's model for waveforms at ``sample_rate`` Hz, in eval mode, and its evaluation window in
    samples there: the checkpoint's ``window_samples`` (else ``segment_samples``), as ``evaluate`` uses it,
    scaled to ``sample_rate`` (47,616 samples at 16 kHz -> 65,621 at 22.05 kHz: the same 187 musicnn frames
    after the in-model resampler).
    """
    cfg = model_config_from(ckpt)
    ck_rate, ck_seg = int(ckpt["sample_rate"]), int(ckpt["segment_samples"])
    if sample_rate != ck_rate and not set(cfg.features.features) <= SELF_RESAMPLING_FEATURES:
        raise EmbedError(
            f"the shard set is at {sample_rate} Hz but the checkpoint's features ({cfg.features.features}) were "
            f"computed at {ck_rate} Hz: re-shard the source at {ck_rate} Hz "
            f"(python tools/make_shards.py SOURCE --out DIR --sample-rate {ck_rate})"
        )
    scale = sample_rate / ck_rate
    model = build_model(cfg, len(ckpt["labels"]), sample_rate, int(round(ck_seg * scale)))
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as err:
        raise CheckpointError(f"weights do not fit the model the checkpoint's config describes: {err}") from err
    return model.eval(), int(round(int(ckpt.get("window_samples") or ck_seg) * scale))


def _embedding_name(model: GenreModel, name: str | None, spec: str) -> tuple[str, int]:
    backbone = model.backbone
    names = getattr(backbone, "EMBEDDINGS", None)
    if not names or not callable(getattr(backbone, "outputs", None)):
        raise EmbedError(
            f"{spec}: architecture {model.arch!r} has no named outputs to embed with; embeddings come from the "
            "pretrained architectures (musicnn, musicnn_vgg: e.g. musicnn:MSD_musicnn)"
        )
    name = name or backbone.DEFAULT_EMBEDDING
    if name not in names:
        raise EmbedError(f"--embedding {name!r}: {model.arch} has {', '.join(names)} (default {backbone.DEFAULT_EMBEDDING})")
    return name, int(backbone.embedding_dims()[name])


class ModelPart:
    """int16 windows ``[n, T]`` -> float32 embeddings ``[n, D]`` on the host: the eval-mode front end in
    float32, the backbone's named output ``embedding`` under ``precision`` autocast."""

    def __init__(
        self, model: GenreModel, embedding: str, device: torch.device, precision: str, channels_last: bool = True
    ) -> None:
        self.model, self.embedding, self.device = model.to(device), embedding, device
        self.dim = int(model.backbone.embedding_dims()[embedding])
        self.dtype = AUTOCAST_DTYPES[check_precision(precision)]
        self.spec, self.checkpoint, self.window = "", Path(), int(model.segment_samples)  # set by load()
        if channels_last:  # NHWC conv weights: ~1.3x on CPU for musicnn, same numbers (as classify does)
            model.backbone.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, spec: str, sample_rate: int, embedding: str | None, device: torch.device, precision: str,
             channels_last: bool = True) -> ModelPart:  # fmt: skip
        """The part of checkpoint (or pretrained name, converted on first use) ``spec`` at ``sample_rate`` Hz;
        its :attr:`window` is the checkpoint's evaluation window there (:func:`embedding_model`)."""
        model, window = embedding_model(load_checkpoint(spec), sample_rate)
        name, _ = _embedding_name(model, embedding, spec)
        part = cls(model, name, device, precision, channels_last)
        part.spec, part.checkpoint, part.window = spec, resolve_checkpoint(spec), window
        return part

    @property
    def label(self) -> str:
        return self.embedding

    def identity(self) -> dict[str, Any]:
        """What makes this part's rows: the checkpoint (named and by sha256) and the output's name."""
        return {"name": self.spec, "checkpoint_sha256": sha256_file(self.checkpoint), "embedding": self.embedding}

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> np.ndarray:
        x = self.model.features(windows.to(self.device, non_blocking=True))  # (n, C, F, frames), float32
        out = forward(self._embedding, x, self.device, self.dtype)  # (n, D)
        return out.cpu().numpy()

    def _embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.backbone.outputs(x)[self.embedding]


class StatsPart:
    """int16 windows ``[n, T]`` -> float32 ``[n, 144]`` on the host: the ``configs/stats.yaml`` front end
    (float32 ``[n, 1, 72, frames]`` at ``sample_rate`` Hz) pooled by :func:`pooled_statistics` (its
    ``model.params.stats``: mean, std), as the ``stats`` model sees a window before standardising it."""

    label = STATS

    def __init__(self, sample_rate: int, window: int, device: torch.device, config: Path = STATS_CONFIG) -> None:
        cfg = from_dict(ModelConfig, load_yaml(config)["model"], "model")
        self.model = build_model(cfg, 2, sample_rate, window).eval().to(device)  # 2 classes: the head is never run
        self.stats, self.device, self.window = tuple(self.model.backbone.stats), device, window
        self.dim, self.features = int(self.model.backbone.out_dim), config_json(cfg.features)

    def identity(self) -> dict[str, Any]:
        """The front end's settings and the statistics: what makes the rows (not the config file's bytes)."""
        return {"name": STATS, "features": self.features, "stats": list(self.stats)}

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> np.ndarray:
        x = self.model.features(windows.to(self.device, non_blocking=True))  # (n, 1, 72, frames), float32
        return pooled_statistics(x, self.stats).cpu().numpy()  # (n, 144): 72 means, then 72 stds


class EmbeddingParts:
    """The score function of the :class:`~engine.scoring.WindowScorer`: every part's rows of the same int16
    windows ``[n, window]``, concatenated in order -> float32 ``[n, dim]`` (one part: its rows as they are)."""

    def __init__(self, spec: str, parts: list[ModelPart | StatsPart], device: torch.device) -> None:
        self.spec, self.parts, self.device = spec, parts, device
        self.window = parts[0].window
        self.dim = sum(p.dim for p in parts)

    @property
    def label(self) -> str:
        """The embedding's name in logs and results: the output's name (``meanmax``), or every part's."""
        if len(self.parts) == 1:
            return self.parts[0].label
        return " + ".join(p.label if isinstance(p, StatsPart) else f"{p.spec} {p.label}" for p in self.parts)

    def identity(self) -> dict[str, Any]:
        """The parts' fields of the run's identity: one model as it always was (``checkpoint``,
        ``checkpoint_sha256``, ``embedding``), several as ``parts`` (each one's name, settings, ``dim`` and
        ``offset``, the first column of its block in a row)."""
        if len(self.parts) == 1:
            part = self.parts[0].identity()
            return {"checkpoint": self.spec, "checkpoint_sha256": part["checkpoint_sha256"], "embedding": part["embedding"]}
        offsets = np.cumsum([0] + [p.dim for p in self.parts]).tolist()
        return {"checkpoint": self.spec, "parts": [{**p.identity(), "dim": p.dim, "offset": offsets[i]}
                                                   for i, p in enumerate(self.parts)]}  # fmt: skip

    def __call__(self, windows: torch.Tensor) -> np.ndarray:
        if len(self.parts) == 1:
            return self.parts[0](windows)
        return np.concatenate([p(windows) for p in self.parts], axis=1)  # (n, dim)


def _check_names(names: list[str]) -> None:
    valid = [STATS, *pretrained_names()]
    for name in names:
        if name != STATS and not (is_pretrained_spec(name) and name in valid) and not Path(name).is_file():
            raise EmbedError(f"unknown embedding {name!r}: name {', '.join(valid)} or a checkpoint file "
                             "(several comma-separated, e.g. musicnn:MSD_musicnn,stats)")  # fmt: skip
    if len(set(names)) != len(names):
        raise EmbedError(f"{','.join(names)}: a part is named twice; name each once")


def build_parts(spec: str | os.PathLike, sample_rate: int, embedding: str | None, device: torch.device,
                precision: str, channels_last: bool = True) -> EmbeddingParts:  # fmt: skip
    """The parts ``spec`` names at the shard set's ``sample_rate`` Hz: one checkpoint or pretrained name, or a
    comma-separated list of them and ``stats`` (``embedding``: the named output of every model part). Raises
    :class:`EmbedError` for an unknown name, ``stats`` without a model, or models whose windows differ."""
    spec = os.fspath(spec)
    names = [n.strip() for n in spec.split(",")] if "," in spec or spec == STATS else [spec]
    if len(names) == 1 and names != [STATS]:  # one model: exactly the embed it always was
        return EmbeddingParts(spec, [ModelPart.load(spec, sample_rate, embedding, device, precision, channels_last)], device)
    _check_names(names)
    models = {n: ModelPart.load(n, sample_rate, embedding, device, precision, channels_last) for n in names if n != STATS}
    if not models:
        raise EmbedError("stats alone has no window: name a model before it, whose window it takes "
                         "(e.g. musicnn:MSD_musicnn,stats)")  # fmt: skip
    first = next(iter(models.values()))
    for part in models.values():
        if part.window != first.window:
            raise EmbedError(f"{part.spec}'s window ({part.window} samples) is not {first.spec}'s ({first.window}): "
                             "the parts of one embedding share their windows; embed them separately")  # fmt: skip
    parts = [models[n] if n != STATS else StatsPart(sample_rate, first.window, device) for n in names]
    return EmbeddingParts(spec, parts, device)
