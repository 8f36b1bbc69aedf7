"""The training windows as a logistic regression sees them, and its solution: what the exact solver
(:mod:`engine.train.exact`, ``optim.solver: lbfgs``) and the exact head initialisation of a fine-tune
(:mod:`engine.train.prefix`, ``optim.head_init: lbfgs``) share.

:func:`pooled_training_set` takes every *evaluation window* of the training tracks (the windows, window
length and hop that validation and ``evaluate`` score), pooled by a caller's ``pool`` (the backbone's head
input), with its track's target and inner fold; each window weighs 1 / (its track's window count), so every
track counts once. :func:`solve` fits scikit-learn's L2 logistic regression (:mod:`engine.linear_fit`) with
``optim.solver_c``, or C by inner cross-validation (the shard set's own folds of the training tracks when it
has them, else ``optim.solver_folds`` stratified folds of tracks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from engine.config import ConfigError
from engine.feature_cache import ClipKey
from engine.linear_fit import LogisticFit, fit_logistic, fit_logistic_cv, multilabel_strata, stratified_folds
from engine.models.inputs import model_input
from engine.tasks import Task
from engine.train.config import TrainConfig
from engine.train.data import ShardSet
from shards.reader import make_loader
from shards.window_stream import WindowStream
from shards.windows import window_starts

__all__ = ["PATH_TOL", "PooledSet", "Pooler", "inner_folds", "pooled_training_set", "solve", "training_figures"]

PATH_TOL = 1e-4
"""Gradient tolerance of the inner-CV fits along the C grid at least (``LogisticRegressionCV``'s default ``tol``);
the refit with the chosen C solves to ``optim.solver_tol``."""


@dataclass
class PooledSet:
    """The training windows as a logistic regression sees them."""

    x: Tensor  # [W, D] float64: the backbone's pooled features of every window (before its standardisation)
    targets: Tensor  # [W] long labels, or [W, K] float multi-hot
    weight: Tensor  # [W] float64: 1 / windows of the track
    folds: np.ndarray  # [W] inner fold of the window's track
    tracks: int
    counts: dict[str, int] = field(default_factory=dict)  # the FeatureCache's counts


#: ``pool(clips, rows)``: the pooled head input ``[B, D]`` of input rows ``[B, T]`` (``[B, frames, D]``) cut at ``clips``.
Pooler = Callable[[list[ClipKey], Tensor], Tensor]


def pooled_training_set(cfg: TrainConfig, shards: ShardSet, task: Task, pool: Pooler, device: torch.device) -> PooledSet:
    """Every evaluation window of the training tracks (``data.holdout_fold`` excluded), pooled by ``pool`` (under
    ``no_grad``; e.g. the backbone's ``pooled`` of features from a :class:`~engine.feature_cache.FeatureCache`),
    with its track's target and inner fold. ``counts`` is left for the caller (its cache's)."""
    window, hop = shards.eval_samples, shards.hop_samples
    stream = WindowStream(cfg.data.shards, cfg.data.train_split, window_samples=window, hop_samples=hop,
                          batch_size=cfg.data.eval_batch_size, rank=0, world_size=1,
                          holdout_fold=cfg.data.holdout_fold, folds="exclude")  # fmt: skip
    keys, lengths = stream.track_keys(), stream.track_lengths()
    k = len(shards.labels)
    seen: Counter[int] = Counter()  # windows of each track so far (they come in order)
    xs, ys, tracks = [], [], []
    loader = make_loader(stream, num_workers=None if cfg.data.num_workers < 0 else cfg.data.num_workers)
    for batch in tqdm(loader, desc="features", unit="batch", disable=not cfg.run.progress, leave=False):
        ok = batch["valid"].bool()
        rows = model_input(batch)[ok]
        track_ids = batch["track"][ok].tolist()
        clips = []
        for t in track_ids:
            start = int(window_starts(lengths[t], window, hop=hop)[seen[t]])
            clips.append(ClipKey(keys[t], start, window))
            seen[t] += 1
        with torch.no_grad():
            xs.append(pool(clips, rows).to(device).double())
        ys.append(task.targets(batch, k, device)[ok.to(device)])
        tracks += track_ids
    track = torch.tensor(tracks, dtype=torch.long)
    per_track = torch.bincount(track, minlength=len(keys)).double()
    targets = torch.cat(ys)
    targets = targets if task.multi_label else targets.argmax(dim=1)
    folds = inner_folds(stream, targets.cpu(), track, cfg.optim.solver_folds)
    return PooledSet(torch.cat(xs), targets, (1.0 / per_track[track]).to(device), folds, len(seen))


def inner_folds(stream: WindowStream, targets: Tensor, track: Tensor, k: int) -> np.ndarray:
    """Inner fold per window: the shard set's fold of its track when the training tracks span >= 2 folds,
    else ``k`` stratified folds of tracks (:func:`engine.linear_fit.stratified_folds`)."""
    shard_folds = np.asarray(stream.track_folds())
    if (shard_folds >= 0).all() and len(np.unique(shard_folds)) >= 2:
        return shard_folds[track.numpy()]
    first = {}  # one target per track: its first window's
    for w, t in enumerate(track.tolist()):
        first.setdefault(t, w)
    order = sorted(first)
    per_track = targets[[first[t] for t in order]]
    strata = multilabel_strata(per_track) if per_track.dim() == 2 else per_track.numpy()
    k = min(
        k, int(np.unique(strata, return_counts=True)[1].max())
    )  # no more folds than the largest class has tracks
    try:
        fold_of = dict(zip(order, stratified_folds(strata, max(2, k))))
    except ValueError as err:
        raise ConfigError(f"optim.solver_folds={k}: {err}; lower it or give optim.solver_c") from err
    return np.asarray([fold_of[t] for t in track.tolist()])


def solve(
    cfg: TrainConfig, data: PooledSet, class_weight: Tensor | None, num_classes: int, var_eps: float = 0.0
) -> LogisticFit:
    """The L2 logistic regression of ``data``: ``optim.solver_c``, else C by inner cross-validation.
    ``var_eps`` > 0 (with ``optim.solver_c``): standardise as a BatchNorm with that eps (the head of a fine-tune,
    :func:`engine.linear_fit.Standardiser.fit`)."""
    weight = data.weight
    if class_weight is not None and data.targets.dim() == 1:
        weight = weight * class_weight.to(weight)[data.targets]
    multi = data.targets.dim() == 2
    common = {"sample_weight": weight, "num_classes": None if multi else num_classes, "tol": cfg.optim.solver_tol}
    if cfg.optim.solver_c is not None:
        return fit_logistic(data.x, data.targets, cfg.optim.solver_c, var_eps=var_eps, **common)
    path_tol = max(PATH_TOL, cfg.optim.solver_tol)
    scoring = None if cfg.optim.solver_scoring == "auto" else cfg.optim.solver_scoring
    return fit_logistic_cv(data.x, data.targets, cfg.optim.solver_cs, folds=data.folds, path_tol=path_tol,
                           scoring=scoring, **common)  # fmt: skip


def training_figures(fit: LogisticFit, data: PooledSet) -> dict[str, float]:
    """``train_loss`` (weighted mean cross-entropy; multi-label: binary, over tags) and ``train_acc`` (tag
    accuracy multi-label) of the fit on its own windows."""
    p = fit.probabilities(data.x).clamp(1e-15, 1 - 1e-15)
    w = data.weight / data.weight.sum()
    if fit.multilabel:
        y = data.targets.to(p)
        loss = -(y * p.log() + (1 - y) * (1 - p).log()).mean(dim=1)
        hits = ((p > 0.5) == (y > 0.5)).to(p).mean(dim=1)
    else:
        loss = -p.gather(1, data.targets[:, None]).squeeze(1).log()
        hits = (p.argmax(dim=1) == data.targets).to(p)
    return {"train_loss": float((w * loss).sum()), "train_acc": float((w * hits).sum())}
