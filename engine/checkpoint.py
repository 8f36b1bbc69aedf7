"""Model checkpoints by name: open one (a file, or a pretrained model such as ``musicnn:MSD_musicnn``), rebuild
its :class:`~engine.models.GenreModel` from the file alone, or load its weights into a model (transfer learning).

The file itself -- what it holds, the atomic write, the checked read -- is :mod:`engine.checkpoint_format`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.checkpoint_format import CheckpointError, read_checkpoint, unwrap_model
from engine.config import ConfigError, from_dict, to_dict
from engine.label_map import load_label_map, resolve_label_map
from engine.models import HEAD_NAME, GenreModel, ModelConfig, build_model
from engine.optim import freeze_parameters
from engine.pretrained import resolve_checkpoint

log = logging.getLogger(__name__)

HEAD_PREFIX = f"backbone.{HEAD_NAME}."


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint; raises ``FileNotFoundError`` or :class:`CheckpointError`.

    ``path`` may also name a pretrained model (``musicnn:MSD_musicnn``): :func:`engine.pretrained.resolve_checkpoint`
    turns it into its cached, converted checkpoint file."""
    return read_checkpoint(resolve_checkpoint(path), map_location)


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


def init_from(
    model: GenreModel, ckpt_path: str | Path, *, freeze: list[str] | None = None, labels: list[str] | None = None,
    label_map: dict[str, str | None] | str | Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Transfer learning: load a checkpoint's weights into ``model`` (same architecture, same input).

    The checkpoint's feature config and rate must give the backbone the same input as the model's
    (:func:`feature_mismatch`; a musicnn checkpoint fine-tunes on shards at any rate, its feature resamples):
    weights learnt on one input representation mean nothing on another, even where the shapes agree.
    Every tensor whose name and shape match is copied. Front-end tensors whose shape differs (derived from
    another feature config) are kept as built. Any other missing or mismatched tensor is an error (the
    checkpoint's ``params`` differ from the model's). Parameters whose names start with one of ``freeze``
    (e.g. ``"backbone.blocks.0"``, ``"frontend"``) get ``requires_grad=False`` (BatchNorm running statistics
    of frozen layers still update in training mode; ``engine.train`` freezes with
    :class:`engine.optim.Freezer` instead, which also keeps them).

    The classifier head (``backbone.classifier``, one output row + bias per label):

    - ``labels`` not given: copied when the label count is the same, else re-initialised;
    - ``labels`` (the model's label names, in output order) equal to the checkpoint's: copied;
    - other ``labels``: re-initialised, then each label that the checkpoint also has starts from the
      checkpoint's row and bias for it (:func:`_carry_head_rows`: matched by name up to case and punctuation,
      or through ``label_map`` ``{label: checkpoint label | null}``, a dict or a YAML/JSON file as for
      ``evaluate --label-map``; ``null`` = start that label fresh). The head counts as re-initialised (it
      trains at the new-layer rate). A pretrained musicnn tag row is a sigmoid tag detector; on a
      multi-label set it is that tag's exact start, on a single-label (softmax) set a sensible one: the
      class's logit starts from the tag's evidence, not calibrated against the other classes.

    Returns ``{"loaded": [...], "reinitialised": [...], "skipped": [...], "frozen": [...]}`` (tensor names)
    and ``"carried"``: ``{label: checkpoint label}`` of the head rows carried over.
    """
    freeze = list(freeze or [])
    if label_map is not None and labels is None:
        raise ValueError("init_from: a label_map needs the model's labels")
    if isinstance(label_map, (str, Path)):
        try:
            label_map = load_label_map(label_map)
        except ValueError as err:  # not a mapping of names (a missing file stays FileNotFoundError)
            raise ConfigError(f"init label map: {err}") from None
    ckpt = load_checkpoint(ckpt_path)
    net = unwrap_model(model)
    if not isinstance(net, GenreModel):
        raise TypeError(f"init_from needs a GenreModel, got {type(net).__name__}")
    _check_same_model(net, ckpt, ckpt_path)
    source: dict[str, torch.Tensor] = ckpt["model_state"]
    same_labels = labels is None or list(labels) == list(ckpt["labels"])
    loaded, reinit, skipped, errors = [], [], [], []
    new_state = {}
    for name, tensor in net.state_dict().items():
        src = source.get(name)
        if src is not None and src.shape == tensor.shape and (same_labels or not name.startswith(HEAD_PREFIX)):
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
    carried: dict[str, str] = {}
    if reinit:
        head = getattr(net.backbone, HEAD_NAME, None)
        if isinstance(head, nn.Module) and hasattr(head, "reset_parameters"):
            head.reset_parameters()
        if labels is not None:
            carried = _carry_head_rows(net, ckpt, list(labels), label_map)
    frozen = freeze_parameters(net, freeze)
    log.info(
        "init_from %s: %d tensors loaded, head %s (%d -> %d classes%s), %d front-end tensors kept, %d frozen",
        ckpt_path, len(loaded), "re-initialised" if reinit else "loaded", len(ckpt["labels"]), net.num_classes,
        f"; {len(carried)} of {net.num_classes} labels carried over from the checkpoint's rows" if labels is not None
        and reinit else "", len(skipped), len(frozen),
    )  # fmt: skip
    return {"loaded": loaded, "reinitialised": reinit, "skipped": skipped, "frozen": frozen, "carried": carried}


def _check_same_model(net: GenreModel, ckpt: dict[str, Any], ckpt_path: str | Path) -> None:
    """:class:`CheckpointError` unless the checkpoint holds the same architecture on the same input."""
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


def _carry_head_rows(
    net: GenreModel, ckpt: dict[str, Any], labels: list[str], label_map: dict[str, str | None] | None
) -> dict[str, str]:
    """Copy into the (fresh) head, for each of ``labels`` the checkpoint also has, the checkpoint's output row
    ``weight[j, :]`` and ``bias[j]``; returns ``{label: checkpoint label}`` of the rows copied. Nothing is
    carried when the head reads another input than the checkpoint's (musicnn ``head_input: meanmax``, 1,506
    values, vs the shipped tag models' 200-value penultimate layer): a row is only meaningful on its input."""
    head = getattr(net.backbone, HEAD_NAME, None)
    weight, bias = ckpt["model_state"].get(HEAD_PREFIX + "weight"), ckpt["model_state"].get(HEAD_PREFIX + "bias")
    if not isinstance(head, nn.Linear) or weight is None or bias is None:
        return {}
    if tuple(weight.shape[1:]) != (head.in_features,):
        log.info(
            "init_from: no head rows carried over: the head reads %d values, the checkpoint's %d (another "
            "head input)", head.in_features, weight.shape[1],
        )  # fmt: skip
        return {}
    try:
        index, mapping = resolve_label_map(labels, [str(x) for x in ckpt["labels"]], label_map)
    except ValueError as err:
        raise ConfigError(f"init label map: {err}") from None
    with torch.no_grad():
        for i, j in enumerate(index):
            if j >= 0:
                head.weight[i].copy_(weight[j])
                head.bias[i].copy_(bias[j])
    return mapping
