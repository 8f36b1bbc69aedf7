"""``crnn``: convolutional recurrent network (Choi et al. 2017, "Convolutional recurrent neural networks
for music classification").

Conv3x3/BN/ReLU blocks whose max-pooling is mostly along frequency collapse the spectrum to a few bins
while keeping time resolution; the result is read as a sequence ``(frames', C' * F')`` by a bidirectional
GRU, pooled over time, dropout, classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from engine.config import ConfigError
from engine.models.base import ARCHS, InputNorm, TemporalPool, clamp_pool
from registry.fields import bounded, check_bounds


@ARCHS.register("crnn")
class CRNN(nn.Module):
    """``[B, C, F, frames]`` -> logits ``[B, K]``; any frame count."""

    @dataclass
    class Config:
        channels: tuple[int, ...] = bounded((32, 64, 64, 64), ge=1)
        # (frequency, time) max-pool per conv block; frequency is clamped to the bins left
        pools: tuple[tuple[int, int], ...] = bounded(((2, 2), (2, 2), (4, 1), (4, 1)), ge=1)
        kernel_size: int = bounded(3, ge=1, note="odd")
        rnn_hidden: int = bounded(64, ge=1)
        rnn_layers: int = bounded(2, ge=1)
        pool: Literal["last", "mean", "attention"] = "attention"
        dropout: float = bounded(0.3, ge=0, lt=1)
        input_norm: Literal["channel", "bin", "none"] = "channel"

        def validate(self) -> None:
            check_bounds(self, "model.params")  # direct callers (from_dict has checked, naming the architecture)
            if len(self.channels) != len(self.pools):
                raise ConfigError(
                    f"crnn: channels ({len(self.channels)} blocks) and pools ({len(self.pools)}) differ in length"
                )
            if not self.channels:
                raise ConfigError(f"crnn: channels must be positive, got {self.channels}")
            if self.kernel_size % 2 == 0:
                raise ConfigError(f"crnn: kernel_size must be odd and positive, got {self.kernel_size}")

    def __init__(self, cfg: Config, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c_in, freq, _ = in_shape
        self.cfg = cfg
        self.input_norm = InputNorm(in_shape, cfg.input_norm)
        blocks = []
        for c_out, (fp, tp) in zip(cfg.channels, cfg.pools):
            fp, freq = clamp_pool(freq, fp)
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d((fp, tp), ceil_mode=True),
                )
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.rnn = nn.GRU(
            input_size=c_in * freq,
            hidden_size=cfg.rnn_hidden,
            num_layers=cfg.rnn_layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if cfg.rnn_layers > 1 else 0.0,
        )
        self.pool = None if cfg.pool == "last" else TemporalPool(2 * cfg.rnn_hidden, cfg.pool)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(2 * cfg.rnn_hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, F, frames) -> (B, K)
        x = self.blocks(self.input_norm(x))  # (B, C', F', frames')
        b, c, f, t = x.shape
        seq = x.reshape(b, c * f, t).transpose(1, 2)  # (B, frames', C'*F')
        out, h_n = self.rnn(seq)  # out: (B, frames', 2H); h_n: (layers*2, B, H)
        z = torch.cat([h_n[-2], h_n[-1]], dim=-1) if self.pool is None else self.pool(out)
        return self.classifier(self.dropout(z))
