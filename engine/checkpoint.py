"""Model checkpoints: everything needed to rebuild a :class:`~engine.models.GenreModel` from one file.

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
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.config import ConfigError, from_dict, to_dict
from engine.models import HEAD_NAME, GenreModel, ModelConfig, build_model
from engine.pretrained import resolve_checkpoint

log = logging.getLogger(__name__)

FORMAT = "genre-engine"
FORMAT_VERSION = 1
HEAD_PREFIX = f"backbone.{HEAD_NAME}."
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint; raises ``FileNotFoundError`` or :class:`CheckpointError`.

    ``path`` may also name a pretrained model (``musicnn:MSD_musicnn``): :func:`engine.pretrained.resolve_checkpoint`
    turns it into its cached, converted checkpoint file."""
    path = resolve_checkpoint(path)
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


def model_config_from(ckpt: dict[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint dict."""
    try:
        return from_dict(ModelConfig, ckpt["config"]["model"], "model")
    except ConfigError as err:
        raise CheckpointError(f"the checkpoint's model config no longer validates: {err}") from err


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GenreModel, dict[str, Any]]:
    """Rebuild the model from the checkpoint alone; returns ``(model in eval mode on device, checkpoint)``."""
    ckpt = load_checkpoint(path)
    cfg = model_config_from(ckpt)
    model = build_model(cfg, len(ckpt["labels"]), ckpt["sample_rate"], ckpt["segment_samples"])
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {err}") from err
    model.to(device).eval()
    return model, ckpt


SELF_RESAMPLING_FEATURES = frozenset({"musicnn"})
"""Front-end features that resample the waveform to their own rate on the device (``kernels/musicnn_input.py``):
a model made only of these computes the same input from shards at any rate, with the same weights."""

# FrontendConfig fields that shape the backbone's input, by the feature that reads them (the rest -- backend,
# cpu_chunk_frames, trainable, norm_mean / norm_std, which are the training set's statistics -- do not)
_STFT = ("n_fft", "hop_length", "win_length")
_MEL = ("n_mels", "f_min", "f_max")
_FEATURE_FIELDS: dict[str, tuple[str, ...]] = {
    "logmel": (*_STFT, *_MEL, "top_db"),
    "mfcc": (*_STFT, *_MEL, "top_db", "n_mfcc", "deltas", "delta_width"),
    "chroma": (*_STFT, "chroma_norm", "tuning", "estimate_tuning"),
    "cqt": ("hop_length", "cqt_bins_per_octave", "cqt_n_bins", "cqt_fmin", "cqt_variant"),
    "musicnn": (*_STFT, *_MEL),
    "precomputed": ("feature_dim",),
}


def feature_mismatch(ckpt_features: Any, features: Any, ckpt_rate: int, sample_rate: int) -> list[str]:
    """How a checkpoint's front-end config and rate differ from a model's (two
    :class:`~kernels.features.FrontendConfig`, Hz) in what the backbone sees: ``["n_mels 96 vs 128", ...]``,
    empty when the weights transfer. The rate counts unless every feature resamples itself
    (:data:`SELF_RESAMPLING_FEATURES`) or the input is precomputed (a nominal frame rate)."""
    theirs, mine = to_dict(ckpt_features), to_dict(features)
    names = list(mine.get("features") or [])
    fields = ["features", "norm"] + (["stack"] if len(names) > 1 else [])
    for name in names:
        fields += [f for f in _FEATURE_FIELDS.get(name, ()) if f not in fields]
    diff = [f"{f} {theirs.get(f)!r} vs {mine.get(f)!r}" for f in fields if theirs.get(f) != mine.get(f)]
    rate_free = set(names) <= SELF_RESAMPLING_FEATURES or "precomputed" in names
    if not rate_free and int(ckpt_rate) != int(sample_rate):
        diff.append(f"sample_rate {int(ckpt_rate)} vs {int(sample_rate)} Hz")
    return diff


def init_from(model: GenreModel, ckpt_path: str | Path, *, freeze: list[str] | None = None) -> dict[str, Any]:
    """Transfer learning: load a checkpoint's weights into ``model`` (same architecture, same input).

    The checkpoint's feature config and rate must give the backbone the same input as the model's
    (:func:`feature_mismatch`; a musicnn checkpoint fine-tunes on shards at any rate, its feature resamples):
    weights learnt on one input representation mean nothing on another, even where the shapes agree.
    Every tensor whose name and shape match is copied. The classifier head (``backbone.classifier``) is
    re-initialised when the label count differs (and copied when it is the same). Front-end tensors whose
    shape differs (derived from another feature config) are kept as built. Any other missing or mismatched
    tensor is an error (the checkpoint's ``params`` differ from the model's). Parameters whose names start
    with one of ``freeze`` (e.g. ``"backbone.blocks.0"``, ``"frontend"``) get ``requires_grad=False``
    (BatchNorm running statistics of frozen layers still update in training mode; ``engine.train`` freezes
    with :class:`engine.optim.Freezer` instead, which also keeps them).

    Returns ``{"loaded": [...], "reinitialised": [...], "skipped": [...], "frozen": [...]}`` (tensor names).
    """
    freeze = list(freeze or [])
    ckpt = load_checkpoint(ckpt_path)
    net = unwrap_model(model)
    if not isinstance(net, GenreModel):
        raise TypeError(f"init_from needs a GenreModel, got {type(net).__name__}")
    if ckpt["arch"] != net.cfg.arch:
        raise CheckpointError(
            f"cannot initialise a {net.cfg.arch!r} model from {ckpt_path}: it holds a {ckpt['arch']!r} model "
            "(transfer learning needs the same architecture)"
        )
    mismatch = feature_mismatch(model_config_from(ckpt).features, net.cfg.features, ckpt["sample_rate"], net.sample_rate)
    if mismatch:
        raise CheckpointError(
            f"cannot initialise from {ckpt_path}: its model was trained on another input ({'; '.join(mismatch)}; "
            "checkpoint vs this model); use the checkpoint's model.features"
            + (" and re-shard at its rate" if any(m.startswith("sample_rate") for m in mismatch) else "")
        )
    source: dict[str, torch.Tensor] = ckpt["model_state"]
    target = net.state_dict()
    loaded, reinit, skipped, errors = [], [], [], []
    new_state = {}
    for name, tensor in target.items():
        src = source.get(name)
        if src is not None and src.shape == tensor.shape:
            new_state[name] = src
            loaded.append(name)
        elif name.startswith(HEAD_PREFIX):
            reinit.append(name)
        elif name.startswith("frontend."):
            skipped.append(name)
        elif src is None:
            errors.append(f"{name} (missing in checkpoint)")
        else:
            errors.append(f"{name} (checkpoint {tuple(src.shape)} vs model {tuple(tensor.shape)})")
    if errors:
        raise CheckpointError(
            f"cannot initialise from {ckpt_path}: {len(errors)} weight(s) do not fit -- the checkpoint's "
            f"{ckpt['arch']} params or features differ from this model's: " + "; ".join(errors[:8])
        )
    net.load_state_dict(new_state, strict=False)
    if reinit:
        head = getattr(net.backbone, HEAD_NAME, None)
        if isinstance(head, nn.Module) and hasattr(head, "reset_parameters"):
            head.reset_parameters()
    frozen = _freeze(net, freeze)
    log.info(
        "init_from %s: %d tensors loaded, head %s (%d -> %d classes), %d front-end tensors kept, %d frozen",
        ckpt_path,
        len(loaded),
        "re-initialised" if reinit else "loaded",
        len(ckpt["labels"]),
        net.num_classes,
        len(skipped),
        len(frozen),
    )
    return {"loaded": loaded, "reinitialised": reinit, "skipped": skipped, "frozen": frozen}


def _freeze(model: nn.Module, prefixes: list[str]) -> list[str]:
    params = dict(model.named_parameters())
    frozen = []
    for prefix in prefixes:
        hits = [n for n in params if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            tops = sorted({n.rsplit(".", 2)[0] for n in params})
            raise ConfigError(
                f"freeze: no parameter name starts with {prefix!r}; e.g. {', '.join(tops[:12])}"
                + (" ..." if len(tops) > 12 else "")
            )
        for n in hits:
            params[n].requires_grad_(False)
        frozen.extend(hits)
    return frozen
