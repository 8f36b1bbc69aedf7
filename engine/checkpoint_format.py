"""The checkpoint file: what it holds, its atomic write and its checked read (no model is built here).

A checkpoint is a ``torch.save``-d dict::

    {"format": "genre-engine", "format_version": 1, "arch": "cnn",
     "config": {...the whole resolved training config; config["model"] is the ModelConfig dict...},
     "labels": [...], "sample_rate": 22050, "segment_samples": 66150, "window_samples": 661500,
     "model_state": {...CPU tensors of the unwrapped model...}, "epoch": 3, "metrics": {...}, "extra": {...}}

``segment_samples`` is the training crop (it fixes the backbone's ``in_shape``); ``window_samples`` (optional)
the evaluation window the run validated with, which ``evaluate`` and ``classify`` use by default (absent:
the training crop).

It holds only plain Python values and tensors, so it loads with ``torch.load(weights_only=True)`` (no
arbitrary code runs when a checkpoint is opened). Writes are atomic (temporary file + ``os.replace``): a crash
mid-save never leaves a truncated ``best.pt``.

:mod:`engine.checkpoint` opens checkpoints by name (pretrained models too) and rebuilds models from them; the
pretrained converters (:mod:`engine.pretrained`) write their checkpoints with :func:`save_checkpoint` here.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.models import GenreModel

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "read_checkpoint", "save_checkpoint", "unwrap_model"]

FORMAT = "genre-engine"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("config", "labels", "sample_rate", "segment_samples", "model_state", "arch")


class CheckpointError(ValueError):
    """A file that is not a usable genre-engine checkpoint (or does not fit the model it is loaded into)."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module under DDP / Accelerate (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        for attr in ("_orig_mod", "module"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
    return model


def _plain(value: Any) -> Any:
    """Metrics / extras -> values ``torch.load(weights_only=True)`` accepts (numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):  # numpy scalar
        return value.item()
    if callable(getattr(value, "tolist", None)):  # numpy array
        return value.tolist()
    return str(value)


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    config: dict[str, Any],
    labels: list[str],
    sample_rate: int,
    segment_samples: int,
    epoch: int,
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
    window_samples: int | None = None,
) -> Path:
    """Write a checkpoint atomically; returns its path.

    Args:
        model: the (possibly DDP/compiled-wrapped) :class:`GenreModel`; its unwrapped state goes to CPU.
        config: the whole resolved training config as a plain dict; ``config["model"]`` must be the
            :class:`ModelConfig` dict (``engine.config.to_dict``).
        labels: class names in logit order.
        sample_rate: Hz of the waveforms the model expects.
        segment_samples: training crop length in samples.
        epoch: last finished epoch (0-based).
        metrics: e.g. the epoch's validation metrics.
        extra: anything else (plain values).
        window_samples: the evaluation window in samples when it differs from the training crop (stored as
            ``window_samples``; evaluation and classification use it); None: the training crop.
    """
    path = Path(path)
    net = unwrap_model(model)
    model_cfg = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict) or "arch" not in model_cfg:
        raise CheckpointError("save_checkpoint: config['model'] must be the ModelConfig dict (with 'arch')")
    if isinstance(net, GenreModel):
        if net.num_classes != len(labels):
            raise CheckpointError(
                f"save_checkpoint: model has {net.num_classes} classes but {len(labels)} labels"
            )
        if net.cfg.arch != model_cfg["arch"]:
            raise CheckpointError(
                f"save_checkpoint: model is {net.cfg.arch!r} but config['model']['arch'] is {model_cfg['arch']!r}"
            )
    state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model_cfg["arch"],
        "config": _plain(config),
        "labels": [str(label) for label in labels],
        "sample_rate": int(sample_rate),
        "segment_samples": int(segment_samples),
        "model_state": state,
        "epoch": int(epoch),
        "metrics": _plain(metrics),
        "extra": _plain(extra or {}),
        "torch_version": str(torch.__version__),
    }
    if window_samples is not None:
        ckpt["window_samples"] = int(window_samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check the checkpoint file ``path``; raises ``FileNotFoundError`` or :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # the unpickler raises anything from UnpicklingError to KeyError on junk
        if not zipfile.is_zipfile(path):
            hint = "; ONNX exports run in onnxruntime" if path.suffix.lower() == ".onnx" else ""
            why = f"not a torch.save archive{hint}"
        else:  # torch's weights-only refusal is a paragraph that ends with the reason
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            why = f"{type(err).__name__}: {lines[-1] if lines else err!r}"
        raise CheckpointError(f"{path} is not a readable genre-engine checkpoint ({why})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a genre-engine checkpoint (no format={FORMAT!r} marker; a raw state_dict or "
            "another tool's checkpoint?)"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this genre-engine reads up to {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is a damaged genre-engine checkpoint: missing {', '.join(missing)}")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["config"].get("model"), dict):
        raise CheckpointError(f"{path}: config['model'] is missing; cannot rebuild the model")
    return ckpt
