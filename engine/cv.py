"""K-fold cross-validation over a shard set's fold assignment.

``python -m engine cv --config configs/crnn.yaml --shards DIR [--folds K] --out DIR [key=value ...]``

Fold ``k``: train on the training split's tracks of every other fold (early stopping on the validation
split, as in a normal run), then evaluate the best checkpoint on the training split's fold ``k``. The
folds were assigned at ingest (``make_shards.py --folds K``, track- or artist-grouped), so no track or
artist crosses from training into its test fold. Resumable fold by fold: a finished fold is read back,
an interrupted one resumes from its saved state. With ``optim.solver: lbfgs`` the front-end features of every
training clip are computed once for all folds (``<out>/feature_cache``, :class:`engine.feature_cache.FeatureCache`;
``features_computed`` per fold counts the clips computed in that fold). Written: ``cv.json`` and ``cv.md`` (with
the confusion matrix of the held-out folds' track predictions pooled, genre sets), and per fold its run and ``eval/``
(metrics, report, predictions; no plots).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.logging import get_logger

from engine.checkpoint_format import CheckpointError
from engine.config import ConfigError
from engine.feature_cache import FeatureStore
from engine.train import TrainConfig, config_from_args, print_config, saved_state_dir, train
from shards.format import ManifestError, load_manifest
from shards.outputs import cli_errors, prepare_output_dir
from shards.window_stream import WindowStream

logger = get_logger(__name__)

# metrics.json levels -> flat prefixes; the two track aggregates (mean_prob, the headline, and mean_logprob)
# both appear, whichever of them ``track`` holds
METRIC_LEVELS = ("segment", "track", "track_mean_prob", "track_mean_logprob", "track_vote")


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``{"segment": {"accuracy": ..}, "track": {..}, "track_mean_logprob": {..}}`` -> ``{"segment_accuracy":
    .., "track_mean_logprob_accuracy": .., ...}`` (scalars only, every level of :data:`METRIC_LEVELS`)."""
    flat: dict[str, float] = {}
    for level in METRIC_LEVELS:
        for k, v in (metrics.get(level) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("n", "support"):
                flat[f"{level}_{k}"] = float(v)
    return flat


def evaluate_best(
    cfg: TrainConfig, checkpoint: str | Path, split: str, out: str | Path | None, fold: int | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """:func:`engine.evaluate.evaluate_checkpoint` with the run's own evaluation settings (window hop,
    eval batch size, DataLoader workers, precision, progress bar), as validation used them in training;
    ``out`` None: the metrics only, no report folder."""
    from engine.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(
        checkpoint,
        cfg.data.shards,
        split=split,
        out=out,
        batch_size=cfg.data.eval_batch_size,
        hop_seconds=cfg.data.eval_hop_seconds,
        num_workers=None if cfg.data.num_workers < 0 else cfg.data.num_workers,
        precision=cfg.run.precision,
        fold=fold,
        progress=cfg.run.progress,
        plots=plots,
    )


def mean_std(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = [k for k in rows[0] if all(k in r for r in rows)] if rows else []
    return {
        k: {"mean": statistics.fmean(r[k] for r in rows), "std": statistics.pstdev([r[k] for r in rows]) if len(rows) > 1 else 0.0}
        for k in keys
    }


def check_folds(cfg: TrainConfig, folds: int | None = None) -> int:
    """The number of folds to run, checked before any work: ``folds`` (``--folds``; None: the shard set's) must
    be the shard set's fold count K >= 2, and every fold must hold tracks of the training split (each fold's
    model trains on the others and is tested on it). Raises :class:`ConfigError` naming the fix."""
    manifest = load_manifest(cfg.data.shards)
    k_available = int(manifest.get("folds") or 0)
    remake = "python tools/make_shards.py SOURCE --out DIR --folds K"
    if folds is not None and folds < 2:
        raise ConfigError(
            f"--folds {folds}: cross-validation needs K >= 2 folds; leave --folds out to use the shard set's "
            f"({k_available or 'none'})"
        )
    if k_available < 2:
        raise ConfigError(
            f"{cfg.data.shards} has no fold assignment; make the shards with --folds K (K >= 2): `{remake}`"
        )
    if folds is not None and folds != k_available:
        raise ConfigError(
            f"--folds {folds} but the shard set was made with {k_available} folds; leave --folds out or remake "
            f"the shards (`{remake}`)"
        )
    if cfg.data.train_split not in manifest["splits"]:
        raise ConfigError(
            f"{cfg.data.shards}: no {cfg.data.train_split!r} split (has {sorted(manifest['splits'])}); set data.train_split"
        )
    tracks = int(manifest["splits"][cfg.data.train_split]["tracks"])
    if tracks < k_available:
        raise ConfigError(
            f"{cfg.data.shards}: {k_available} folds but split {cfg.data.train_split!r} holds {tracks} tracks, so some "
            f"folds are empty; remake the shards with at most {tracks} folds (`{remake}`)"
        )
    stream = WindowStream(cfg.data.shards, cfg.data.train_split, window_samples=1, batch_size=1)
    per_fold = Counter(stream.track_folds())
    empty = [f for f in range(k_available) if not per_fold.get(f)]
    if empty:
        raise ConfigError(
            f"{cfg.data.shards}: fold(s) {', '.join(map(str, empty))} of {k_available} hold no track of split "
            f"{cfg.data.train_split!r} (more folds than groups of tracks); remake the shards with fewer folds "
            f"(`{remake}`)"
        )
    return k_available


def fold_feature_store(cfg: TrainConfig, out_dir: Path) -> FeatureStore | None:
    """What the folds share: fixed front-end features (``optim.solver: lbfgs``) and a frozen prefix's outputs
    (``optim.cache_frozen_prefix``), computed once for every fold, in memory; the features of audio also on disk
    under ``<out>/feature_cache`` (an interrupted cv resumes without recomputing them). Embeddings and other
    feature shards stay in memory only: their front end is a reshape of data already on disk, cheaper to redo
    than to write and read back. None: nothing to share (gradient training without a cached prefix)."""
    if cfg.optim.cache_frozen_prefix:
        return FeatureStore()
    if cfg.optim.solver != "lbfgs":
        return None
    audio = load_manifest(cfg.data.shards).get("kind") != "features"
    return FeatureStore(out_dir / "feature_cache" if audio else None)


def cross_validate(cfg: TrainConfig, out_dir: str | Path, folds: int | None = None) -> dict[str, Any]:
    """Train and evaluate one model per fold; returns ``{folds: [...], summary: {metric: {mean, std}},
    train_seconds_total, confusion_matrix}`` (the last: :func:`pooled_confusion`, genre sets). Each fold's row
    has its test metrics (flat, :func:`flatten_metrics`), ``best_epoch``,
    ``parameters`` and ``train_seconds`` (wall seconds of ``train`` for that fold, validation included; a fold
    resumed after an interruption counts only the resumed part). std is the population std over folds."""
    k = check_folds(cfg, folds)
    out_dir = prepare_output_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = fold_feature_store(cfg, out_dir)
    rows = []
    for fold in range(k):
        fold_dir = out_dir / f"fold{fold}"
        done = fold_dir / "test_metrics.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            continue
        run_dir = fold_dir / "run"
        resume = saved_state_dir(run_dir) is not None
        fold_cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, holdout_fold=fold),
            run=dataclasses.replace(cfg.run, out_dir=str(run_dir), resume=resume),
        )
        t0 = time.perf_counter()
        summary = train(fold_cfg, feature_cache=cache)
        train_seconds = time.perf_counter() - t0
        # no PNGs (a second of matplotlib each, against a fit of a fraction of one): the folds' confusion matrices
        # are pooled into cv.json / cv.md below
        metrics = evaluate_best(cfg, summary["best_checkpoint"], cfg.data.train_split, fold_dir / "eval", fold, plots=False)
        row = {
            "fold": fold,
            **flatten_metrics(metrics),
            "best_epoch": summary["best_epoch"],
            "parameters": summary["parameters"],
            "train_seconds": train_seconds,
        }
        if "features" in summary:  # clips whose front end ran in this fold (the rest came from the cache)
            row["features_computed"] = summary["features"]["computed"]
        fold_dir.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(row, indent=2))
        rows.append(row)
        headline = "track_accuracy" if "track_accuracy" in row else "track_map"  # genres; tags (multi-label)
        logger.info(
            f"fold {fold + 1}/{k}: {headline.replace('_', ' ')} {100 * row.get(headline, float('nan')):.1f}% "
            f"(best epoch {row['best_epoch']}), trained in {train_seconds:.0f} s",
            main_process_only=True,
        )
    result = {
        "folds": rows,
        "summary": mean_std([{k: v for k, v in r.items() if k != "fold"} for r in rows]),
        "train_seconds_total": sum(r.get("train_seconds", 0.0) for r in rows),
    }
    pooled = pooled_confusion(out_dir, k)
    if pooled is not None:  # a table in cv.md, not a PNG: matplotlib would double a probe's cv wall time
        result["confusion_matrix"] = pooled
    (out_dir / "cv.json").write_text(json.dumps(result, indent=2))
    (out_dir / "cv.md").write_text(cv_markdown(result))
    return result


def pooled_confusion(out_dir: Path, k: int) -> dict[str, Any] | None:
    """``{"labels", "counts"}``: the track-level confusion matrices of the K held-out folds summed (rows = true
    class; every training-split track once, predicted by the model that did not train on it); None for a tag
    set (no confusion matrix)."""
    total, labels = None, None
    for fold in range(k):
        track = json.loads((out_dir / f"fold{fold}" / "eval" / "metrics.json").read_text()).get("track", {})
        if "confusion_matrix" not in track:  # multi-label
            return None
        cm = np.asarray(track["confusion_matrix"], dtype=np.int64)  # (K, K)
        total = cm if total is None else total + cm
        labels = list(track["per_class"])
    return {"labels": labels, "counts": total.tolist()}


CV_COLUMNS = (
    "segment_accuracy", "segment_macro_f1", "track_accuracy", "track_macro_f1",
    "track_mean_prob_accuracy", "track_mean_logprob_accuracy",
    "track_map", "track_roc_auc", "segment_map", "segment_roc_auc",  # multi-label sets (macro over tags)
)  # fmt: skip


def cv_markdown(result: dict[str, Any]) -> str:
    """Per-fold rows and the mean ± std row; ``track_*`` is the run's ``eval.track_aggregate``, the
    ``track_mean_prob_*`` / ``track_mean_logprob_*`` columns are each aggregate; ``train s`` per fold; then the
    pooled confusion matrix (genre sets)."""
    s = result["summary"]
    cols = [c for c in CV_COLUMNS if c in s]
    timed = "train_seconds" in s
    head = cols + (["train s"] if timed else [])
    lines = ["# Cross-validation", "", "| fold | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for r in result["folds"]:
        cells = [f"{100 * r[c]:.1f}%" for c in cols] + ([f"{r['train_seconds']:.0f}"] if timed else [])
        lines.append(f"| {r['fold']} | " + " | ".join(cells) + " |")
    cells = [f"**{100 * s[c]['mean']:.1f} ± {100 * s[c]['std']:.1f}%**" for c in cols]
    if timed:
        cells.append(f"**{s['train_seconds']['mean']:.0f} ± {s['train_seconds']['std']:.0f}** (total {result['train_seconds_total']:.0f})")
    lines.append("| **mean ± std** | " + " | ".join(cells) + " |")
    pooled = result.get("confusion_matrix")
    if pooled:
        from engine.report import table_lines

        lines += ["", f"## Confusion matrix (tracks of the {len(result['folds'])} held-out folds; rows = true, "
                  "columns = predicted)", ""]  # fmt: skip
        lines += table_lines(["true \\ predicted", *pooled["labels"]],
                             [[name, *row] for name, row in zip(pooled["labels"], pooled["counts"])])  # fmt: skip
    return "\n".join(lines) + "\n"


@cli_errors("python -m engine cv")
def main(argv: list[str] | None = None) -> int:
    from engine.train import build_parser

    parser = build_parser()
    parser.prog = "python -m engine cv"
    parser.description = "K-fold cross-validation: one model per fold, mean ± std of every metric. " + (parser.description or "")
    parser.add_argument("--folds", type=int, help="number of folds (must match the shard set's; default: the shard set's)")
    args = parser.parse_intermixed_args(argv)  # key=value overrides before and after options
    if args.print_config:  # the config every fold trains with (run.out_dir aside), then exit
        return print_config(args)
    if not args.out:
        parser.error("--out DIR is required (fold runs and cv.json/cv.md go there)")
    out = args.out
    args.out = None  # each fold gets its own run directory under --out
    try:
        cfg = config_from_args(args)
        result = cross_validate(cfg, out, args.folds)
    except (ConfigError, CheckpointError, ManifestError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(cv_markdown(result))
    print(f"results: {Path(out) / 'cv.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
