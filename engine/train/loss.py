"""The training loss: cross-entropy against soft (mixed, smoothed) targets, optionally class-weighted."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["class_weight_tensor", "soft_cross_entropy"]


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
