"""The multi-label side of ``python -m engine evaluate``: which tracks were scored, one row per track, the report.

:func:`engine.evaluate.evaluate_checkpoint` scores a tag model on a multi-label shard set through the same loop as
a genre model (:func:`engine.evaluation_loop.evaluate_stream` with ``task="multilabel"``: every window's sigmoids
and 0/1 tag targets, gathered once across processes); the metrics are :func:`engine.tag_metrics.window_tag_metrics`
(``segment`` = windows, ``track`` = mean of each track's window sigmoids; ``f1_*_tuned`` at the per-tag thresholds
the run chose on its validation split, ``extra["thresholds"]``). This module turns them into files:

- ``metrics.json``: the metrics and the run's facts;
- ``report.md``: headline (segment vs track), the per-tag table (ROC-AUC, AP, support, F1 at 0.5 and at the
  tuned threshold), the best and worst tags by AP, notes;
- ``predictions.csv``: ``key, path, true_tags, predicted_tags, windows, p_<tag>...`` (tags joined by ``;``;
  predicted: score >= the tag's threshold, 0.5 without thresholds);
- ``pr_curve.png`` (micro-averaged precision-recall of the tracks) and ``tag_auc.png`` (ROC-AUC per tag).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.evaluation_loop import WindowResults
from engine.report import jsonable, pct, print_summary_tail, run_lines, table_lines
from engine.tag_metrics import micro_pr_curve, pool_by_track

logger = logging.getLogger(__name__)

__all__ = ["TagCoverage", "print_tag_summary", "tag_coverage", "tag_predictions", "write_tag_evaluation"]

#: How many tags the report lists as best and worst (by average precision).
EXTREMES = 5


@dataclass
class TagCoverage:
    """Which tracks of the split were evaluated, and the per-track results (the fields evaluate's facts read)."""

    keys: list[str]  # every track of the stream, by track index
    unmapped: dict[str, int]  # shard tags without a model tag -> their tracks in the split
    expected: set[int]  # every track of the split (a track without a mapped tag is a negative of every tag)
    missing: list[int]  # expected tracks without a readable window
    unreadable: int  # tracks the manifest lists that the scan could not read
    track_ids: Tensor  # (N,) evaluated tracks, sorted
    track_probs: Tensor  # (N, K) mean window sigmoid
    track_targets: Tensor  # (N, K) 0/1 model-tag targets
    windows: Tensor  # (N,) windows per evaluated track


def tag_coverage(
    stream: Any, shard_labels: list[str], index: list[int], result: WindowResults, manifest: dict[str, Any],
    split: str, fold: int | None,
) -> TagCoverage:  # fmt: skip
    """Per-track results of ``result`` and what could not be evaluated (logged); ``index``: shard tag -> model tag."""
    keys = stream.track_keys()
    k = result.probs.shape[1] if result.probs.ndim == 2 else 0
    track_ids, probs, targets = pool_by_track(result.probs.reshape(-1, k), result.tracks, result.labels.reshape(-1, k))
    windows = torch.bincount(torch.searchsorted(track_ids, result.tracks), minlength=track_ids.numel())
    per_label = manifest["splits"][split].get("per_label", {})  # tracks per tag in the whole split
    unmapped = {name: int(per_label.get(name, 0)) for i, name in enumerate(shard_labels) if index[i] < 0}
    expected = set(range(len(keys)))
    missing = sorted(expected - set(track_ids.tolist()))
    if missing:
        logger.error("%d of %d tracks produced no readable window and are not in the metrics (e.g. %s)",
                     len(missing), len(expected), ", ".join(keys[t] for t in missing[:5]))  # fmt: skip
    if unmapped:
        logger.warning("unmapped tags: %s (not evaluated)", ", ".join(unmapped))
    unreadable = 0
    if fold is None:
        unreadable = max(0, int(manifest["splits"][split].get("tracks", len(keys))) - len(keys))
        if unreadable:
            logger.error("%d tracks of the manifest's %s split are unreadable and not evaluated", unreadable, split)
    return TagCoverage(keys, unmapped, expected, missing, unreadable, track_ids, probs, targets, windows)


def tag_predictions(
    stream: Any, coverage: TagCoverage, labels: list[str], thresholds: list[float] | None
) -> list[dict[str, Any]]:
    """One row per evaluated track: ``key``, ``path``, ``true_tags``, ``predicted_tags`` (score >= threshold),
    ``windows``, ``probs`` ``[K]`` and ``targets`` ``[K]``."""
    paths = dict(zip(coverage.keys, stream.track_paths()))
    thr = torch.tensor(thresholds if thresholds is not None else [0.5] * len(labels), dtype=torch.float64)
    rows = []
    for row, t in enumerate(coverage.track_ids.tolist()):
        p, y = coverage.track_probs[row], coverage.track_targets[row]
        key = coverage.keys[t]
        rows.append({
            "key": key, "path": paths.get(key, ""),
            "true_tags": [labels[j] for j in torch.nonzero(y > 0).flatten().tolist()],
            "predicted_tags": [labels[j] for j in torch.nonzero(p.double() >= thr).flatten().tolist()],
            "windows": int(coverage.windows[row]), "probs": p.tolist(), "targets": y.tolist(),
        })  # fmt: skip
    return rows


def write_tag_predictions_csv(path: Path, predictions: list[dict[str, Any]], labels: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "path", "true_tags", "predicted_tags", "windows", *[f"p_{n}" for n in labels]])
        for p in predictions:
            w.writerow([p["key"], p["path"], ";".join(p["true_tags"]), ";".join(p["predicted_tags"]), p["windows"],
                        *[f"{float(x):.6f}" for x in p["probs"]]])  # fmt: skip
    return path


def write_tag_evaluation(
    out_dir: str | Path, metrics: dict[str, Any], predictions: list[dict[str, Any]], labels: list[str],
    plots: bool = True,
) -> dict[str, Path]:  # fmt: skip
    """Write metrics.json, report.md, predictions.csv and, with ``plots``, pr_curve.png and tag_auc.png into
    ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("metrics.json", "report.md", "predictions.csv")}
    paths["metrics.json"].write_text(json.dumps(jsonable(metrics), indent=2, allow_nan=False) + "\n")
    write_tag_predictions_csv(paths["predictions.csv"], predictions, labels)
    if plots:
        paths.update(_tag_plots(out, metrics, predictions, labels))
    paths["report.md"].write_text(tag_markdown_report(metrics, labels, plots), encoding="utf-8")
    return paths


def _tag_plots(
    out: Path, metrics: dict[str, Any], predictions: list[dict[str, Any]], labels: list[str]
) -> dict[str, Path]:
    """pr_curve.png (micro-averaged precision-recall of the tracks) and tag_auc.png (ROC-AUC per tag)."""
    from engine.plots import pr_curve_png, tag_auc_png

    paths = {}
    k = len(labels)
    scores = torch.tensor([p["probs"] for p in predictions], dtype=torch.float64).reshape(-1, k)
    targets = torch.tensor([p["targets"] for p in predictions], dtype=torch.float64).reshape(-1, k)
    precision, recall = micro_pr_curve(scores, targets)
    paths["pr_curve.png"] = pr_curve_png(precision, recall, out / "pr_curve.png",
                                         metrics["track"].get("pr_auc_micro"))  # fmt: skip
    paths["tag_auc.png"] = tag_auc_png(metrics["track"].get("per_tag", {}), out / "tag_auc.png")
    return paths


_HEADLINE = (
    ("map", "mAP (macro average precision)"),
    ("roc_auc", "macro ROC-AUC"),
    ("pr_auc_micro", "micro average precision"),
    ("roc_auc_micro", "micro ROC-AUC"),
    ("f1_macro", "macro F1 @ 0.5"),
    ("f1_micro", "micro F1 @ 0.5"),
    ("f1_macro_tuned", "macro F1 @ tuned thresholds"),
    ("f1_micro_tuned", "micro F1 @ tuned thresholds"),
)


def tag_markdown_report(metrics: dict[str, Any], labels: list[str], plots: bool = True) -> str:
    """The report.md text of a multi-label evaluation (naming its plots when ``plots``)."""
    seg, trk = metrics.get("segment", {}), metrics.get("track", {})
    lines = run_lines(metrics) + ["## Headline", ""]
    lines += table_lines(
        ["metric", "segment (per window)", "track (mean of window sigmoids)"],
        [[label, pct(seg.get(k)), pct(trk.get(k))] for k, label in _HEADLINE if k in trk]
        + [["samples", seg.get("n", 0), trk.get("n", 0)]],
    )
    lines += ["", "Macro averages are over the tags with both positive and negative tracks "
              f"({trk.get('tags_left_out', 0)} left out: {', '.join(trk.get('tags_left_out_names') or []) or 'none'}). "
              "Tuned thresholds were chosen per tag on the validation split (the checkpoint's `extra.thresholds`).", ""]  # fmt: skip
    per_tag = trk.get("per_tag", {})
    lines += ["## Per tag (track level)", ""]
    lines += table_lines(
        ["tag", "tracks", "ROC-AUC", "AP", "F1 @ 0.5", "threshold", "F1 @ threshold"],
        [[name, m.get("support", 0), _num(m.get("roc_auc")), _num(m.get("ap")), _num(m.get("f1")),
          _num(m.get("threshold")), _num(m.get("f1_tuned"))] for name, m in per_tag.items()],  # fmt: skip
    )
    ranked = sorted((m["ap"], name) for name, m in per_tag.items() if _finite(m.get("ap")))
    if ranked:
        lines += ["", f"Best tags by AP: {', '.join(f'{n} ({a:.3f})' for a, n in reversed(ranked[-EXTREMES:]))}.",
                  f"Worst tags by AP: {', '.join(f'{n} ({a:.3f})' for a, n in ranked[:EXTREMES])}."]  # fmt: skip
    if plots:
        lines += ["", "![precision-recall](pr_curve.png)", "", "![ROC-AUC per tag](tag_auc.png)", ""]
    notes = []
    if metrics.get("unmapped_classes"):
        notes.append(f"- unmapped shard tags: {', '.join(metrics['unmapped_classes'])}")
    if metrics.get("model_classes_absent"):
        notes.append(f"- model tags absent from the shards: {', '.join(metrics['model_classes_absent'])}")
    if metrics.get("tracks_missing"):
        notes.append(f"- {len(metrics['tracks_missing'])} tracks gave no readable window")
    if metrics.get("tracks_unreadable"):
        notes.append(f"- {metrics['tracks_unreadable']} tracks listed in the manifest could not be read")
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines) + "\n"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _num(x: Any) -> str:
    return f"{x:.3f}" if _finite(x) else "n/a"


def print_tag_summary(metrics: dict[str, Any], out: Path | None) -> None:
    """The console summary of a multi-label evaluation (``python -m engine evaluate``)."""
    seg, trk = metrics["segment"], metrics["track"]
    print(f"{metrics['split']}: {trk['n']} tracks, {seg['n']} windows of {metrics['segment_seconds']:.2f} s, "
          f"{trk['num_tags']} tags ({metrics['world_size']} process{'es' if metrics['world_size'] > 1 else ''})")  # fmt: skip
    print(f"{'':28}{'segment':>10}{'track':>10}")
    for key, name in _HEADLINE:
        if key in trk:
            print(f"{name:<28}{_num(seg.get(key)):>10}{_num(trk.get(key)):>10}")
    print_summary_tail(metrics, out)
