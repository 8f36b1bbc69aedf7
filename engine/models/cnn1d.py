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


@ARCHS.register("cnn1d")
class CNN1D(nn.Module):
    """``[B, C, F, frames]`` -> logits ``[B, K]``; any frame count."""

    @dataclass
    class Config:
        channels: tuple[int, ...] = (128, 128, 256)
        kernel_size: int = 3
        hidden: int = 128
        dropout: float = 0.5
        pool: Literal["mean", "max", "meanmax", "attention"] = "meanmax"
        input_norm: Literal["channel", "bin", "none"] = "bin"

        def validate(self) -> None:
            if not self.channels or min(self.channels) < 1:
                raise ConfigError(f"cnn1d: channels must be positive, got {self.channels}")
            if self.kernel_size < 1 or self.kernel_size % 2 == 0:
                raise ConfigError(f"cnn1d: kernel_size must be odd and positive, got {self.kernel_size}")
            if not 0.0 <= self.dropout < 1.0:
                raise ConfigError(f"cnn1d: dropout must be in [0, 1), got {self.dropout}")

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
