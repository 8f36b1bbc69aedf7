"""``resnet``: short-chunk residual CNN (Won et al. 2020, "Evaluation of CNN-based automatic music tagging
models", "Short-chunk CNN + Residual") -- the strongest from-scratch architecture of that study.

Seven residual blocks (two 3x3 conv + BN, identity or 1x1-projected shortcut), each followed by 2x2
max-pooling; widths ``(n, n, 2n, 2n, 2n, 2n, 4n)``; global max pooling over time (and the frequency bins
left); Dense + BN + ReLU + Dropout; classifier. The paper uses ``n = 128`` on 128 mels; the default here is
64 to keep CPU training practical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from engine.config import ConfigError
from engine.models.base import ARCHS, InputNorm, clamp_pool
from registry.fields import bounded, check_bounds


class ResBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``, then max-pool ``(f_pool, t_pool)``."""

    def __init__(self, c_in: int, c_out: int, f_pool: int, t_pool: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        )
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d((f_pool, t_pool), ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:  # (B, c_in, F, T) -> (B, c_out, F/f_pool, T/t_pool)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.pool(self.relu(y + self.shortcut(x)))


@ARCHS.register("resnet")
class ShortChunkResNet(nn.Module):
    """``[B, C, F, frames]`` -> logits ``[B, K]``; any frame count."""

    @dataclass
    class Config:
        channels: int = bounded(64, ge=1)
        width_multipliers: tuple[int, ...] = bounded((1, 1, 2, 2, 2, 2, 4), ge=1)
        dropout: float = bounded(0.5, ge=0, lt=1)
        input_norm: Literal["channel", "bin", "none"] = "channel"

        def validate(self) -> None:
            check_bounds(self, "model.params")  # direct callers (from_dict has checked, naming the architecture)
            if not self.width_multipliers:
                raise ConfigError("resnet: width_multipliers must list at least one block's multiplier")

    def __init__(self, cfg: Config, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c_in, freq, _ = in_shape
        self.cfg = cfg
        self.input_norm = InputNorm(in_shape, cfg.input_norm)
        blocks = []
        for mult in cfg.width_multipliers:
            c_out = cfg.channels * mult
            f_pool, freq = clamp_pool(freq, 2)
            blocks.append(ResBlock(c_in, c_out, f_pool, 2))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.dense = nn.Sequential(
            nn.Linear(c_in, c_in), nn.BatchNorm1d(c_in), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)
        )
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, F, frames) -> (B, K)
        x = self.blocks(self.input_norm(x))  # (B, C', F', frames')
        z = x.amax(dim=(2, 3))  # global max over time (and any frequency bins left)
        return self.classifier(self.dense(z))
