"""``musicnn_vgg``: the VGG-like baseline shipped with ``musicnn`` 0.1.0 (``models.vgg``, the ``MSD_vgg`` /
``MTT_vgg`` checkpoints), ported layer for layer (:mod:`engine.pretrained.musicnn` loads the weights).

Input: the ``musicnn`` feature ``[B, 1, 96, 187]`` (47,616 samples at 16 kHz). Internally TensorFlow's
layout (height = time, width = band)::

    [B, 1, 187, 96] ─ BN ─ Conv3x3 'same' ReLU BN ─ MaxPool (4, 1) stride (2, 2) ─▶ [B, 128, 92, 48]
        ─ Dropout ─ Conv3x3 ReLU BN ─ MaxPool 2 ─▶ [B, 128, 46, 24] ─ ... ─▶ [B, 128, 11, 6]
        ─ Dropout ─ Conv3x3 ReLU BN ─ MaxPool 4 ─▶ [B, 128, 2, 1] ─ flatten (TF order: time, band, channel)
        ─ Dropout ─ classifier (50 tags)

The flattened size depends on the frame count, so (as in the original) the model takes exactly the patch
length it was built for: 187 frames (any count in 130-193 pools to the same 2 x 1 map and works too).
Named outputs: ``logits``, ``taggram`` (sigmoid), ``pool5`` (the 256 flattened values before the classifier,
the default embedding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.config import ConfigError
from engine.models.base import ARCHS
from engine.models.musicnn import tf_batchnorm
from registry.fields import bounded, check_bounds

_POOLS = ((4, 1, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2), (4, 4, 4, 4))  # (kT, kF, sT, sF), valid


def _pooled(t: int, f: int) -> tuple[int, int]:
    """(time, bands) after the five valid max-pools."""
    for kt, kf, st, sf in _POOLS:
        t, f = (t - kt) // st + 1, (f - kf) // sf + 1
    return t, f


@ARCHS.register("musicnn_vgg")
class MusicnnVGG(nn.Module):
    """``[B, 1, F, frames]`` -> logits ``[B, K]`` for the frame count it was built for (see module doc)."""

    EMBEDDINGS = ("pool5", "taggram")
    DEFAULT_EMBEDDING = "pool5"

    @dataclass
    class Config:
        filters: int = bounded(128, ge=1)  # every conv layer (the checkpoints: 128)
        conv_dropout: float = bounded(0.25, ge=0, lt=1)  # before conv layers 2-5 (training only)
        dropout: float = bounded(0.5, ge=0, lt=1)  # before the classifier

        def validate(self) -> None:
            check_bounds(self, "model.params")  # direct callers (from_dict has checked, naming the architecture)

    @staticmethod
    def check_input(cfg: Config, in_shape: tuple[int, int, int]) -> None:
        c, f, t = in_shape
        if c != 1:
            raise ConfigError(f"musicnn_vgg needs a one-channel spectrogram, got in_shape {in_shape}")
        pt, pf = _pooled(t, f)
        if pt < 1 or pf < 1:
            raise ConfigError(
                f"musicnn_vgg: {f} bands x {t} frames is too small for its five max-pools (the checkpoints "
                "take 96 bands x 187 frames = 47,616 samples at 16 kHz)"
            )

    def __init__(self, cfg: Config, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        cfg.validate()
        self.check_input(cfg, in_shape)
        self.cfg = cfg
        _, f, t = in_shape
        self.in_frames, self.in_bands = t, f
        self.input_bn = tf_batchnorm(2, 1)
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else cfg.filters, cfg.filters, 3, padding=1) for i in range(len(_POOLS))
        )  # 3x3 'same' (odd kernel: symmetric)
        self.bns = nn.ModuleList(tf_batchnorm(2, cfg.filters) for _ in _POOLS)
        self.pools = nn.ModuleList(nn.MaxPool2d((kt, kf), stride=(st, sf)) for kt, kf, st, sf in _POOLS)
        self.conv_dropout = nn.Dropout(cfg.conv_dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        pt, pf = _pooled(t, f)
        self.flat_dim = pt * pf * cfg.filters  # 2 * 1 * 128 = 256 for the checkpoints
        self.classifier = nn.Linear(self.flat_dim, num_classes)

    def embedding_dims(self) -> dict[str, int]:
        return {"pool5": self.flat_dim, "taggram": self.classifier.out_features}

    def outputs(self, x: Tensor) -> dict[str, Tensor]:
        """``logits``, ``taggram``, ``pool5`` for features ``[B, 1, F, frames]``."""
        if x.shape[2] != self.in_bands or _pooled(x.shape[3], x.shape[2]) != _pooled(self.in_frames, self.in_bands):
            raise ValueError(
                f"musicnn_vgg was built for {self.in_bands} bands x {self.in_frames} frames; got "
                f"{x.shape[2]} x {x.shape[3]} (its flatten layer fixes the patch length)"
            )
        x = self.input_bn(x.transpose(2, 3))  # (B, 1, T, F)
        for i, (conv, bn, pool) in enumerate(zip(self.convs, self.bns, self.pools)):
            if i > 0:
                x = self.conv_dropout(x)
            x = pool(bn(torch.relu(conv(x))))
        pool5 = x.permute(0, 2, 3, 1).flatten(1)  # TF flattens NHWC: (B, T', F', C) -> (B, T' * F' * C)
        logits = self.classifier(self.dropout(pool5))
        return {"logits": logits, "taggram": torch.sigmoid(logits), "pool5": pool5}

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, F, frames) -> (B, K)
        return self.outputs(x)["logits"]
