"""Classification metrics for genre models: segment (window) level, track level, streaming and distributed.

A track is cut into fixed-length windows (``segment_samples`` each); the model scores every window.
*Segment* metrics count each window as one sample. *Track* metrics combine the windows of a track
(:data:`TRACK_AGGREGATES`) and take the argmax: ``mean_prob`` averages the window probabilities (the
default and the headline figure), ``mean_logprob`` averages their log-probabilities (the product of the
window probabilities, renormalised: what independent windows would give). ``track_vote`` is the majority
vote of window argmaxes.

Why ``mean_prob`` is the headline: a probability is bounded, so one window that is confidently wrong (a
silent intro, a spoken passage) moves the mean by at most ``1 / windows``, whereas its log-probability can
veto the true class on its own (windows are not independent: neighbouring windows of one song are
strongly correlated, so the product over-counts the evidence). It is also what ``classify`` reports per
file. ``mean_logprob`` is reported beside it; with one window per track (whole-track evaluation) the two
are the same.

Macro averages
--------------
A macro average over every class the model knows (scikit-learn's ``average="macro"`` with ``labels=`` all
K classes, torchmetrics' ``average="macro"``) keeps a class that is absent from the truth but predicted a few
times, with precision 0 and recall 0 (zero division -> 0), which drags
the macro average down by a class the evaluation set does not contain. That is common in
cross-dataset evaluation (a model with 10 genres on a set with 8). Here the **macro average is over the
classes with support > 0** (present in the truth), like scikit-learn with ``labels=`` the present
classes; a prediction into an absent class still counts as an error against the recall of its true
class and the accuracy, so no error goes uncounted.
Per-class figures are reported for every class, with their support, so nothing is hidden. Weighted
averages weight by support, so absent classes weigh 0 in both conventions.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "TRACK_AGGREGATES",
    "Accumulator",
    "aggregate_tracks",
    "classification_metrics",
    "track_and_segment_metrics",
]


def _check_probs_labels(probs: Tensor, labels: Tensor, label_names: list[str]) -> None:
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, K], got shape {tuple(probs.shape)}")
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(f"labels must be [N] with N={probs.shape[0]}, got shape {tuple(labels.shape)}")
    if probs.shape[1] != len(label_names):
        raise ValueError(f"probs has {probs.shape[1]} classes but {len(label_names)} label names were given")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1] - 1}], got {labels.min()}..{labels.max()}")


def classification_metrics(probs: Tensor, labels: Tensor, label_names: list[str]) -> dict[str, Any]:
    """Multiclass metrics of ``probs`` ``[N, K]`` (probabilities or scores) against ``labels`` ``[N]`` (int).

    Returns a JSON-ready dict:

    - ``n``: number of samples; ``accuracy`` (top-1, micro); ``top2_accuracy`` (true label among the two
      highest scores; equals ``accuracy`` when K < 2);
    - ``macro_precision``, ``macro_recall``, ``macro_f1``: unweighted mean over the classes with
      support > 0 (see the module docstring for why, and how it differs from a macro over all K classes);
    - ``weighted_precision``, ``weighted_recall``, ``weighted_f1``: mean weighted by support;
    - ``per_class``: ``{label_name: {"precision", "recall", "f1", "support"}}`` for every class
      (0/0 -> 0.0);
    - ``confusion_matrix``: ``[K][K]`` counts, rows = true class, columns = predicted class;
    - ``classes_evaluated``: names of the classes with support > 0 (the macro average's classes).

    An empty input (N = 0) gives ``n = 0`` and NaN-free zeros.
    """
    _check_probs_labels(probs, labels, label_names)
    k = len(label_names)
    probs = probs.detach().float().cpu()
    labels = labels.detach().long().cpu()
    n = int(labels.numel())
    if n == 0:
        zeros = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        return {
            "n": 0,
            "accuracy": 0.0,
            "top2_accuracy": 0.0,
            **{f"{a}_{m}": 0.0 for a in ("macro", "weighted") for m in ("precision", "recall", "f1")},
            "per_class": {name: dict(zeros) for name in label_names},
            "confusion_matrix": [[0] * k for _ in range(k)],
            "classes_evaluated": [],
        }
    preds = probs.argmax(dim=1)  # (N,)
    cm = confusion_matrix(preds, labels, k)  # (K, K) rows = true
    support = cm.sum(dim=1)  # (K,)
    precision, recall, f1 = precision_recall_f1(cm)  # (K,) each
    present = support > 0
    weights = support.double() / n

    topk = min(2, k)
    top2 = (probs.topk(topk, dim=1).indices == labels[:, None]).any(dim=1)  # (N,)

    def macro(x: Tensor) -> float:
        return float(x[present].mean())

    return {
        "n": n,
        "accuracy": float(cm.diag().sum()) / n,
        "top2_accuracy": float(top2.double().mean()),
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "macro_f1": macro(f1),
        "weighted_precision": float((precision * weights).sum()),
        "weighted_recall": float((recall * weights).sum()),
        "weighted_f1": float((f1 * weights).sum()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": cm.tolist(),
        "classes_evaluated": [name for i, name in enumerate(label_names) if present[i]],
    }


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts ``[K, K]`` (int64; rows = true class, columns = predicted) of ``preds`` / ``labels`` ``[N]``."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def precision_recall_f1(cm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class precision, recall and F1 (float64 ``[K]`` each) of a confusion matrix (rows = true); 0/0 -> 0,
    as scikit-learn's ``zero_division=0``. F1 is ``2 tp / (2 tp + fp + fn)`` (the harmonic mean of P and R)."""
    tp = cm.diag().double()
    predicted, support = cm.sum(dim=0).double(), cm.sum(dim=1).double()

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))

    return ratio(tp, predicted), ratio(tp, support), ratio(2 * tp, predicted + support)


#: How window predictions become a track prediction (``eval.track_aggregate``); the first is the default.
TRACK_AGGREGATES = ("mean_prob", "mean_logprob")

#: Floor of a window probability before its log (float32's smallest normal): a window that rules a class
#: out entirely counts -87 nats against it, not minus infinity.
_LOG_FLOOR = float(torch.finfo(torch.float32).tiny)


def aggregate_tracks(
    window_probs: Tensor, track_index: Tensor, valid: Tensor | None = None, aggregate: str = "mean_prob"
) -> tuple[Tensor, Tensor, Tensor]:
    """Windows -> tracks.

    Args:
        window_probs: ``[W, K]`` per-window class probabilities.
        track_index: ``[W]`` int track index of each window.
        valid: ``[W]`` bool, False rows (padding) are ignored; None = all valid.
        aggregate: ``"mean_prob"`` (mean of the window probabilities) or ``"mean_logprob"`` (mean of their
            logs, floored at float32's smallest normal; returned as the softmax of that mean, i.e. the
            renormalised geometric mean).

    Returns:
        ``track_ids`` ``[N]`` (sorted unique track indices of the valid windows), ``track_probs``
        ``[N, K]`` (the aggregate of the track's windows, rows summing to 1), ``track_vote`` ``[N]``
        (majority vote of the window argmaxes; a tie goes to the tied class with the higher mean
        probability).
    """
    if window_probs.ndim != 2 or track_index.shape != window_probs.shape[:1]:
        raise ValueError(
            f"window_probs must be [W, K] and track_index [W]; got {tuple(window_probs.shape)} "
            f"and {tuple(track_index.shape)}"
        )
    if aggregate not in TRACK_AGGREGATES:
        raise ValueError(f"aggregate must be one of {TRACK_AGGREGATES}, got {aggregate!r}")
    probs = window_probs.detach().double()
    tracks = track_index.detach().long().to(probs.device)
    if valid is not None:
        keep = valid.detach().bool().to(probs.device)
        probs, tracks = probs[keep], tracks[keep]
    k = probs.shape[1]
    track_ids, inverse = torch.unique(tracks, sorted=True, return_inverse=True)  # (N,), (W,)
    n = track_ids.numel()
    sums = torch.zeros(n, k, dtype=torch.float64, device=probs.device).index_add_(0, inverse, probs)
    counts = torch.bincount(inverse, minlength=n).clamp_min(1).double()  # (N,)
    mean = sums / counts[:, None]  # (N, K)
    votes = torch.zeros(n, k, dtype=torch.float64, device=probs.device)
    if probs.shape[0]:
        votes.index_put_(
            (inverse, probs.argmax(dim=1)), torch.ones_like(inverse, dtype=torch.float64), accumulate=True
        )
    # majority vote; among classes with the top vote count, the higher mean probability wins
    top = votes.max(dim=1, keepdim=True).values if n else votes[:, :1]
    tie_break = torch.where(votes == top, mean, torch.full_like(mean, -1.0))
    vote = tie_break.argmax(dim=1)  # (N,)
    if aggregate == "mean_logprob":
        logs = torch.zeros(n, k, dtype=torch.float64, device=probs.device)
        logs.index_add_(0, inverse, probs.clamp_min(_LOG_FLOOR).log())
        mean = torch.softmax(logs / counts[:, None], dim=1)  # (N, K) renormalised geometric mean
    return track_ids, mean.to(window_probs.dtype), vote


def track_and_segment_metrics(
    window_probs: Tensor,
    window_labels: Tensor,
    track_index: Tensor,
    valid: Tensor | None,
    label_names: list[str],
    aggregate: str = "mean_prob",
) -> dict[str, Any]:
    """Segment-level and track-level metrics of one evaluation.

    Args:
        window_probs: ``[W, K]`` per-window probabilities; window_labels ``[W]`` true class per window;
        track_index: ``[W]`` track of each window; valid ``[W]`` bool or None (padding rows are dropped).
        aggregate: the track aggregate of the headline ``"track"`` figures (:data:`TRACK_AGGREGATES`).

    Returns:
        ``{"segment": classification_metrics over valid windows, "track": classification_metrics of
        the tracks aggregated by ``aggregate``, "track_aggregate": its name, "track_mean_prob" /
        "track_mean_logprob": {"accuracy", "macro_f1", "top2_accuracy", "n"} of each aggregate,
        "track_vote": {"accuracy", "n"}}``.
        Raises ValueError if the windows of one track disagree on its label.
    """
    probs = window_probs.detach().float().cpu()
    labels = window_labels.detach().long().cpu()
    tracks = track_index.detach().long().cpu()
    if valid is not None:
        keep = valid.detach().bool().cpu()
        probs, labels, tracks = probs[keep], labels[keep], tracks[keep]
    segment = classification_metrics(probs, labels, label_names)
    out: dict[str, Any] = {"segment": segment, "track_aggregate": aggregate}
    for name in TRACK_AGGREGATES:
        track_ids, track_probs, track_vote = aggregate_tracks(probs, tracks, aggregate=name)
        track_labels = _track_labels(labels, tracks, track_ids)
        m = classification_metrics(track_probs, track_labels, label_names)
        out[f"track_{name}"] = {k: m[k] for k in ("accuracy", "macro_f1", "top2_accuracy", "n")}
        if name == aggregate:
            out["track"] = m
    n = int(track_ids.numel())
    vote_acc = float((track_vote == track_labels).double().mean()) if n else 0.0
    out["track_vote"] = {"accuracy": vote_acc, "n": n}
    return out


def _track_labels(labels: Tensor, tracks: Tensor, track_ids: Tensor) -> Tensor:
    """Label of each track in ``track_ids`` ``[N]``; all windows of a track must agree."""
    pos = torch.searchsorted(track_ids, tracks)  # (W,) position of each window's track
    out = torch.full((track_ids.numel(),), -1, dtype=torch.long)
    out[pos] = labels
    if track_ids.numel() and bool((out[pos] != labels).any()):
        bad = track_ids[pos[out[pos] != labels]].unique().tolist()[:5]
        raise ValueError(f"windows of the same track carry different labels (tracks {bad})")
    return out


class Accumulator:
    """Collects per-batch window results on the device; gathers across processes once at the end.

    ``update`` only appends (no host sync), so it is cheap inside an evaluation loop. ``compute``
    concatenates, and when ``torch.distributed`` is initialised with world size > 1, moves the rows to
    the CPU and exchanges them with one ``all_gather_object`` (this works with per-rank different
    batch counts, unlike ``Accelerator.gather_for_metrics``; every rank must call ``compute``). It then
    drops padding rows (``valid`` False) and duplicated windows so nothing counts twice: a window is
    identified by ``(track, window)`` when window positions are given, otherwise a track that appears
    on several ranks is kept from the lowest rank only.
    """

    def __init__(self) -> None:
        self._probs: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._tracks: list[Tensor] = []
        self._valid: list[Tensor] = []
        self._windows: list[Tensor] | None = []

    def update(
        self,
        probs: Tensor,
        labels: Tensor,
        tracks: Tensor,
        valid: Tensor | None = None,
        windows: Tensor | None = None,
    ) -> None:
        """Add one batch: probs ``[B, K]``, labels ``[B]``, tracks ``[B]``, valid ``[B]`` bool (None = all),
        windows ``[B]`` (optional position of the window in its track, e.g. its start sample)."""
        b = probs.shape[0]
        if labels.shape[0] != b or tracks.shape[0] != b:
            raise ValueError(
                f"batch sizes differ: probs {b}, labels {labels.shape[0]}, tracks {tracks.shape[0]}"
            )
        self._probs.append(probs.detach())
        self._labels.append(labels.detach().long())
        self._tracks.append(tracks.detach().long())
        self._valid.append(
            valid.detach().bool()
            if valid is not None
            else torch.ones(b, dtype=torch.bool, device=probs.device)
        )
        if windows is None:
            self._windows = None
        elif self._windows is not None:
            self._windows.append(windows.detach().long())

    def __len__(self) -> int:
        return sum(p.shape[0] for p in self._probs)

    def _local(self, num_classes: int | None) -> dict[str, Tensor]:
        if not self._probs:
            k = num_classes or 0
            empty = torch.zeros(0, dtype=torch.long)
            return {
                "probs": torch.zeros(0, k),
                "labels": empty,
                "tracks": empty,
                "valid": torch.zeros(0, dtype=torch.bool),
                "windows": empty if self._windows is not None else None,
            }
        return {
            "probs": torch.cat(self._probs).float().cpu(),
            "labels": torch.cat(self._labels).cpu(),
            "tracks": torch.cat(self._tracks).cpu(),
            "valid": torch.cat(self._valid).cpu(),
            "windows": torch.cat(self._windows).cpu() if self._windows is not None else None,
        }

    def compute(self, num_classes: int | None = None) -> dict[str, Tensor]:
        """Gather (if distributed) and clean. Returns CPU tensors ``probs [W, K]``, ``labels [W]``,
        ``tracks [W]`` of the valid, de-duplicated windows of all ranks, sorted by (track, arrival)."""
        local = self._local(num_classes)
        parts = [local]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
            parts = gathered
        rows: dict[str, list[Tensor]] = {"probs": [], "labels": [], "tracks": [], "windows": [], "rank": []}
        use_windows = all(p["windows"] is not None for p in parts)
        k = max((p["probs"].shape[1] for p in parts if p["probs"].numel()), default=num_classes or 0)
        for rank, p in enumerate(parts):
            keep = p["valid"]
            if not bool(keep.any()):  # no windows, or only padding / unmapped-class windows
                continue
            rows["probs"].append(p["probs"][keep])
            rows["labels"].append(p["labels"][keep])
            rows["tracks"].append(p["tracks"][keep])
            if use_windows:
                rows["windows"].append(p["windows"][keep])
            rows["rank"].append(torch.full((int(keep.sum()),), rank, dtype=torch.long))
        if not rows["probs"]:
            return {"probs": torch.zeros(0, k), "labels": torch.zeros(0, dtype=torch.long),
                    "tracks": torch.zeros(0, dtype=torch.long)}  # fmt: skip
        probs, labels, tracks = (torch.cat(rows[n]) for n in ("probs", "labels", "tracks"))
        rank = torch.cat(rows["rank"])
        arrival = torch.arange(tracks.numel())
        if use_windows:
            windows = torch.cat(rows["windows"])
            keep = _first_occurrence(torch.stack([tracks, windows], dim=1))
        else:
            # a track's windows come from one rank; a track seen on several ranks is kept from the lowest
            owner = torch.full((int(tracks.max()) + 1,), len(parts), dtype=torch.long)
            owner.scatter_reduce_(0, tracks, rank, reduce="amin")
            keep = owner[tracks] == rank
        dropped = int((~keep).sum())
        if dropped:
            logger.info("dropped %d duplicated window(s) gathered from several processes", dropped)
        probs, labels, tracks, arrival = probs[keep], labels[keep], tracks[keep], arrival[keep]
        # stable order: by track, then by arrival (identical whatever the number of processes)
        order = torch.argsort(tracks * (arrival.numel() + 1) + arrival)
        return {"probs": probs[order], "labels": labels[order], "tracks": tracks[order]}


def _first_occurrence(keys: Tensor) -> Tensor:
    """bool ``[W]``: True at the first row of each distinct row of ``keys`` ``[W, D]``."""
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), keys.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(keys.shape[0]), reduce="amin")
    return first[inverse] == torch.arange(keys.shape[0])
