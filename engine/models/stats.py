"""``stats``: the classic baseline -- per-band statistics of the features over the window, then a linear
layer (or a small MLP).

What users of MFCC + scikit-learn measure against (MFCC mean and standard deviation over the clip, a
standardised logistic regression), inside the engine so that it trains, evaluates, cross-validates and
exports with the same commands as every other architecture::

    [B, C, F, frames] ──mean, std over frames (per channel and bin)──▶ [B, S*C*F]
        ──BatchNorm1d (affine=False: standardisation only)──▶ Dropout ──▶ Linear ──▶ logits [B, K]
                                                    (or Linear ─ ReLU ─ Dropout ─ Linear with ``hidden > 0``)

Feed it MFCC with deltas and chroma (``configs/stats.yaml``: ``features: [mfcc, chroma]``, ``deltas: 2``,
``stack: freq`` -> F = 3*20 + 12 = 72, so 144 pooled values). The standard deviation is the population one
(``ddof = 0``, NumPy's default, ``torch.std(..., correction=0)``). The pooled vector is standardised inside
the model by a BatchNorm without affine parameters: in training each batch by its own statistics, in
evaluation by the running mean and variance -- with ``norm_momentum: null`` (the default) the running
statistics are the cumulative average over every training batch seen, i.e. the training set's mean and
variance as a ``StandardScaler`` fitted on it would hold them. That is what lets plain SGD/Adam fit
features whose scales differ by orders of magnitude (MFCC c0 in dB vs chroma in [0, 1]).

The backbone pools globally, so a training crop of any length and longer evaluation windows (the whole
track) both work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.config import ConfigError
from engine.models.base import ARCHS
from registry.fields import bounded, check_bounds

STATISTICS = ("mean", "std", "min", "max")


def pooled_statistics(x: Tensor, stats: tuple[str, ...] = ("mean", "std")) -> Tensor:
    """``x [B, C, F, frames]`` -> ``[B, len(stats) * C * F]``: each statistic over frames, flattened
    channel-major (``c * F + f``), the statistics one block after the other in ``stats`` order.

    ``std`` is the population standard deviation (``ddof = 0``); one frame gives 0.
    """
    flat = x.flatten(1, 2)  # (B, C*F, frames)
    out = []
    for s in stats:
        if s == "mean":
            out.append(flat.mean(dim=-1))
        elif s == "std":
            out.append(flat.std(dim=-1, correction=0))
        elif s == "min":
            out.append(flat.amin(dim=-1))
        elif s == "max":
            out.append(flat.amax(dim=-1))
        else:
            raise ValueError(f"unknown statistic {s!r}; valid: {', '.join(STATISTICS)}")
    return torch.cat(out, dim=1)  # (B, S*C*F)


@ARCHS.register("stats")
class Stats(nn.Module):
    """``[B, C, F, frames]`` -> logits ``[B, K]`` from pooled per-band statistics; any frame count."""

    @dataclass
    class Config:
        stats: tuple[str, ...] = ("mean", "std")  # statistics over frames, per channel and bin
        hidden: int = bounded(0, ge=0, note="0 = linear")  # 0 = linear classifier (logistic regression); > 0 = one hidden ReLU layer
        dropout: float = bounded(0.0, ge=0, lt=1)  # on the standardised statistics (and after the hidden layer)
        norm: bool = True  # standardise the pooled vector (BatchNorm1d without affine parameters)
        norm_momentum: float | None = bounded(None, gt=0, le=1, none="cumulative average")  # BatchNorm running-stat momentum; None = cumulative average

        def validate(self) -> None:
            check_bounds(self, "model.params")  # direct callers (from_dict has checked, naming the architecture)
            if not self.stats:
                raise ConfigError(f"stats: stats must list at least one of {', '.join(STATISTICS)}")
            bad = [s for s in self.stats if s not in STATISTICS]
            if bad or len(set(self.stats)) != len(self.stats):
                raise ConfigError(
                    f"stats: stats must be distinct names from {', '.join(STATISTICS)}, got {list(self.stats)}"
                )

    def __init__(self, cfg: Config, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, f, _ = in_shape
        self.cfg = cfg
        self.stats = tuple(cfg.stats)
        dim = len(self.stats) * c * f
        self.out_dim = dim
        self.norm: nn.Module = (
            nn.BatchNorm1d(dim, affine=False, momentum=cfg.norm_momentum) if cfg.norm else nn.Identity()
        )
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.hidden:
            self.dense: nn.Module = nn.Sequential(
                nn.Linear(dim, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)
            )
            self.classifier = nn.Linear(cfg.hidden, num_classes)
        else:
            self.dense = nn.Identity()
            self.classifier = nn.Linear(dim, num_classes)
        # start at chance (uniform probabilities), as a logistic regression's solver does: a random head on
        # standardised inputs would begin with arbitrary confident logits
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def linear_head(self) -> tuple[nn.BatchNorm1d | None, nn.Linear] | None:
        """``(standardiser or None, classifier)`` when the logits are an affine map of :meth:`pooled`
        (``hidden: 0``): what an exact logistic-regression fit is written into
        (:meth:`engine.linear_fit.LogisticFit.load_into`); None for the MLP (``hidden > 0``)."""
        if self.cfg.hidden:
            return None
        return (self.norm if isinstance(self.norm, nn.BatchNorm1d) else None), self.classifier

    def pooled(self, x: Tensor) -> Tensor:  # (B, C, F, frames) -> (B, S*C*F), before standardisation
        return pooled_statistics(x.float(), self.stats)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, F, frames) -> (B, K)
        z = self.pooled(x)  # (B, S*C*F)
        if self.training and z.shape[0] == 1 and isinstance(self.norm, nn.BatchNorm1d):
            # one clip has no batch statistics: standardise it by the running ones (and leave them alone)
            n = self.norm
            z = F.batch_norm(z, n.running_mean, n.running_var, training=False, eps=n.eps)
        else:
            z = self.norm(z)  # standardised
        return self.classifier(self.dense(self.dropout(z)))
