"""``musicnn``: the musically motivated CNN of Pons & Serra (ISMIR 2019 LBD, ``musicnn`` 0.1.0), ported
layer for layer from ``musicnn/models.py`` (``build_musicnn``) so the shipped MSD / MTT checkpoints load
exactly (:mod:`engine.pretrained.musicnn`).

Input: the ``musicnn`` feature (:mod:`kernels.musicnn_input`), ``[B, 1, 96, frames]``; 187 frames (47,616
samples at 16 kHz, ~3 s) is the patch the checkpoints were trained on, but any frame count works.
Internally the layout is TensorFlow's (height = time, width = mel band), so kernels map one to one::

    [B, 1, T, 96] ─ BatchNorm ─┬─ pad T 3|3 ─ Conv (7 x 38) ─ ReLU ─ BN ─ max over bands ─▶ [B, 204, T]  timbral
                               ├─ pad T 3|3 ─ Conv (7 x 67) ─ ReLU ─ BN ─ max over bands ─▶ [B, 204, T]  timbral
                               ├─ Conv (128 x 1) 'same' ─ ReLU ─ BN ─ max over bands ──────▶ [B,  51, T]  temporal
                               ├─ Conv  (64 x 1) 'same' ─ ReLU ─ BN ─ max over bands ──────▶ [B,  51, T]  temporal
                               └─ Conv  (32 x 1) 'same' ─ ReLU ─ BN ─ max over bands ──────▶ [B,  51, T]  temporal
    front end [B, 561, T] ─ Conv1d(7) ReLU BN ─▶ c1 ─ Conv1d(7) ReLU BN + c1 ─▶ c2 ─ Conv1d(7) ReLU BN + c2 ─▶ c3
    mid-end   [B, 561 + 3 x 64 = 753, T] (front end, c1, c2, c3 densely concatenated)
    back end  max and mean over T ─▶ interleaved [max_0, mean_0, max_1, ...] (1,506) ─ BN ─ Dropout ─
              Dense 200 ReLU ─ BN (= penultimate) ─ Dropout ─ classifier (50 tags)

TensorFlow's ``same`` padding of an even kernel puts the extra frame at the end (k=128: 63 before, 64 after);
its batch normalisation uses eps 1e-3 (and momentum 0.99 = PyTorch's 0.01), both kept here.

Named outputs (:meth:`Musicnn.outputs`) for embeddings and tagging: ``logits``, ``taggram`` (sigmoid of the
logits, the original's per-patch tag scores), ``penultimate`` (200), ``mean_pool`` / ``max_pool`` (753 each)
and ``meanmax`` (their concatenation, 1,506: the default embedding -- the issue measured it best for linear
probes: 88.7 % vs 72-78 % for ``penultimate`` on six real repertoires).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.config import ConfigError
from engine.models.base import ARCHS
from registry.fields import bounded, check_bounds

TF_BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default epsilon
TF_BN_MOMENTUM = 0.01  # TF momentum 0.99 (weight of the old value) = PyTorch momentum 0.01


def tf_batchnorm(dim: int, num_features: int) -> nn.Module:
    """BatchNorm with TensorFlow's defaults (eps 1e-3, momentum 0.99), 1-D or 2-D."""
    cls = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    return cls(num_features, eps=TF_BN_EPS, momentum=TF_BN_MOMENTUM)


def tf_same_pad(kernel: int) -> tuple[int, int]:
    """(before, after) padding of TF's stride-1 ``same`` convolution: the odd extra sample goes after."""
    total = kernel - 1
    return total // 2, total - total // 2


class _Block(nn.Module):
    """Conv2d over ``[B, 1, T, F]`` -> ReLU -> BN -> max over the band axis -> ``[B, C, T]``.

    ``time_pad`` is zero padding before / after along time (the original's ``tf.pad`` or ``same`` padding);
    along the bands the convolution is ``valid``, or (1-band kernels) trivially ``same``.
    """

    def __init__(self, filters: int, kernel: tuple[int, int], time_pad: tuple[int, int]) -> None:
        super().__init__()
        self.time_pad = time_pad
        self.conv = nn.Conv2d(1, filters, kernel)
        self.bn = tf_batchnorm(2, filters)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, T, F) -> (B, C, T)
        x = F.pad(x, (0, 0, *self.time_pad))  # (B, 1, T + pads, F)
        if self.bn.training:  # batch statistics over every band
            return self.bn(torch.relu(self.conv(x))).amax(dim=3)  # (B, C, T, F') -> (B, C, T)
        return self._eval_forward(x)

    def _eval_forward(self, x: Tensor) -> Tensor:  # (B, 1, T', F) padded -> (B, C, T)
        # With running statistics BN is a per-channel affine a * x + b, and ReLU is monotone: the band maximum
        # can be taken first (the minimum where a < 0, most of the checkpoints' channels), then ReLU and the
        # affine on a result F' times smaller -- the same numbers without two passes over the largest tensor.
        # The minimum is the maximum of the negated filter's output: one reduction for every channel.
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)  # (C,)
        shift = self.bn.bias - self.bn.running_mean * scale
        sign = torch.where(scale < 0, -1.0, 1.0).to(scale.dtype)  # (C,)
        w = self.conv.weight * sign[:, None, None, None]
        z = F.conv2d(x, w, self.conv.bias * sign)  # (B, C, T, F'), sign-flipped channels
        if z.is_contiguous(memory_format=torch.channels_last):  # reduce over W as a contiguous NHWC view
            top = z.permute(0, 2, 3, 1).amax(dim=2).transpose(1, 2)  # (B, C, T); ~5x faster than amax(3) here
        else:
            top = z.amax(dim=3)
        return torch.relu(top * sign[:, None]) * scale[:, None] + shift[:, None]


class _MidendConv(nn.Module):
    """The mid-end's ``Conv2d(kernel [7, width])`` on a zero-padded ``[B, T+6, width, 1]`` map, i.e. a
    Conv1d over time with the width as input channels -> ReLU -> BN: ``[B, C_in, T] -> [B, C, T]``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2)
        self.bn = tf_batchnorm(1, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(torch.relu(self.conv(x)))


HEAD_INPUTS = ("penultimate", "meanmax")


@ARCHS.register("musicnn")
class Musicnn(nn.Module):
    """``[B, 1, F, frames]`` (the ``musicnn`` feature; F = 96 for the checkpoints) -> tag / genre logits
    ``[B, K]``; any frame count >= 1."""

    EMBEDDINGS = ("meanmax", "penultimate", "taggram", "mean_pool", "max_pool")
    DEFAULT_EMBEDDING = "meanmax"

    @dataclass
    class Config:
        frontend_filters: float = bounded(1.6, gt=0)  # filter multiplier: timbral int(1.6 * 128) = 204, temporal int(1.6 * 32) = 51
        midend_filters: int = bounded(64, ge=1)  # filters of each mid-end conv (MSD_musicnn_big: 512)
        backend_units: int = bounded(200, ge=1)  # penultimate dense layer (MSD_musicnn_big: 500)
        dropout: float = bounded(0.5, ge=0, lt=1)  # before the penultimate and the output dense layers (training only)
        # what the classifier reads: "penultimate" (the shipped tag models: Dense 200 -> 50 tags) or "meanmax"
        # (for fine-tuning a genre head: the standardised 1,506 mean+max pool, which the measurement puts
        # 10-16 points above the penultimate layer for linear probes; the Dense 200 then stays as loaded, frozen,
        # and still gives the "penultimate" output)
        head_input: str = "penultimate"

        def validate(self) -> None:
            check_bounds(self, "model.params")  # direct callers (from_dict has checked, naming the architecture)
            if self.head_input not in HEAD_INPUTS:
                raise ConfigError(f"musicnn: head_input must be one of {HEAD_INPUTS}, got {self.head_input!r}")

    @staticmethod
    def check_input(cfg: Config, in_shape: tuple[int, int, int]) -> None:
        c, f, _ = in_shape
        if c != 1 or f < 3:
            raise ConfigError(
                f"musicnn needs a one-channel spectrogram with >= 3 bands (the 'musicnn' feature: 96 mel bands), "
                f"got in_shape (C, F, frames) = {in_shape}"
            )

    def __init__(self, cfg: Config, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        cfg.validate()
        self.check_input(cfg, in_shape)
        self.cfg = cfg
        n_mels = in_shape[1]
        timbral, temporal = int(cfg.frontend_filters * 128), int(cfg.frontend_filters * 32)
        self.input_bn = tf_batchnorm(2, 1)
        # front end: vertical (timbral) filters span 40 % / 70 % of the bands over 7 frames; horizontal
        # (temporal) filters span 1 band over 128 / 64 / 32 frames (~2 / 1 / 0.5 s)
        self.timbral = nn.ModuleList(
            _Block(timbral, (7, int(share * n_mels)), (3, 3)) for share in (0.4, 0.7)
        )
        self.temporal = nn.ModuleList(_Block(temporal, (k, 1), tf_same_pad(k)) for k in (128, 64, 32))
        front = 2 * timbral + 3 * temporal
        mid = cfg.midend_filters
        self.midend = nn.ModuleList([_MidendConv(front, mid), _MidendConv(mid, mid), _MidendConv(mid, mid)])
        self.pooled_dim = front + 3 * mid  # per pooling: 753 for the checkpoints
        self.pool_bn = tf_batchnorm(1, 2 * self.pooled_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.dense = nn.Linear(2 * self.pooled_dim, cfg.backend_units)
        self.dense_bn = tf_batchnorm(1, cfg.backend_units)
        head_in = 2 * self.pooled_dim if cfg.head_input == "meanmax" else cfg.backend_units
        self.classifier = nn.Linear(head_in, num_classes)
        if cfg.head_input == "meanmax":  # off the logits' path: no gradient (and no unused DDP parameters)
            for p in (*self.dense.parameters(), *self.dense_bn.parameters()):
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> Musicnn:
        super().train(mode)
        if self.cfg.head_input == "meanmax":  # off the logits' path: its running statistics stay as loaded too
            self.dense_bn.eval()
        return self

    def embedding_dims(self) -> dict[str, int]:
        """Size of each named embedding (:attr:`EMBEDDINGS`)."""
        k = self.classifier.out_features
        d = self.pooled_dim
        return {"meanmax": 2 * d, "penultimate": self.cfg.backend_units, "taggram": k, "mean_pool": d, "max_pool": d}

    # The frozen-prefix protocol (engine.feature_cache.PrefixCache): forward(x) = after_prefix(prefix(x)), where
    # prefix is the front end -- the modules of prefix_modules, the costly part that fine-tuning keeps frozen.
    prefix_modules = ("input_bn", "timbral", "temporal")

    def prefix(self, x: Tensor) -> Tensor:
        """``[B, 1, F, frames]`` -> the concatenated front end ``[B, 561, T]`` (timbral, then temporal)."""
        x = self.input_bn(x.transpose(2, 3))  # (B, 1, T, F): TF's NHWC with H = time, W = band
        return torch.cat([m(x) for m in self.timbral] + [m(x) for m in self.temporal], dim=1)  # (B, 561, T)

    def midend_after_prefix(self, front: Tensor) -> Tensor:
        """The front end ``[B, 561, T]`` -> the densely connected mid-end output ``[B, 753, T]``."""
        c1 = self.midend[0](front)  # (B, 64, T)
        c2 = self.midend[1](c1) + c1  # residual
        c3 = self.midend[2](c2) + c2
        return torch.cat([front, c1, c2, c3], dim=1)  # (B, 753, T)

    def midend_features(self, x: Tensor) -> Tensor:
        """``[B, 1, F, frames]`` -> the densely connected mid-end output ``[B, 753, frames]``."""
        return self.midend_after_prefix(self.prefix(x))

    @staticmethod
    def _interleave(max_pool: Tensor, mean_pool: Tensor) -> Tensor:  # (B, D) x 2 -> (B, 2D)
        # TF concatenates [max, mean] on a trailing axis and flattens: the BN / dense inputs interleave them
        return torch.stack([max_pool, mean_pool], dim=2).flatten(1)

    def pooled_after_prefix(self, front: Tensor) -> Tensor:
        """The front end ``[B, 561, T]`` -> the interleaved max / mean pool ``[B, 1506]`` that ``pool_bn`` reads."""
        mid = self.midend_after_prefix(front)
        return self._interleave(mid.amax(dim=2), mid.mean(dim=2))

    def pooled(self, x: Tensor) -> Tensor:
        """``[B, 1, F, frames]`` -> the interleaved max / mean pool ``[B, 1506]`` (before ``pool_bn``)."""
        return self.pooled_after_prefix(self.prefix(x))

    def linear_head(self) -> tuple[nn.BatchNorm1d, nn.Linear] | None:
        """``(pool_bn, classifier)`` when the logits are an affine map of :meth:`pooled` in eval mode
        (``head_input: meanmax``), what an exact logistic fit is written into
        (:meth:`engine.linear_fit.LogisticFit.load_into`); None for the penultimate head."""
        return (self.pool_bn, self.classifier) if self.cfg.head_input == "meanmax" else None

    def outputs_after_prefix(self, front: Tensor) -> dict[str, Tensor]:
        """:meth:`outputs` from the front end ``[B, 561, T]`` (:meth:`prefix`)."""
        mid = self.midend_after_prefix(front)  # (B, 753, T)
        max_pool, mean_pool = mid.amax(dim=2), mid.mean(dim=2)  # (B, 753) each
        normed = self.dropout(self.pool_bn(self._interleave(max_pool, mean_pool)))  # (B, 1506)
        penultimate = self.dense_bn(torch.relu(self.dense(normed)))  # (B, 200)
        logits = self.classifier(normed if self.cfg.head_input == "meanmax" else self.dropout(penultimate))
        return {
            "logits": logits,
            "taggram": torch.sigmoid(logits),
            "penultimate": penultimate,
            "meanmax": torch.cat([mean_pool, max_pool], dim=1),
            "mean_pool": mean_pool,
            "max_pool": max_pool,
        }

    def outputs(self, x: Tensor) -> dict[str, Tensor]:
        """Every named output for features ``[B, 1, F, frames]``: ``logits``, ``taggram``, ``penultimate``,
        ``meanmax``, ``mean_pool``, ``max_pool`` (each ``[B, D]``)."""
        return self.outputs_after_prefix(self.prefix(x))

    def after_prefix(self, front: Tensor) -> Tensor:  # (B, 561, T) -> (B, K)
        """The logits from the front end (:meth:`prefix`): the mid-end, pooling and head."""
        return self.outputs_after_prefix(front)["logits"]

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, F, frames) -> (B, K)
        return self.after_prefix(self.prefix(x))
