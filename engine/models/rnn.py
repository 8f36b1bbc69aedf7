"""``rnn``: a recurrent network on frame-level features (MFCC + deltas, optionally chroma).

``[B, C, F, frames]`` is read as a sequence of ``frames`` vectors of ``C*F`` features, standardised per
feature (BatchNorm), fed to a bidirectional GRU or LSTM, pooled over time (``last`` hidden states,
``mean`` or ``attention``), dropout, classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from engine.models.base import ARCHS, InputNorm, TemporalPool
from registry.fields import bounded, check_bounds


@ARCHS.register("rnn")
class RNN(nn.Module):
    """``[B, C, F, frames]`` -> logits ``[B, K]``; any frame count."""

    @dataclass
    class Config:
        cell: Literal["gru", "lstm"] = "gru"
        hidden: int = bounded(128, ge=1)
        layers: int = bounded(2, ge=1)
        bidirectional: bool = True
        pool: Literal["last", "mean", "attention"] = "attention"
        dropout: float = bounded(0.3, ge=0, lt=1)
        input_norm: Literal["channel", "bin", "none"] = "bin"

        def validate(self) -> None:
            check_bounds(self, "model.params")  # direct callers (from_dict has checked, naming the architecture)

    def __init__(self, cfg: Config, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, f, _ = in_shape
        self.cfg = cfg
        self.input_norm = InputNorm(in_shape, cfg.input_norm)
        rnn_cls = nn.GRU if cfg.cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(
            input_size=c * f,
            hidden_size=cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        out_dim = cfg.hidden * (2 if cfg.bidirectional else 1)
        self.pool = None if cfg.pool == "last" else TemporalPool(out_dim, cfg.pool)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(out_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, F, frames) -> (B, K)
        x = self.input_norm(x)
        b, c, f, t = x.shape
        seq = x.reshape(b, c * f, t).transpose(1, 2)  # (B, frames, C*F)
        out, state = self.rnn(seq)  # out: (B, frames, dirs*H)
        if self.pool is None:
            h_n = state[0] if isinstance(state, tuple) else state  # (layers*dirs, B, H)
            dirs = 2 if self.cfg.bidirectional else 1
            # last layer: forward final state (after the last frame) + backward final state (after frame 0)
            z = torch.cat(list(h_n[-dirs:]), dim=-1)  # (B, dirs*H)
        else:
            z = self.pool(out)
        return self.classifier(self.dropout(z))
