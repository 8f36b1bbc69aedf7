"""What a genre model reads: waveforms or precomputed feature sequences, and which data fits which model.

A model takes ``"wave"`` (int16 or float ``[B, T]``) unless its feature stack is ``["precomputed"]``, when it
takes ``"features"`` (``[B, frames, D]``: MSD or embedding shards). Data is a shard set's manifest ``kind``
(``"audio"`` or ``"features"``); audio files to classify are ``"audio"``. :func:`check_data_fits_model` is
the one rule of which data a model can read; each caller (training's config check, ``evaluate``,
``classify`` / ``export``) raises its own error with its own explanation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from kernels.precomputed import PRECOMPUTED

__all__ = ["check_data_fits_model", "input_kind", "model_input"]


def model_input(batch: dict[str, Tensor]) -> Tensor:
    """The model's input of a reader batch: ``"wave"`` int16 ``[B, T]`` or ``"feats"`` float16 ``[B, N, D]``."""
    return batch["wave"] if "wave" in batch else batch["feats"]


def input_kind(model: Any) -> str:
    """``"features"`` or ``"wave"``: what ``model`` reads. ``model`` is a built model (its ``input_kind``), a
    model or front-end config (``features.features`` / ``features``), or a checkpoint's config dict
    (``config["model"]["features"]["features"]``); anything that names no feature stack reads waveforms."""
    kind = getattr(model, "input_kind", None)
    if kind is not None:
        return str(kind)
    names: Any = model
    if isinstance(names, dict):  # a checkpoint's config dict
        names = names.get("model")
        names = names.get("features") if isinstance(names, dict) else None
        names = names.get("features") if isinstance(names, dict) else None
    else:
        names = getattr(names, "features", None)  # ModelConfig -> FrontendConfig
        names = getattr(names, "features", names)  # FrontendConfig -> its feature names
    return "features" if isinstance(names, (list, tuple)) and PRECOMPUTED in names else "wave"


def check_data_fits_model(model_kind: str, data_kind: str, error: Callable[[str, str], Exception]) -> None:
    """Raise ``error(model_kind, data_kind)`` unless a model reading ``model_kind`` (:func:`input_kind`) can read
    data of ``data_kind`` (a manifest's ``kind``: ``"audio"`` or ``"features"``): a feature-sequence model reads
    feature shards only, a waveform model audio only."""
    if (model_kind == "features") != (data_kind == "features"):
        raise error(model_kind, data_kind)
