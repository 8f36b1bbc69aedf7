"""Evaluation report files: metrics.json, report.md, confusion_matrix.png, predictions.csv.

Layout of ``metrics`` (what :func:`engine.evaluate.evaluate_checkpoint` produces)::

    {"segment": classification_metrics(...), "track": classification_metrics(...),
     "track_vote": {"accuracy", "n"}, ...run information (checkpoint, shards, split, world_size,
     unmapped_classes, model_classes_absent, ...)}

``predictions``: one dict per evaluated track with ``key``, ``path``, ``true_label``, ``predicted_label``
(argmax of the mean window probability), ``vote_label`` (majority vote of windows, optional),
``windows`` (number of windows, optional) and ``probs`` (``[K]`` mean window probabilities in
``label_names`` order).

The report folder is evaluate's own: :func:`check_evaluation_dir` (called before any work) refuses a folder
where a file with one of :data:`EVALUATION_FILES`' names exists that an evaluation did not write (no
``metrics.json`` of an evaluation beside it); every other file in the folder is left alone. ``metrics.json``
is written first and ``report.md`` last, each whole or not at all (a temporary file renamed).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from shards.outputs import prepare_output_dir, prepare_output_file
from shards.resumable import atomic_write_text

__all__ = [
    "EVALUATION_FILES", "check_evaluation_dir", "jsonable", "markdown_report", "pct", "print_summary_tail", "run_lines",
    "table_lines", "write_evaluation",
]  # fmt: skip

#: the files :func:`write_evaluation` writes into its folder (and replaces on a rerun)
EVALUATION_FILES = ("metrics.json", "report.md", "confusion_matrix.png", "confusion_matrix_segment.png",
                    "predictions.csv")  # fmt: skip


def _is_evaluation_metrics(path: Path) -> bool:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"segment", "track", "checkpoint", "split"} <= set(data)


def check_evaluation_dir(out_dir: str | Path, *, flag: str | None = "--out") -> Path:
    """Refuse (:class:`shards.outputs.OutputError`, nothing created) a report folder :func:`write_evaluation`
    may not write: a file in its place, a folder that cannot be written, or one that holds a file named
    like a report file (:data:`EVALUATION_FILES`) that no evaluation wrote -- the folder's ``metrics.json``
    is not an evaluation's. A missing folder is created when the report is written."""
    out = prepare_output_dir(out_dir, flag=flag)
    ours = _is_evaluation_metrics(out / "metrics.json")
    for name in EVALUATION_FILES:
        path = out / name
        if os.path.lexists(path):
            prepare_output_file(
                path, flag=flag, replace=ours,
                replace_hint="it was not written by evaluate (no evaluation's metrics.json beside it): "
                "choose another --out, or move the file away",
            )  # fmt: skip
    return out

_HEADLINE = (  # macro F1 first: the honest figure on imbalanced sets (MSD genres)
    ("macro_f1", "macro F1"),
    ("accuracy", "accuracy"),
    ("top2_accuracy", "top-2 accuracy"),
    ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"),
    ("weighted_precision", "weighted precision"),
    ("weighted_recall", "weighted recall"),
    ("weighted_f1", "weighted F1"),
)


def pct(x: Any) -> str:
    """A fraction as a percentage with two decimals; ``n/a`` for anything not a finite number."""
    return f"{100.0 * x:.2f}%" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_lines(header: list[str], rows: list[list[Any]], align: list[str] | None = None) -> list[str]:
    """A markdown table's lines (first column left-aligned, the rest right-aligned unless ``align``)."""
    align = align or ["---"] + ["--:"] * (len(header) - 1)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def markdown_report(
    metrics: dict[str, Any], label_names: list[str], predictions: list[dict[str, Any]], plots: bool = True
) -> str:
    """The report.md text: headline (segment vs track), per-class table, confusion matrix (with its figure when
    ``plots``), notes."""
    lines = run_lines(metrics)
    lines += _headline_lines(metrics)
    lines += _per_class_lines(metrics, label_names)
    if plots:
        lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    lines += _notes_lines(metrics)
    lines += _misclassified_lines(predictions, label_names)
    return "\n".join(lines) + "\n"


def run_lines(metrics: dict[str, Any]) -> list[str]:
    """The title and what was evaluated (shards, split, rate, window, processes, ...)."""
    title = "Evaluation"
    if metrics.get("checkpoint"):
        title += f" of `{metrics['checkpoint']}`"
    lines = [f"# {title}", ""]
    info = []
    for key, label in (
        ("shards", "shards"),
        ("split", "split"),
        ("sample_rate", "sample rate (Hz)"),
        ("segment_seconds", "window (s)"),
        ("hop_seconds", "hop (s)"),
        ("world_size", "processes"),
        ("precision", "precision"),
        ("seconds", "wall time (s)"),
    ):
        if metrics.get(key) is not None:
            value = metrics[key]
            info.append(f"- {label}: {f'{value:.1f}' if key == 'seconds' else value}")
    lines += info + ([""] if info else [])

    return lines


def _headline_lines(metrics: dict[str, Any]) -> list[str]:
    """Segment vs track headline metrics, with the note on macro averages."""
    seg, trk = metrics.get("segment", {}), metrics.get("track", {})
    lines: list[str] = []
    lines += ["## Headline", ""]
    lines += table_lines(
        ["metric", "segment (per window)", "track (mean of windows)"],
        [[label, pct(seg.get(k)), pct(trk.get(k))] for k, label in _HEADLINE]
        + [["samples", seg.get("n", 0), trk.get("n", 0)]],
    )
    if "track_vote" in metrics:
        lines += [
            "",
            f"Track accuracy by majority vote of windows: {pct(metrics['track_vote'].get('accuracy'))}.",
        ]
    lines += [
        "",
        "Macro averages are over the classes present in the evaluated truth (support > 0); "
        "classes with no evaluated tracks are listed per class with support 0 (a macro average over all the model's "
        "classes would also count classes that are only predicted, with precision and recall 0).",
        "",
    ]

    return lines


def _per_class_lines(metrics: dict[str, Any], label_names: list[str]) -> list[str]:
    """The per-class table (track level, segment F1 beside) and the track confusion matrix."""
    seg, trk = metrics.get("segment", {}), metrics.get("track", {})
    lines: list[str] = []
    lines += ["## Per class (track level; segment F1 alongside)", ""]
    rows = []
    for name in label_names:
        t = trk.get("per_class", {}).get(name, {})
        s = seg.get("per_class", {}).get(name, {})
        rows.append(
            [
                name,
                t.get("support", 0),
                pct(t.get("precision")),
                pct(t.get("recall")),
                pct(t.get("f1")),
                s.get("support", 0),
                pct(s.get("f1")),
            ]
        )
    lines += table_lines(
        ["class", "tracks", "precision", "recall", "F1", "windows", "segment F1"],
        rows,
    )
    lines += ["", "## Confusion matrix (tracks; rows = true, columns = predicted)", ""]
    cm = trk.get("confusion_matrix") or [[0] * len(label_names) for _ in label_names]
    lines += table_lines(
        ["true \\ predicted", *label_names],
        [[name, *row] for name, row in zip(label_names, cm)],
    )
    return lines


def _notes_lines(metrics: dict[str, Any]) -> list[str]:
    """Unmapped or absent classes, tracks without a readable window, the label map; nothing if none."""
    lines: list[str] = []
    notes = []
    unmapped = metrics.get("unmapped_classes") or {}
    if unmapped:
        n = sum(int(v) for v in unmapped.values())
        listed = ", ".join(f"{k} ({v})" for k, v in unmapped.items())
        notes.append(f"- unmapped classes: {listed} ({n} tracks not evaluated)")
    absent = metrics.get("model_classes_absent") or []
    if absent:
        notes.append(f"- model classes absent from the shards: {', '.join(absent)}")
    missing = metrics.get("tracks_missing") or []
    if missing:
        notes.append(f"- {len(missing)} tracks gave no readable window: {', '.join(map(str, missing[:20]))}")
    if metrics.get("tracks_unreadable"):
        notes.append(f"- {metrics['tracks_unreadable']} tracks listed in the manifest could not be read")
    if metrics.get("label_map"):
        mapped = ", ".join(f"{k} -> {v}" for k, v in metrics["label_map"].items() if k != v)
        if mapped:
            notes.append(f"- label map (shard -> model): {mapped}")
    if notes:
        lines += ["## Notes", "", *notes, ""]

    return lines


def _misclassified_lines(predictions: list[dict[str, Any]], label_names: list[str]) -> list[str]:
    """The misclassified tracks (first 50), or "None."."""
    lines: list[str] = []
    wrong = [p for p in predictions if not p.get("correct", p.get("true_label") == p.get("predicted_label"))]
    lines += [f"## Misclassified tracks ({len(wrong)} of {len(predictions)})", ""]
    if wrong:
        shown = wrong[:50]
        lines += table_lines(
            ["key", "path", "true", "predicted", "p(true)", "p(predicted)"],
            [
                [
                    p.get("key", ""),
                    p.get("path", ""),
                    p.get("true_label", ""),
                    p.get("predicted_label", ""),
                    _prob(p, label_names, p.get("true_label")),
                    _prob(p, label_names, p.get("predicted_label")),
                ]
                for p in shown
            ],
            ["---", "---", "---", "---", "--:", "--:"],
        )
        if len(wrong) > len(shown):
            lines.append(f"\n... {len(wrong) - len(shown)} more: see predictions.csv (column `correct`).")
    else:
        lines.append("None.")
    return lines


def _prob(pred: dict[str, Any], label_names: list[str], name: Any) -> str:
    probs = pred.get("probs")
    if probs is None or name not in label_names:
        return ""
    return f"{float(probs[label_names.index(name)]):.3f}"


def jsonable(obj: Any) -> Any:
    """``obj`` with tensors/NumPy values as plain numbers and lists, non-finite floats as None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return jsonable(obj.tolist())
    return obj


def write_predictions_csv(path: Path, predictions: list[dict[str, Any]], label_names: list[str]) -> Path:
    """One row per track: key, path, true/predicted label, correct, top-2 hit, vote, windows, p_<class>...

    Written to ``<path>.tmp`` and renamed: the file is whole or absent."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_predictions(tmp, predictions, label_names)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_predictions(path: Path, predictions: list[dict[str, Any]], label_names: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "key",
                "path",
                "true_label",
                "predicted_label",
                "correct",
                "top2_correct",
                "vote_label",
                "windows",
                *[f"p_{n}" for n in label_names],
            ]
        )
        for p in predictions:
            probs = list(p.get("probs") or [])
            if probs and len(probs) != len(label_names):
                raise ValueError(
                    f"track {p.get('key')}: {len(probs)} probabilities for {len(label_names)} labels"
                )
            true, pred = p.get("true_label"), p.get("predicted_label")
            correct = p.get("correct", true == pred)
            top2 = p.get("top2_correct")
            if top2 is None and probs and true in label_names:
                order = sorted(range(len(probs)), key=lambda i: -probs[i])[:2]
                top2 = label_names.index(true) in order
            w.writerow(
                [
                    p.get("key", ""),
                    p.get("path", ""),
                    true,
                    pred,
                    int(bool(correct)),
                    "" if top2 is None else int(bool(top2)),
                    p.get("vote_label", ""),
                    p.get("windows", ""),
                    *[f"{float(x):.6f}" for x in probs],
                ]
            )


def write_evaluation(
    out_dir: str | Path,
    metrics: dict[str, Any],
    predictions: list[dict[str, Any]],
    label_names: list[str],
    plots: bool = True,
) -> dict[str, Path]:
    """Write metrics.json, report.md, predictions.csv and, with ``plots``, confusion_matrix.png (track level)
    and confusion_matrix_segment.png into ``out_dir`` (created). Returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "report": out / "report.md", "predictions": out / "predictions.csv"}
    # metrics.json first: it marks the folder as an evaluation's (check_evaluation_dir) before the others land
    atomic_write_text(paths["metrics"], json.dumps(jsonable(metrics), indent=2, allow_nan=False) + "\n")
    write_predictions_csv(paths["predictions"], predictions, label_names)
    if plots:
        from engine.plots import confusion_matrix_png  # matplotlib (~1 s to import) only when drawing

        k = len(label_names)
        empty = [[0] * k for _ in range(k)]
        paths["confusion_matrix"] = confusion_matrix_png(
            metrics.get("track", {}).get("confusion_matrix") or empty, label_names, out / "confusion_matrix.png",
            title="Confusion matrix (tracks)",
        )  # fmt: skip
        if "segment" in metrics:
            paths["confusion_matrix_segment"] = confusion_matrix_png(
                metrics["segment"].get("confusion_matrix") or empty, label_names,
                out / "confusion_matrix_segment.png", title="Confusion matrix (windows)",
            )  # fmt: skip
    atomic_write_text(paths["report"], markdown_report(metrics, label_names, predictions, plots))
    return paths


def print_summary_tail(metrics: dict[str, Any], out: Path | None) -> None:
    """The end of ``evaluate``'s console summary (genre and tag models alike): a warning for tracks that could
    not be read, and where the report is."""
    bad = len(metrics.get("tracks_missing") or []) + int(metrics.get("tracks_unreadable") or 0)
    if bad:
        print(f"WARNING: {bad} tracks could not be read and are not in the metrics (see the log)")
    if out is not None:
        print(f"report: {out / 'report.md'}")
