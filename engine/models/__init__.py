"""Registered genre-model architectures and the :class:`GenreModel` wrapper.

Adding an architecture: one file with ``@ARCHS.register("name")`` on an ``nn.Module`` subclass (nested
``Config`` dataclass, ``__init__(cfg, in_shape, num_classes)``, ``forward([B, C, F, frames]) -> [B, K]``)
plus one import line below.
"""

from engine.models import cnn, cnn1d, crnn, musicnn, musicnn_vgg, resnet, rnn, stats  # noqa: F401  (registers the architectures)
from engine.models.base import (
    ARCHS,
    HEAD_NAME,
    GenreModel,
    ModelConfig,
    build_model,
    count_parameters,
)

__all__ = ["ARCHS", "HEAD_NAME", "GenreModel", "ModelConfig", "build_model", "count_parameters"]
