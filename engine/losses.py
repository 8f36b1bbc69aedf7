"""Training losses: cross-entropy against soft (mixed, smoothed) targets, optionally class-weighted (single-label);
binary cross-entropy with logits per tag, optionally with per-tag positive weights (multi-label)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["class_weight_tensor", "multilabel_bce", "pos_weight_tensor", "soft_cross_entropy"]


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against (possibly mixed) soft targets ``[B, K]``; logits ``[B, K]``; mean over batch."""
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / targets.shape[1]
    logp = F.log_softmax(logits.float(), dim=1)
    per_class = -targets * logp
    if weight is not None:
        per_class = per_class * weight
    return per_class.sum(dim=1).mean()


def class_weight_tensor(manifest: dict[str, Any], split: str, labels: list[str]) -> torch.Tensor:
    """Inverse-frequency weights ``[K]`` normalised to mean 1 (classes absent from training get weight 1)."""
    counts = manifest["splits"][split]["per_label"]
    n = torch.tensor([float(counts.get(name, 0)) for name in labels])
    w = torch.where(n > 0, n.sum() / (len(labels) * n.clamp(min=1)), torch.ones_like(n))
    return w / w.mean()


def multilabel_bce(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-window binary cross-entropy ``[B]`` (nats, mean over the K tags) of logits ``[B, K]`` against (possibly
    mixed) targets in [0, 1] ``[B, K]``; ``smoothing`` pulls each target towards 1/2 (``y (1 - s) + s / 2``);
    ``pos_weight`` ``[K]`` multiplies the positive term of each tag (``F.binary_cross_entropy_with_logits``)."""
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / 2
    per_tag = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=pos_weight, reduction="none")
    return per_tag.mean(dim=1)


def pos_weight_tensor(manifest: dict[str, Any], split: str, labels: list[str]) -> torch.Tensor:
    """``optim.pos_weight: balanced``: per-tag ``negatives / positives`` ``[K]`` of ``split``'s tracks (the
    manifest's ``per_label`` tag counts); a tag never (or always) positive gets 1."""
    entry = manifest["splits"][split]
    tracks = float(entry["tracks"])
    pos = torch.tensor([float(entry["per_label"].get(name, 0)) for name in labels])
    neg = tracks - pos
    return torch.where((pos > 0) & (neg > 0), neg / pos.clamp(min=1), torch.ones_like(pos))
