"""``cnn1d``: a 1-D CNN over time for frame-level feature sequences.

``[B, C, F, frames]`` (e.g. ``[B, 1, D, frames]`` from precomputed feature sequences) is read as ``C*F``
input channels over ``frames``; Conv1d/BN/ReLU/MaxPool(2) blocks, global pooling over time, Dense + ReLU +
Dropout, classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from engine.config import ConfigError
from engine.models.base import ARCHS, InputNorm, TemporalPool
from registry.fields import bounded, check_bounds


@ARCHS.register("cnn1d")
class CNN1D(nn.Module):
    """``[B, C, F, frames]`` -> logits ``[B, K]``; any frame count."""

    @dataclass
    class Config:
        channels: tuple[int, ...] = bounded((128, 128, 256), ge=1)
        kernel_size: int = bounded(3, ge=1, note="odd")
        hidden: int = bounded(128, ge=1)
        dropout: float = bounded(0.5, ge=0, lt=1)
        pool: Literal["mean", "max", "meanmax", "attention"] = "meanmax"
        input_norm: Literal["channel", "bin", "none"] = "bin"

        def validate(self) -> None:
            check_bounds(self, "model.params")  # direct callers (from_dict has checked, naming the architecture)
            if not self.channels:
                raise ConfigError(f"cnn1d: channels must be positive, got {self.channels}")
            if self.kernel_size % 2 == 0:
                raise ConfigError(f"cnn1d: kernel_size must be odd and positive, got {self.kernel_size}")

    def __init__(self, cfg: Config, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, f, _ = in_shape
        self.cfg = cfg
        self.input_norm = InputNorm(in_shape, cfg.input_norm)
        c_in = c * f
        blocks = []
        for c_out in cfg.channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False),
                    nn.BatchNorm1d(c_out),
                    nn.ReLU(inplace=True),
                    nn.MaxPool1d(2, ceil_mode=True),
                )
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = TemporalPool(c_in, cfg.pool)
        self.dense = nn.Sequential(
            nn.Linear(self.pool.out_dim, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)
        )
        self.classifier = nn.Linear(cfg.hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, F, frames) -> (B, K)
        x = self.input_norm(x)
        b, c, f, t = x.shape
        x = self.blocks(x.reshape(b, c * f, t))  # (B, C', frames')
        z = self.pool(x.transpose(1, 2))  # (B, C' or 2C')
        return self.classifier(self.dense(z))
