"""``cnn``: the seed baseline -- a plain 2-D CNN on a time-frequency image (log-mel 128 x frames).

Conv3x3 / BatchNorm / ReLU / MaxPool(2) blocks, global average pooling over (F, frames), Dense + ReLU +
Dropout, classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from engine.config import ConfigError
from engine.models.base import ARCHS, InputNorm, clamp_pool
from registry.fields import bounded, check_bounds


@ARCHS.register("cnn")
class CNN(nn.Module):
    """``[B, C, F, frames]`` -> logits ``[B, K]``; any frame count."""

    @dataclass
    class Config:
        channels: tuple[int, ...] = bounded((32, 64, 128), ge=1)
        kernel_size: int = bounded(3, ge=1, note="odd")
        hidden: int = bounded(128, ge=1)
        dropout: float = bounded(0.5, ge=0, lt=1)
        pool: Literal["avg", "max", "avgmax"] = "avg"
        input_norm: Literal["channel", "bin", "none"] = "none"

        def validate(self) -> None:
            check_bounds(self, "model.params")  # direct callers (from_dict has checked, naming the architecture)
            if not self.channels:
                raise ConfigError(f"cnn: channels must be a non-empty list of positive ints, got {self.channels}")
            if self.kernel_size % 2 == 0:
                raise ConfigError(f"cnn: kernel_size must be odd and positive, got {self.kernel_size}")

    def __init__(self, cfg: Config, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c_in, freq, _ = in_shape
        self.cfg = cfg
        self.input_norm = InputNorm(in_shape, cfg.input_norm)
        blocks = []
        for c_out in cfg.channels:
            f_pool, freq = clamp_pool(freq, 2)  # never pool a frequency axis that is already 1 bin
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d((f_pool, 2), ceil_mode=True),  # ceil: any frame count >= 1 survives
                )
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        pooled = 2 * c_in if cfg.pool == "avgmax" else c_in
        self.dense = nn.Sequential(
            nn.Linear(pooled, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)
        )
        self.classifier = nn.Linear(cfg.hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, F, frames) -> (B, K)
        x = self.blocks(self.input_norm(x))  # (B, C', F', frames')
        if self.cfg.pool == "avg":
            z = x.mean(dim=(2, 3))
        elif self.cfg.pool == "max":
            z = x.amax(dim=(2, 3))
        else:
            z = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.classifier(self.dense(z))
