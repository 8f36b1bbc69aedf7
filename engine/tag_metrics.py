"""Multi-label (tagging) metrics: ROC-AUC, average precision (PR-AUC, "mAP"), F1, per tag and averaged.

Inputs are ``scores`` float ``[N, K]`` (any real scores: sigmoids, logits; only their order matters for
the AUCs) and ``targets`` ``{0, 1}`` ``[N, K]``. Everything is computed in float64 on the CPU.

Conventions (each test-checked against scikit-learn)
----------------------------------------------------
- **Ties** are handled as scikit-learn does: one ROC/PR point per *distinct* score (exact ranking of the
  raw scores, no binning, no sigmoid applied). ROC-AUC is then the Mann-Whitney statistic with a tie
  counted 1/2 (``roc_auc_score``); average precision is ``sum_i (R_i - R_{i-1}) P_i`` over the distinct
  thresholds (``average_precision_score``, no interpolation).
- **A tag with no positives or no negatives** in the data has no ranking to measure: its ROC-AUC and AP are
  NaN and it is left out of the macro means; ``tags_left_out`` says how many (scikit-learn raises for the
  AUC and gives AP 1 for an all-positive tag, 0 for an all-negative one). Micro averages pool all ``N * K``
  (score, target) pairs into one binary problem (scikit-learn's ``average="micro"``); NaN only when the
  pool has no positive or no negative.
- **F1**: a tag is predicted when ``score >= threshold`` (0.5, or per-tag thresholds from
  :func:`choose_thresholds`). Per-tag F1 with 0/0 -> 0 (scikit-learn ``zero_division=0``). Macro F1 is the
  mean over the tags with support > 0 (as in :mod:`engine.metrics`: a tag absent from the truth does not
  drag the mean down; a false positive on it still counts in micro F1 and in the precision of nothing
  else). Micro F1 pools the counts over all tags.

Why not torchmetrics' multilabel functions: they apply a sigmoid to scores outside ``[0, 1]`` (logits
saturate to equal values in float, which creates ties scikit-learn does not see), threshold with ``>``,
and their macro means keep or drop absent tags by other rules; exact counts are a few lines here.

Track level: :func:`pool_by_track` averages the window sigmoids of each track (like ``mean_prob`` in
:mod:`engine.metrics`). Distributed: :class:`TagAccumulator` gathers each batch through a callable (e.g.
``accelerator.gather_for_metrics``), so the metrics see every sample exactly once, then computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "TagAccumulator",
    "average_precision_per_tag",
    "choose_thresholds",
    "f1_scores",
    "micro_average_precision",
    "micro_pr_curve",
    "micro_roc_auc",
    "pool_by_track",
    "roc_auc_per_tag",
    "tag_metrics",
    "window_tag_metrics",
]


def _check(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """float64 CPU scores and targets ``[N, K]``; raises on shape or non-binary targets."""
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(
            f"scores and targets must both be [N, K]; got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    t = targets.detach().cpu()
    if t.numel() and not bool(((t == 0) | (t == 1)).all()):
        raise ValueError("targets must hold only 0 and 1")
    s = scores.detach().cpu().double()
    if s.numel() and bool(torch.isnan(s).any()):
        raise ValueError("scores hold NaN")
    return s, t.double()


def _curve(score: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Cumulative true and false positives ``[D]`` at each of the D distinct scores, highest first
    (scikit-learn's ``_binary_clf_curve``); ``score``, ``target`` ``[n]`` float64."""
    order = torch.argsort(score, descending=True, stable=True)
    s, y = score[order], target[order]
    last = torch.nonzero(s[1:] != s[:-1]).flatten()  # last index of each run of equal scores but the final
    ends = torch.cat([last, torch.tensor([s.numel() - 1])])
    tps = torch.cumsum(y, 0)[ends]
    fps = (ends + 1).double() - tps
    return tps, fps


def _binary_auc(score: Tensor, target: Tensor) -> float:
    tps, fps = _curve(score, target)
    pos, neg = float(tps[-1]), float(fps[-1])
    if pos == 0 or neg == 0:
        return math.nan
    # trapezoids in count units: every term is an integer or half-integer, so the sum is exact
    t0 = torch.cat([torch.zeros(1, dtype=torch.float64), tps])
    f0 = torch.cat([torch.zeros(1, dtype=torch.float64), fps])
    area2 = float(((f0[1:] - f0[:-1]) * (t0[1:] + t0[:-1])).sum())
    return area2 / (2.0 * pos * neg)


def _binary_ap(score: Tensor, target: Tensor) -> float:
    tps, fps = _curve(score, target)
    pos, neg = float(tps[-1]), float(fps[-1])
    if pos == 0 or neg == 0:
        return math.nan
    t0 = torch.cat([torch.zeros(1, dtype=torch.float64), tps])
    precision = tps / (tps + fps)
    return float(((t0[1:] - t0[:-1]) * precision).sum()) / pos


def roc_auc_per_tag(scores: Tensor, targets: Tensor) -> Tensor:
    """ROC-AUC of each tag, float64 ``[K]``; NaN for a tag without positives or without negatives."""
    s, t = _check(scores, targets)
    per_tag = [_binary_auc(s[:, j], t[:, j]) if s.shape[0] else math.nan for j in range(s.shape[1])]
    return torch.tensor(per_tag, dtype=torch.float64)


def average_precision_per_tag(scores: Tensor, targets: Tensor) -> Tensor:
    """Average precision of each tag, float64 ``[K]``; NaN for a tag without positives or negatives."""
    s, t = _check(scores, targets)
    per_tag = [_binary_ap(s[:, j], t[:, j]) if s.shape[0] else math.nan for j in range(s.shape[1])]
    return torch.tensor(per_tag, dtype=torch.float64)


def micro_roc_auc(scores: Tensor, targets: Tensor) -> float:
    """ROC-AUC of all ``N * K`` (score, target) pairs pooled; NaN without a positive or a negative."""
    s, t = _check(scores, targets)
    return _binary_auc(s.flatten(), t.flatten()) if s.numel() else math.nan


def micro_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Average precision of all ``N * K`` pairs pooled; NaN without a positive or a negative."""
    s, t = _check(scores, targets)
    return _binary_ap(s.flatten(), t.flatten()) if s.numel() else math.nan


def micro_pr_curve(scores: Tensor, targets: Tensor) -> tuple[list[float], list[float]]:
    """``(precision, recall)`` at each distinct score of all ``N * K`` pairs pooled, highest score first, starting
    at (1, 0) (scikit-learn's ``precision_recall_curve`` reversed); ``([], [])`` without a positive."""
    s, t = _check(scores, targets)
    if not s.numel() or not bool(t.any()):
        return [], []
    tps, fps = _curve(s.flatten(), t.flatten())
    precision = (tps / (tps + fps)).tolist()
    recall = (tps / tps[-1]).tolist()
    return [1.0, *precision], [0.0, *recall]


def _thresholds(thresholds: float | Sequence[float], k: int) -> Tensor:
    if isinstance(thresholds, (int, float)):
        return torch.full((k,), float(thresholds), dtype=torch.float64)
    thr = torch.tensor([float(v) for v in thresholds], dtype=torch.float64)
    if thr.shape != (k,):
        raise ValueError(f"{thr.numel()} thresholds given for {k} tags")
    return thr


def f1_scores(scores: Tensor, targets: Tensor, thresholds: float | Sequence[float] = 0.5) -> dict[str, Any]:
    """F1 with a tag predicted when ``score >= threshold`` (one number, or one per tag).

    Returns ``{"per_tag": Tensor [K] (0/0 -> 0), "macro": mean over tags with support > 0 (NaN if none),
    "micro": F1 of the counts pooled over all tags, "tp"/"fp"/"fn": Tensor [K] counts}``.
    """
    s, t = _check(scores, targets)
    pred = (s >= _thresholds(thresholds, s.shape[1])[None, :]).double()  # (N, K)
    tp, fp, fn = (pred * t).sum(0), (pred * (1 - t)).sum(0), ((1 - pred) * t).sum(0)  # (K,) each
    denom = 2 * tp + fp + fn
    per_tag = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom))
    present = (tp + fn) > 0
    macro = float(per_tag[present].mean()) if bool(present.any()) else math.nan
    d = float(denom.sum())
    micro = 2 * float(tp.sum()) / d if d > 0 else 0.0
    return {"per_tag": per_tag, "macro": macro, "micro": micro, "tp": tp, "fp": fp, "fn": fn}


def choose_thresholds(scores: Tensor, targets: Tensor, default: float = 0.5) -> list[float]:
    """Per-tag thresholds that maximise each tag's F1 on these (validation) scores, as a list of K floats.

    For each tag every cut between two distinct scores is tried; the threshold returned is the midpoint
    between the lowest score predicted positive and the next lower score (so ``score >= t`` and
    ``score > t`` give the same predictions here), or that lowest score itself when it is the minimum.
    Among cuts with equal F1 the highest threshold wins (fewest positives predicted). A tag without
    positives in these scores gets ``default`` (nothing to fit).
    """
    s, t = _check(scores, targets)
    out: list[float] = []
    for j in range(s.shape[1]):
        col, y = s[:, j], t[:, j]
        pos = float(y.sum())
        if pos == 0:
            out.append(float(default))
            continue
        tps, fps = _curve(col, y)
        f1 = 2 * tps / (tps + fps + pos)  # (D,) F1 when predicting the scores >= the i-th distinct one
        best = int(torch.argmax(f1))  # first maximum = highest threshold
        distinct = torch.unique(col, sorted=True).flip(0)  # (D,) highest first, aligned with tps
        hi = float(distinct[best])
        if best + 1 < distinct.numel():
            lo = float(distinct[best + 1])
            mid = (hi + lo) / 2
            out.append(mid if lo < mid <= hi else hi)  # adjacent floats: the midpoint rounds onto one
        else:
            out.append(hi)
    return out


def _mean_kept(values: Tensor) -> float:
    kept = values[~torch.isnan(values)]
    return float(kept.mean()) if kept.numel() else math.nan


def tag_metrics(
    scores: Tensor, targets: Tensor, tag_names: Sequence[str], thresholds: Sequence[float] | None = None
) -> dict[str, Any]:
    """All tagging metrics of ``scores`` ``[N, K]`` against ``targets`` ``[N, K]``, as a JSON-ready dict.

    Keys: ``n``, ``num_tags``; ``roc_auc_macro``, ``roc_auc_micro``, ``pr_auc_macro`` (mAP),
    ``pr_auc_micro``; ``tags_left_out`` (how many tags have no positive or no negative: NaN AUC/AP, outside
    the macro means) and ``tags_left_out_names``; ``f1_macro``, ``f1_micro`` at 0.5; with ``thresholds``
    (e.g. from :func:`choose_thresholds` on the validation set) also ``f1_macro_tuned``, ``f1_micro_tuned``;
    ``per_tag``: ``{name: {"roc_auc", "ap", "support", "f1", ["f1_tuned", "threshold"]}}`` (NaN stays NaN:
    ``json.dumps`` writes it as ``NaN``).
    """
    s, t = _check(scores, targets)
    if len(tag_names) != s.shape[1]:
        raise ValueError(f"scores have {s.shape[1]} tags but {len(tag_names)} tag names were given")
    auc = roc_auc_per_tag(s, t)
    ap = average_precision_per_tag(s, t)
    support = t.sum(0).long()
    f1 = f1_scores(s, t, 0.5)
    left_out = [name for j, name in enumerate(tag_names) if math.isnan(float(auc[j]))]
    out: dict[str, Any] = {
        "n": int(s.shape[0]),
        "num_tags": int(s.shape[1]),
        "roc_auc_macro": _mean_kept(auc),
        "roc_auc_micro": micro_roc_auc(s, t),
        "pr_auc_macro": _mean_kept(ap),
        "pr_auc_micro": micro_average_precision(s, t),
        "tags_left_out": len(left_out),
        "tags_left_out_names": left_out,
        "f1_macro": f1["macro"],
        "f1_micro": f1["micro"],
    }
    per_tag = {
        name: {
            "roc_auc": float(auc[j]),
            "ap": float(ap[j]),
            "support": int(support[j]),
            "f1": float(f1["per_tag"][j]),
        }
        for j, name in enumerate(tag_names)
    }
    if thresholds is not None:
        tuned = f1_scores(s, t, thresholds)
        out["f1_macro_tuned"], out["f1_micro_tuned"] = tuned["macro"], tuned["micro"]
        for j, name in enumerate(tag_names):
            per_tag[name]["f1_tuned"] = float(tuned["per_tag"][j])
            per_tag[name]["threshold"] = float(thresholds[j])
    out["per_tag"] = per_tag
    return out


def pool_by_track(
    window_scores: Tensor, track_index: Tensor, window_targets: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Windows -> tracks: the mean of each track's window scores (pass sigmoids, not logits).

    Args:
        window_scores: ``[W, K]``; track_index: ``[W]`` int; window_targets: ``[W, K]`` or None.

    Returns:
        ``track_ids`` ``[N]`` (sorted unique), ``track_scores`` ``[N, K]`` float64, ``track_targets``
        ``[N, K]`` (None when no targets were given). Raises ValueError when the windows of one track carry
        different targets.
    """
    if window_scores.ndim != 2 or track_index.shape != window_scores.shape[:1]:
        raise ValueError(
            f"window_scores must be [W, K] and track_index [W]; got {tuple(window_scores.shape)} "
            f"and {tuple(track_index.shape)}"
        )
    s = window_scores.detach().cpu().double()
    tracks = track_index.detach().cpu().long()
    track_ids, inverse = torch.unique(tracks, sorted=True, return_inverse=True)  # (N,), (W,)
    n, k = track_ids.numel(), s.shape[1]
    sums = torch.zeros(n, k, dtype=torch.float64).index_add_(0, inverse, s)
    counts = torch.bincount(inverse, minlength=n).clamp_min(1).double()
    pooled = sums / counts[:, None]
    if window_targets is None:
        return track_ids, pooled, None
    if window_targets.shape != window_scores.shape:
        raise ValueError(
            f"window_targets must be {tuple(window_scores.shape)}, got {tuple(window_targets.shape)}"
        )
    wt = window_targets.detach().cpu()
    track_targets = torch.zeros(n, k, dtype=wt.dtype)
    track_targets[inverse] = wt
    bad = (track_targets[inverse] != wt).any(dim=1)  # (W,) a window disagreeing with its track's row
    if bool(bad.any()):
        raise ValueError(
            "windows of the same track carry different targets "
            f"(tracks {track_ids[inverse[bad]].unique().tolist()[:5]})"
        )
    return track_ids, pooled, track_targets


Gather = Callable[[Tensor], Tensor]


class TagAccumulator:
    """Collects window scores, targets and track indices; computes once at the end over all processes.

    ``gather`` is applied to every batch as it is added (identity when None). Pass
    ``accelerator.gather_for_metrics``: it must see each batch as it comes, because it drops the samples the
    distributed sampler duplicated to even out the last batch only when called on that batch. The gathered
    rows are kept on the CPU, so every process ends with the same full set and the same numbers.
    """

    def __init__(self, gather: Gather | None = None) -> None:
        self._gather: Gather = gather if gather is not None else (lambda x: x)
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._tracks: list[Tensor] = []

    def update(self, scores: Tensor, targets: Tensor, tracks: Tensor | None = None) -> None:
        """Add one batch: scores ``[B, K]`` (sigmoids), targets ``[B, K]``, tracks ``[B]`` (None: each
        row its own track; then track-level pooling is not available)."""
        if targets.shape != scores.shape or (tracks is not None and tracks.shape != scores.shape[:1]):
            raise ValueError("scores and targets must be [B, K] and tracks [B]")
        if self._scores and (tracks is None) != (not self._tracks):
            raise ValueError("tracks must be given for every batch or for none")
        self._scores.append(self._gather(scores.detach()).cpu())
        self._targets.append(self._gather(targets.detach()).cpu())
        if tracks is not None:
            self._tracks.append(self._gather(tracks.detach().long()).cpu())

    def __len__(self) -> int:
        return sum(s.shape[0] for s in self._scores)

    def compute(
        self, tag_names: Sequence[str], track_level: bool = True, thresholds: Sequence[float] | None = None
    ) -> dict[str, Any]:
        """:func:`tag_metrics` of the gathered rows: of the tracks (window scores pooled by
        :func:`pool_by_track`) when ``track_level`` and tracks were given, else of the rows."""
        k = len(tag_names)
        scores = torch.cat(self._scores) if self._scores else torch.zeros(0, k)
        targets = torch.cat(self._targets) if self._targets else torch.zeros(0, k)
        if track_level and self._tracks:
            _, scores, targets = pool_by_track(scores, torch.cat(self._tracks), targets)
        return tag_metrics(scores, targets, tag_names, thresholds)


def window_tag_metrics(
    window_scores: Tensor,
    window_targets: Tensor,
    track_index: Tensor,
    tag_names: Sequence[str],
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Segment (window) and track tag metrics of one evaluation: ``{"segment": tag_metrics of the windows,
    "track": tag_metrics of the tracks (window sigmoids averaged, :func:`pool_by_track`), "track_aggregate":
    "mean_prob", "task": "multilabel"}``. Each level also carries the headline names ``map`` (=
    ``pr_auc_macro``) and ``roc_auc`` (= ``roc_auc_macro``), as model selection and cross-validation name them.

    Args:
        window_scores: ``[W, K]`` sigmoids; window_targets: ``[W, K]`` in {0, 1}; track_index: ``[W]``.
        thresholds: per-tag thresholds (chosen on the validation split) for the ``*_tuned`` F1 figures.
    """
    k = len(tag_names)
    scores = window_scores.reshape(-1, k)
    targets = window_targets.reshape(-1, k)  # an empty gather comes back as [0]
    _, track_scores, track_targets = pool_by_track(scores, track_index.reshape(-1), targets)
    out: dict[str, Any] = {"task": "multilabel", "track_aggregate": "mean_prob"}
    for level, (s, t) in (("segment", (scores, targets)), ("track", (track_scores, track_targets))):
        m = tag_metrics(s, t, tag_names, thresholds)
        out[level] = {"map": m["pr_auc_macro"], "roc_auc": m["roc_auc_macro"], **m}
    return out
