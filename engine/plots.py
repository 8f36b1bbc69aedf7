"""Figures for reports: confusion matrix, training curves, model comparison, tag PR curve and per-tag AUC
(matplotlib, Agg backend).

Every function writes one PNG and returns its path. Figures are sized to stay legible up to ~20
classes / ~10 models; axes are labelled with their units. The Agg backend is selected on a private
figure (``matplotlib.figure.Figure``), never through ``pyplot``, so importing this module does not change
the backend of an interactive session and works without a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "comparison_chart", "comparison_chart_png", "confusion_matrix_png", "pr_curve_png", "tag_auc_png",
    "training_curves_png",
]  # fmt: skip

_DPI = 110


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _annotate(ax: Any, values: np.ndarray, fmt: str, norm: np.ndarray, fontsize: float) -> None:
    """Write each cell's value; white text on dark cells (norm in [0, 1] is the cell's colour level)."""
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(
                j,
                i,
                format(values[i, j], fmt),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if norm[i, j] > 0.55 else "black",
            )


def confusion_matrix_png(
    cm: Sequence[Sequence[int]] | np.ndarray,
    labels: list[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Two panels: the confusion matrix normalised by row (recall per true class, %) and the raw counts.

    Args:
        cm: ``[K, K]`` counts, rows = true class, columns = predicted class.
        labels: the K class names.
        path: output PNG.
        title: figure title (sample count and accuracy are appended).
    """
    counts = np.asarray(cm, dtype=np.int64)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {k} labels")
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)  # (K, K)
    side = max(4.0, 0.55 * k + 2.0)
    fontsize = max(5.0, min(10.0, 120.0 / max(k, 1)))
    fig = Figure(figsize=(2 * side + 1.5, side + 0.8), layout="constrained")
    axes = fig.subplots(1, 2)
    total = int(counts.sum())
    acc = float(np.trace(counts)) / total if total else 0.0
    panels = [
        (axes[0], norm * 100.0, ".0f", norm, "Normalised by true class (% of row)", "% of true class"),
        (axes[1], counts, "d", counts / max(int(counts.max()), 1), "Counts", "count"),
    ]
    for ax, values, fmt, level, title, cbar in panels:
        im = ax.imshow(level, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        _annotate(ax, values, fmt, level, fontsize)
        ax.set_title(title)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=fontsize + 1)
        ax.set_yticklabels(
            [f"{name} (n={int(n)})" for name, n in zip(labels, rows[:, 0])], fontsize=fontsize + 1
        )
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        if fmt == "d":
            peak = max(int(counts.max()), 1)
            steps = np.unique(np.rint(np.linspace(0, peak, min(peak, 4) + 1)).astype(int))  # integer counts
            bar.set_ticks(steps / peak)
            bar.set_ticklabels([str(int(t)) for t in steps])
        else:
            bar.set_ticks(np.linspace(0.0, 1.0, 6))
            bar.set_ticklabels([f"{t * 100:.0f}" for t in np.linspace(0.0, 1.0, 6)])
        bar.set_label(cbar)
    fig.suptitle(f"{title}: {total} samples, accuracy {acc:.1%}")
    return _save(fig, path)


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(float(row.get("epoch", i)))
            ys.append(float(value))
    return xs, ys


def training_curves_png(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train vs validation (segment and track accuracy), plus learning rate.

    ``history``: one dict per epoch with (any of) ``epoch``, ``train_loss``, ``valid_loss``, ``train_acc``,
    ``valid_acc`` (segment level), ``valid_track_acc``, ``lr``. Missing or non-finite values are skipped.
    The best epoch (lowest validation loss) is marked.
    """
    has_lr = any(_series(history, "lr")[1])
    fig = Figure(figsize=(14 if has_lr else 10, 4.2))
    axes = fig.subplots(1, 3 if has_lr else 2)
    ax_loss, ax_acc = axes[0], axes[1]
    for key, label, style in (("train_loss", "train", "-o"), ("valid_loss", "validation", "-s")):
        xs, ys = _series(history, key)
        if xs:
            ax_loss.plot(xs, ys, style, markersize=3, label=label)
    xs, ys = _series(history, "valid_loss")
    if ys:
        best = int(np.argmin(ys))
        ax_loss.axvline(xs[best], color="grey", linestyle=":", linewidth=1)
        ax_loss.annotate(
            f"best epoch {xs[best]:g}",
            (xs[best], ys[best]),
            textcoords="offset points",
            xytext=(5, 8),
            fontsize=8,
        )
    ax_loss.set_title("Loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy (nats)")
    ax_loss.grid(alpha=0.3)
    for key, label, style in (
        ("train_acc", "train (segment)", "-o"),
        ("valid_acc", "validation (segment)", "-s"),
        ("valid_track_acc", "validation (track)", "-^"),
    ):
        xs, ys = _series(history, key)
        if xs:
            ax_acc.plot(xs, [100.0 * y for y in ys], style, markersize=3, label=label)
    ax_acc.set_title("Accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if has_lr:
        ax_lr = axes[2]
        xs, ys = _series(history, "lr")
        ax_lr.plot(xs, ys, "-o", markersize=3, color="tab:purple")
        if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
            ax_lr.set_yscale("log")
        ax_lr.set_title("Learning rate")
        ax_lr.set_xlabel("epoch")
        ax_lr.set_ylabel("learning rate")
        ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


#: (metric key, level, legend label) of the comparison chart's bars.
_COMPARISON_METRICS = (
    ("accuracy", "segment", "accuracy (segment)"),
    ("accuracy", "track", "accuracy (track)"),
    ("macro_precision", "segment", "macro precision (segment)"),
    ("macro_precision", "track", "macro precision (track)"),
    ("macro_recall", "segment", "macro recall (segment)"),
    ("macro_recall", "track", "macro recall (track)"),
    ("macro_f1", "segment", "macro F1 (segment)"),
    ("macro_f1", "track", "macro F1 (track)"),
    ("map", "segment", "mAP (segment)"),  # multi-label rows
    ("map", "track", "mAP (track)"),
    ("roc_auc", "segment", "ROC-AUC (segment)"),
    ("roc_auc", "track", "ROC-AUC (track)"),
)


def _lookup(row: dict[str, Any], metric: str, level: str) -> float | None:
    """``row[level][metric]`` (an evaluation's metrics.json layout) or ``row[f"{level}_{metric}"]`` (flat)."""
    for value in ((row.get(level) or {}).get(metric), row.get(f"{level}_{metric}")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def comparison_chart(rows: list[dict[str, Any]], title: str = "Model comparison") -> Figure:
    """The figure of :func:`comparison_chart_png`, unsaved (one ``Axes``; one bar container per model,
    labelled with the model's name, bar heights in %)."""
    if not rows:
        raise ValueError("comparison_chart_png needs at least one model row")
    names = [str(r.get("model", r.get("name", f"model {i}"))) for i, r in enumerate(rows)]
    groups = [m for m in _COMPARISON_METRICS if any(_lookup(r, m[0], m[1]) is not None for r in rows)]
    if not groups:
        raise ValueError("no comparison metrics (accuracy, macro_precision, ...) found in the rows")
    n_models = len(rows)
    width = 0.8 / n_models
    fig = Figure(figsize=(max(8.0, 1.0 * len(groups) + 0.25 * len(groups) * n_models), 4.8))
    ax = fig.subplots()
    x = np.arange(len(groups))
    cmap = [f"C{i % 10}" for i in range(n_models)]
    for i, (name, row) in enumerate(zip(names, rows)):
        values = [_lookup(row, metric, level) for metric, level, _ in groups]
        xs = [x[g] + (i - (n_models - 1) / 2) * width for g, v in enumerate(values) if v is not None]
        ys = [100.0 * v for v in values if v is not None]
        bars = ax.bar(xs, ys, width=width * 0.95, label=name, color=cmap[i])
        if n_models * len(groups) <= 48:
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1, rotation=90 if n_models > 2 else 0)
    ax.set_xticks(x)
    ax.set_xticklabels([g[2].replace(" (", "\n(") for g in groups], fontsize=9)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 108)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(n_models, 4), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    return fig


def comparison_chart_png(
    rows: list[dict[str, Any]], path: str | Path, title: str = "Model comparison"
) -> Path:
    """Grouped bars, one group per metric, one bar per model: accuracy and macro precision, recall, F1 at
    segment and track level (%).

    ``rows``: one dict per model with ``"model"`` (or ``"name"``) and the metrics either nested like an
    evaluation's metrics.json (``{"segment": {"accuracy": ...}, "track": {...}}``) or flat
    (``"segment_accuracy"``, ``"track_macro_f1"``, ...); a row may mix both, and where it has both for one
    metric the nested value is used. Metrics a row lacks are left out (no bar).
    """
    return _save(comparison_chart(rows, title), path)


def pr_curve_png(
    precision: Sequence[float], recall: Sequence[float], path: str | Path, average_precision: float | None = None,
    title: str = "Precision-recall, all tags pooled (micro average)",
) -> Path:  # fmt: skip
    """The precision-recall curve of the micro-averaged scores (every (track, tag) pair one sample), recall on
    x, precision on y, both in [0, 1]; ``average_precision`` (the micro AP) goes in the legend."""
    fig = Figure(figsize=(5.5, 4.8))
    ax = fig.subplots()
    label = "micro average" + (f" (AP {average_precision:.3f})" if average_precision is not None else "")
    ax.step(list(recall), list(precision), where="post", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def tag_auc_png(per_tag: dict[str, dict[str, Any]], path: str | Path, title: str = "ROC-AUC per tag (tracks)") -> Path:
    """Horizontal bars of each tag's ROC-AUC (a tag without positives or negatives has none and is left out),
    highest first, the chance level 0.5 marked; ``per_tag``: ``{tag: {"roc_auc": ..., "support": ...}}``."""
    rows = [(name, float(m["roc_auc"]), int(m.get("support", 0))) for name, m in per_tag.items()
            if isinstance(m.get("roc_auc"), (int, float)) and math.isfinite(m["roc_auc"])]  # fmt: skip
    rows.sort(key=lambda r: -r[1])
    fig = Figure(figsize=(6.5, max(2.5, 0.22 * len(rows) + 1.2)))
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.barh(y, [r[1] for r in rows], color="C0")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r[0]} ({r[2]})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC-AUC (tag (positive tracks))")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
