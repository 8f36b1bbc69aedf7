"""The exact solver, ``optim.solver: lbfgs``: a linear head on fixed features fitted once, to the optimum.

For a model whose trainable part is a logistic regression on features that do not change during training --
the ``stats`` backbone with ``hidden: 0`` on a deterministic front end (MFCC / chroma statistics,
``configs/stats.yaml``; the precomputed-embedding front end, ``configs/probe.yaml``) -- 30 epochs of Adam
approximate a convex problem that L-BFGS solves exactly in seconds. :func:`fit_exact`, top to bottom:

1. check that the model qualifies (:func:`linear_model`: the backbone's ``linear_head``, the front end
   cacheable by :func:`engine.feature_cache.uncacheable_reason`, no setting the fit could not honour);
2. compute the pooled features of every *evaluation window* of the training tracks once
   (:func:`engine.train.pooled_fit.pooled_training_set`: the windows, window length and hop that validation and ``evaluate`` score,
   pooled by the backbone's own ``pooled``), through a :class:`~engine.feature_cache.FeatureCache`
   (``cv`` gives every fold one :class:`~engine.feature_cache.FeatureStore`, so each clip's front end runs once);
3. fit scikit-learn's L2 logistic regression (:mod:`engine.linear_fit`; multinomial, or one-vs-rest on a
   multi-label set) with ``optim.solver_c``, or C chosen by inner cross-validation over
   ``np.logspace(-4, 4, optim.solver_cs)``: the inner folds are the shard set's own folds of the training
   tracks when it has them (grouped as ingest grouped them), else ``optim.solver_folds`` stratified folds
   of tracks. Each window weighs 1 / (its track's window count) (times the class weight with
   ``optim.class_weights``), so every track counts once; a track of one window is one sample, as in the
   scikit-learn baselines;
4. write the fit into the head (:meth:`~engine.linear_fit.LogisticFit.load_into`: the standardising
   BatchNorm's running statistics and the classifier), validate through the ordinary evaluation path and
   write the ordinary run directory: ``best.pt`` = ``last.pt``, a history of one row, ``summary.json``,
   ``state/train_state.json`` (a finished fit: ``--resume`` and ``cv`` read it back).

The validation split reports; it picks nothing (there is one fit). Gradient settings (lr, epochs, schedule,
batch size) are ignored.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.config import ConfigError
from engine.distributed import accelerate_precision, make_accelerator
from engine.feature_cache import FeatureCache, FeatureStore, uncacheable_reason
from engine.models import GenreModel, build_model, count_parameters
from engine.tasks import get_task
from engine.train.config import TrainConfig
from engine.train.data import ShardSet, make_loaders, open_shard_set
from engine.train.loop import evaluate_epoch
from engine.train.pooled_fit import pooled_training_set, solve, training_figures
from engine.train.records import RunRecords
from engine.train.state import TrainState, open_run_dir, seed_everything
from shards.format import manifest_task
from shards.outputs import prepare_output_dir

log = logging.getLogger(__name__)

__all__ = ["CachedFrontend", "fit_exact", "linear_model"]

SOLVER = "lbfgs"


def fit_exact(cfg: TrainConfig, feature_cache: str | Path | FeatureStore | None = None) -> dict[str, Any]:
    """Fit ``cfg``'s linear head exactly (see the module docstring); returns :func:`engine.train.train`'s
    summary plus ``features`` (the cache's counts). ``feature_cache``: a directory of front-end features
    shared with other runs on the same shard set, or a :class:`~engine.feature_cache.FeatureStore` (``cv`` passes
    one on ``<out>/feature_cache``, shared by its folds); None: in memory."""
    prepare_output_dir(cfg.run.out_dir or "runs", flag="--out (run.out_dir)" if cfg.run.out_dir else None)
    accelerator = make_accelerator(mixed_precision=accelerate_precision(cfg.run.precision), cpu=cfg.run.cpu)
    if accelerator.num_processes > 1:
        raise ConfigError(
            "optim.solver: lbfgs fits in one process; launch it without torchrun / accelerate launch"
        )
    refuse_unhonoured_settings(cfg)
    cfg, shards = open_shard_set(cfg)
    task = get_task(manifest_task(shards.manifest))
    task.selection(cfg.eval.select_metric)  # a figure this task has (it selects nothing here)
    weight = task.loss_weight(shards.manifest, cfg.data.train_split, shards.labels, cfg.optim)  # [K] or None
    data = make_loaders(cfg, shards, 0, 1)  # the validation batches; checks the window lengths
    model, norm, classifier = linear_model(cfg, shards, accelerator.device)
    run_dir, state_dir = open_run_dir(cfg, accelerator)
    if state_dir is not None:
        return finished_fit(run_dir, state_dir)
    t0 = time.perf_counter()
    cache = FeatureCache(model, feature_cache)
    device = accelerator.device
    train_set = pooled_training_set(
        cfg, shards, task, lambda clips, rows: model.backbone.pooled(cache.features(clips, rows, device)), device
    )
    train_set.counts = cache.counts()
    log.info("lbfgs features: %s", train_set.counts)
    fit = solve(cfg, train_set, weight, len(shards.labels))
    fit.load_into(classifier, norm)
    fit_seconds = time.perf_counter() - t0
    valid_net = CachedFrontend(model, cache)  # the valid windows keyed by content; cv: computed once for all folds
    metrics, extra = evaluate_epoch(valid_net, data.valid_loader, accelerator, shards.labels, weight,
                                    cfg.run.precision, cfg.eval.track_aggregate, task)  # fmt: skip
    row = {"epoch": 0, "step": fit.n_iter, **training_figures(fit, train_set), **metrics, "solver": SOLVER,
           "C": float(fit.c[0]), "train_windows": int(train_set.x.shape[0]), "train_tracks": train_set.tracks,
           "features_computed": train_set.counts["computed"], "fit_seconds": fit_seconds,
           "epoch_seconds": time.perf_counter() - t0}  # fmt: skip
    log.info("lbfgs: C = %g (%d solver iterations), %d windows of %d tracks, fitted in %.1f s | valid loss %.4f %s",
             row["C"], fit.n_iter, row["train_windows"], train_set.tracks, fit_seconds, row["valid_loss"],
             task.log_figures(row))  # fmt: skip
    records = RunRecords(run_dir, cfg, shards, model, count_parameters(model), accelerator, task.checkpoint_extra(),
                         curves=False)  # one row: no curve to draw  # fmt: skip
    state = TrainState(epoch=1, step=fit.n_iter, best_loss=row["valid_loss"], best_epoch=0, history=[row])
    records.epoch_end(0, row, True, state.history, extra)
    (run_dir / "state").mkdir(exist_ok=True)
    (run_dir / "state" / "train_state.json").write_text(json.dumps(state.state_dict()))  # the fit is done
    return {**records.finish(state), "features": train_set.counts}


class CachedFrontend(nn.Module):
    """``model``'s eval-mode forward with its front end served by ``cache``, each window keyed by its content
    (sha1 of the input row): how validation reads the features that every fold of a ``cv`` shares."""

    def __init__(self, model: GenreModel, cache: FeatureCache) -> None:
        super().__init__()
        self.model, self.cache = model, cache

    def forward(self, x: Tensor) -> Tensor:  # wave [B, T] or feats [B, frames, D] -> logits [B, K]
        return self.model.head(self.cache.by_content(x))


def refuse_unhonoured_settings(cfg: TrainConfig) -> None:
    """ConfigError naming every setting the exact fit would silently drop (it fits a plain L2 logistic
    regression: no dropout, mixup, label smoothing, tag weights, or starting weights)."""
    bad = []
    if float(cfg.model.params.get("dropout", 0.0) or 0.0) > 0:
        bad.append("model.params.dropout (0: the fit's only regulariser is C)")
    if cfg.model.augment.mixup_p > 0:
        bad.append("model.augment.mixup_p (0: the fit sees each window as it is)")
    if cfg.optim.label_smoothing > 0:
        bad.append("optim.label_smoothing (0)")
    if cfg.optim.pos_weight != "none":
        bad.append("optim.pos_weight (none)")
    if cfg.run.init_from:
        bad.append("run.init_from (the convex optimum does not depend on a start)")
    if bad:
        raise ConfigError("optim.solver: lbfgs cannot honour " + "; ".join(bad) + "; set them as shown or use "
                          "optim.solver=gradient")  # fmt: skip


def linear_model(
    cfg: TrainConfig, shards: ShardSet, device: torch.device
) -> tuple[GenreModel, nn.BatchNorm1d | None, nn.Linear]:
    """The run's model on ``device`` and the parts an exact fit writes (the backbone's ``linear_head``);
    ConfigError unless the backbone is linear on pooled features and the front end is fixed."""
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model, len(shards.labels), shards.sample_rate, shards.segment_samples).to(device)
    head = getattr(model.backbone, "linear_head", None)
    parts = head() if callable(head) else None
    if parts is None or not callable(getattr(model.backbone, "pooled", None)):
        raise ConfigError(
            f"optim.solver: lbfgs fits a linear head on pooled features; model.arch={cfg.model.arch!r} with these "
            "params has none (use arch: stats with params.hidden: 0, or optim.solver=gradient)"
        )
    reason = uncacheable_reason(model)
    if reason:
        raise ConfigError(
            f"optim.solver: lbfgs needs features that do not change during training, but {reason}"
        )
    return model, parts[0], parts[1]


def finished_fit(run_dir: Path, state_dir: Path) -> dict[str, Any]:
    """The summary of a fit that already finished in ``run_dir`` (``--resume``; ``cv`` resuming a fold)."""
    state = json.loads((state_dir / "train_state.json").read_text())
    if not state.get("history") or state["history"][0].get("solver") != SOLVER:
        raise ConfigError(f"run.resume: {run_dir} holds a gradient run; resume it with optim.solver=gradient")
    summary = json.loads((run_dir / "summary.json").read_text())
    log.info("lbfgs: %s already holds the fit; read back", run_dir)
    return {**summary, "history": state["history"], "features": {"computed": 0}}
