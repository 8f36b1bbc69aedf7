"""Evaluate a checkpoint on a split of a shard set: segment and track metrics, report, confusion matrix.

::

    python -m engine evaluate runs/x/best.pt --shards shards/gtzan --split test --out runs/x/eval
    accelerate launch -m engine.evaluate runs/x/best.pt --shards DIR --out DIR     # several processes

Every track of the split is cut into windows of the checkpoint's evaluation window (``window_samples``
when the run validated on windows longer than its training crop, else ``segment_samples``; ``--segment-seconds``
overrides it) with hop ``--hop-seconds`` (default = one window: non-overlapping); the model scores each
window; a track's prediction is the argmax of its mean window probability (``--track-aggregate
mean_logprob``: of its mean log-probability; the run's ``eval.track_aggregate`` by default; both are
reported). Each process evaluates its share of the tracks
(:class:`shards.window_stream.WindowStream` with its rank), the per-window results are gathered once at the end,
and only the main process writes files: the figures are the same on CPU or GPU, with one process or many.

Cross-dataset evaluation: when the shard set's label names differ from the model's, ``--label-map FILE``
(YAML or JSON ``{shard label: model label}``; ``null`` excludes a class) maps them; without a map, names
equal up to case and punctuation (``hiphop`` / ``Hip-Hop``) are matched automatically. Shard classes
without a counterpart are reported ("unmapped classes"), with the number of tracks not evaluated, and
model classes absent from the shards are listed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.cli_help import float_above, int_at_least
from engine.distributed import PRECISIONS, canonical_precision, check_precision, make_accelerator
from engine.evaluation_loop import WindowResults, evaluate_stream
from engine.label_map import load_label_map, resolve_label_map
from engine.logs import setup_logging
from engine.metrics import TRACK_AGGREGATES, aggregate_tracks
from engine.models.inputs import check_data_fits_model, input_kind
from engine.tasks import evaluation_task
from shards.outputs import EXIT_USER_ERROR, cli_errors

PROG = "python -m engine evaluate"
logger = logging.getLogger(__name__)

__all__ = ["evaluate_checkpoint", "main"]


def evaluate_checkpoint(
    checkpoint: str | Path,
    shards: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    *,
    batch_size: int = 64,
    hop_seconds: float | None = None,
    segment_seconds: float | None = None,
    track_aggregate: str | None = None,
    label_map: dict[str, str | None] | str | Path | None = None,
    num_workers: int | None = None,
    precision: str = "fp32",
    accelerator: Any = None,
    fold: int | None = None,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of the shard set ``shards``; write the report to ``out``.

    Args:
        checkpoint: a genre-engine ``.pt`` (see :mod:`engine.checkpoint`).
        shards: shard-set directory; its ``sample_rate`` must equal the checkpoint's.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        out: directory for metrics.json, report.md, confusion_matrix.png, predictions.csv (main
            process only); None writes nothing.
        batch_size: windows per batch.
        hop_seconds: window hop in seconds (default: the window length, no overlap).
        segment_seconds: evaluation window in seconds (default: the checkpoint's ``window_samples``, else
            its training crop ``segment_samples``).
        track_aggregate: ``"mean_prob"`` or ``"mean_logprob"``: how a track's windows make the headline
            ``track`` figures (default: the checkpoint's ``eval.track_aggregate``, else ``"mean_prob"``).
        label_map: ``{shard label: model label | None}`` or a YAML/JSON file of it (cross-dataset).
        num_workers: DataLoader workers (default :func:`shards.reader.default_num_workers`).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of the forward pass (the old ``"no"``:
            ``"fp32"``).
        accelerator: an ``accelerate.Accelerator`` to reuse (default: a new one; it picks up the
            process group of ``accelerate launch`` / ``torchrun``).
        fold: evaluate only the tracks of this k-fold fold (cross-validation); None: every track.
        progress: show a progress bar on the main process.
        plots: also draw the report's PNG plots (``cv`` leaves them out of its folds: it pools their
            confusion matrices into ``cv.json`` / ``cv.md``).

    Returns:
        The metrics dict (also written to metrics.json): ``segment`` / ``track`` (see
        :func:`engine.metrics.classification_metrics`), ``track_aggregate``, ``track_mean_prob`` /
        ``track_mean_logprob`` (both aggregates), ``track_vote``, and the run's facts
        (``world_size``, ``tracks_expected``, ``tracks_missing``, ``unmapped_classes``,
        ``model_classes_absent``, ``label_map``, ...). Identical on every process.
    """
    from shards.reader import make_loader

    precision = check_precision(precision)
    _check_arguments(batch_size, track_aggregate, segment_seconds, hop_seconds, num_workers)
    t0 = time.perf_counter()
    manifest = _load_manifest(shards, fold, split)  # fail fast before loading a model
    if isinstance(label_map, (str, Path)):
        label_map = load_label_map(label_map)
    if out is not None:
        from engine.report import check_evaluation_dir

        check_evaluation_dir(out)  # a folder evaluate may not write is refused before the work
    accelerator = accelerator or make_accelerator()
    setup = _load_setup(checkpoint, shards, manifest, accelerator.device, label_map,
                        segment_seconds=segment_seconds, hop_seconds=hop_seconds, track_aggregate=track_aggregate)  # fmt: skip
    task = evaluation_task(manifest, setup.ckpt, checkpoint, shards)  # the shard set's; a tag set needs a tag model
    stream = _window_stream(shards, split, setup, batch_size, accelerator, fold)
    result = evaluate_stream(
        setup.model, make_loader(stream, num_workers=num_workers), accelerator, len(setup.labels),
        precision=precision, label_index=torch.tensor(setup.index, dtype=torch.long),
        progress=f"evaluate {split}" if progress else None, task=task.name,
    )  # fmt: skip
    thresholds = (setup.ckpt.get("extra") or {}).get("thresholds")  # per tag, chosen on the run's validation split
    metrics = result.metrics(setup.labels, setup.track_aggregate, thresholds)  # the figures validation computes
    if task.multi_label:  # tags: engine.tag_evaluation's coverage, rows and report
        from engine.tag_evaluation import tag_coverage, tag_predictions, write_tag_evaluation

        tracks: Any = tag_coverage(stream, setup.shard_labels, setup.index, result, manifest, split, fold)
        rows, write = (lambda: tag_predictions(stream, tracks, setup.labels, thresholds)), write_tag_evaluation
    else:
        from engine.report import write_evaluation

        tracks = _track_coverage(stream, setup, result, manifest, split, fold)
        rows, write = (lambda: _predictions(stream, setup, result, tracks)), write_evaluation
    metrics.update(_run_facts(checkpoint, shards, split, fold, setup, result, tracks, accelerator, precision))
    metrics["seconds"] = time.perf_counter() - t0
    if out is not None and accelerator.is_main_process:
        write(out, metrics, rows(), setup.labels, plots)
        logger.info("wrote the evaluation report to %s", out)
    accelerator.wait_for_everyone()
    return metrics


@dataclass
class _Setup:
    """The model and how the shard set's windows and classes meet it."""

    model: torch.nn.Module
    ckpt: dict[str, Any]
    labels: list[str]  # the model's classes
    shard_labels: list[str]  # the shard set's classes
    index: list[int]  # shard class -> model class (-1: not evaluated)
    mapping: dict[str, str]  # {shard label: model label} of the mapped classes
    sample_rate: int  # Hz
    segment: int  # evaluation window, samples
    hop: int | None  # window hop, samples (None: one window)
    track_aggregate: str


@dataclass
class _Coverage:
    """Which tracks of the split were evaluated, and the per-track results of those that were."""

    keys: list[str]  # every track of the stream, by track index
    shard_labels_of: list[int]  # shard class of every track
    unmapped: dict[str, int]  # shard classes without a model class -> their tracks in this split
    expected: set[int]  # tracks of mapped classes
    missing: list[int]  # expected tracks without a readable window
    unreadable: int  # tracks the manifest lists that the scan could not read
    track_ids: torch.Tensor  # (N,) evaluated tracks, sorted
    track_probs: torch.Tensor  # (N, K) their aggregated probabilities
    vote: torch.Tensor  # (N,) their majority-vote class


def _check_arguments(
    batch_size: int, track_aggregate: str | None, segment_seconds: float | None, hop_seconds: float | None = None,
    num_workers: int | None = None,
) -> None:  # fmt: skip
    """Refuse numbers out of range before any work (the CLI's parser refuses them first)."""
    if hop_seconds is not None and not hop_seconds > 0:
        raise ValueError(f"hop_seconds must be > 0, got {hop_seconds}")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0: load in this process), got {num_workers}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if track_aggregate is not None and track_aggregate not in TRACK_AGGREGATES:
        raise ValueError(f"track_aggregate must be one of {TRACK_AGGREGATES}, got {track_aggregate!r}")
    if segment_seconds is not None and segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")


def _load_manifest(shards: str | Path, fold: int | None, split: str | None = None) -> dict[str, Any]:
    from shards.format import load_manifest

    manifest = load_manifest(shards)
    if split is not None and split not in manifest["splits"]:  # KeyError, as the shard reader raised it
        raise KeyError(
            f"--split {split!r}: shard set {shards} has no such split (it has {', '.join(sorted(manifest['splits']))}); "
            "choose one of those"
        )
    if fold is not None and not 0 <= int(fold) < int(manifest.get("folds") or 0):
        raise ValueError(
            f"fold {fold} does not exist: shard set {shards} has {int(manifest.get('folds') or 0)} folds "
            "(folds are 0-based; make shards with --folds K for cross-validation)"
        )
    return manifest


def _load_setup(
    checkpoint: str | Path, shards: str | Path, manifest: dict[str, Any], device: torch.device,
    label_map: dict[str, str | None] | None, *, segment_seconds: float | None, hop_seconds: float | None,
    track_aggregate: str | None,
) -> _Setup:  # fmt: skip
    """Load the model, check that the shard set fits it, settle the windows and the class mapping."""
    from engine.checkpoint import load_model

    model, ckpt = load_model(checkpoint, device)
    model_labels = [str(x) for x in ckpt["labels"]]
    sample_rate = int(ckpt["sample_rate"])
    segment = int(ckpt.get("window_samples") or ckpt["segment_samples"])  # the window the run validated with
    if segment_seconds is not None:
        segment = max(1, int(round(segment_seconds * sample_rate)))
    if track_aggregate is None:
        track_aggregate = str((ckpt["config"].get("eval") or {}).get("track_aggregate") or TRACK_AGGREGATES[0])
    _check_shards_fit(model, sample_rate, manifest, checkpoint, shards)
    shard_labels = [str(x) for x in manifest["labels"]]
    index, mapping = resolve_label_map(shard_labels, model_labels, label_map)
    hop = None
    if hop_seconds is not None:
        if hop_seconds <= 0:
            raise ValueError(f"hop_seconds must be > 0, got {hop_seconds}")
        hop = max(1, int(round(hop_seconds * sample_rate)))
    return _Setup(model, ckpt, model_labels, shard_labels, index, mapping, sample_rate, segment, hop, track_aggregate)


def _check_shards_fit(
    model: torch.nn.Module, sample_rate: int, manifest: dict[str, Any], checkpoint: str | Path, shards: str | Path
) -> None:
    """ValueError for a waveform model on feature shards (or the reverse), or audio at another rate."""
    kind = manifest.get("kind", "audio")

    def error(model_kind: str, kind: str) -> ValueError:
        return ValueError(
            f"checkpoint {checkpoint} takes {'precomputed feature sequences' if model_kind == 'features' else 'audio'}"
            f" but shard set {shards} holds {'feature sequences' if kind == 'features' else 'audio'} "
            f"(kind {kind!r}): evaluate {'MSD-feature' if kind == 'features' else 'audio'} shards with a model "
            "trained on the same kind"
        )

    check_data_fits_model(input_kind(model), kind, error)
    if kind == "audio" and int(manifest["sample_rate"]) != sample_rate:
        raise ValueError(
            f"shard set {shards} is at {manifest['sample_rate']} Hz but the checkpoint {checkpoint} was trained "
            f"at {sample_rate} Hz: re-shard the source at {sample_rate} Hz "
            f"(python tools/make_shards.py SOURCE --out DIR --sample-rate {sample_rate})"
        )


def _window_stream(
    shards: str | Path, split: str, setup: _Setup, batch_size: int, accelerator: Any, fold: int | None
) -> Any:
    """This process's share of the split as evaluation batches (every track cut into windows)."""
    from shards.window_stream import WindowStream

    return WindowStream(
        str(shards), split, window_samples=setup.segment, batch_size=batch_size,
        hop_samples=setup.hop, rank=accelerator.process_index, world_size=accelerator.num_processes,
        holdout_fold=-1 if fold is None else int(fold), folds="only" if fold is not None else "exclude",
    )  # fmt: skip


def _track_coverage(
    stream: Any, setup: _Setup, result: WindowResults, manifest: dict[str, Any], split: str, fold: int | None
) -> _Coverage:
    """Per-track results, and which tracks should have been evaluated and could not be (logged)."""
    keys, labels_of, index = stream.track_keys(), stream.track_labels(), setup.index
    unmapped: dict[str, int] = {}
    for lab in labels_of:
        if index[lab] < 0:
            unmapped[setup.shard_labels[lab]] = unmapped.get(setup.shard_labels[lab], 0) + 1
    for i, name in enumerate(setup.shard_labels):  # unmapped classes with no track in this split: 0
        if index[i] < 0:
            unmapped.setdefault(name, 0)
    expected = {t for t, lab in enumerate(labels_of) if index[lab] >= 0}
    track_ids, track_probs, vote = aggregate_tracks(result.probs, result.tracks, aggregate=setup.track_aggregate)
    missing = sorted(expected - set(track_ids.tolist()))
    if missing:
        logger.error("%d of %d tracks produced no readable window and are not in the metrics (e.g. %s)",
                     len(missing), len(expected), ", ".join(keys[t] for t in missing[:5]))  # fmt: skip
    if unmapped:
        logger.warning("unmapped classes: %s (%d tracks not evaluated)", ", ".join(unmapped), sum(unmapped.values()))
    unreadable = 0
    if fold is None:  # tracks the manifest lists but the scan could not read (logged by the reader)
        unreadable = max(0, int(manifest["splits"][split].get("tracks", len(keys))) - len(keys))
        if unreadable:
            logger.error("%d tracks of the manifest's %s split are unreadable and not evaluated", unreadable, split)
    return _Coverage(keys, labels_of, unmapped, expected, missing, unreadable, track_ids, track_probs, vote)


def _run_facts(
    checkpoint: str | Path, shards: str | Path, split: str, fold: int | None, setup: _Setup, result: WindowResults,
    tracks: _Coverage, accelerator: Any, precision: str,
) -> dict[str, Any]:  # fmt: skip
    """The run's facts that go into metrics.json next to the figures (``seconds`` is added last)."""
    present = set(setup.mapping.values())
    rate, segment = setup.sample_rate, setup.segment
    return {
        "checkpoint": str(checkpoint),
        "shards": str(shards),
        "split": split,
        "fold": fold,
        "labels": setup.labels,
        "shard_labels": setup.shard_labels,
        "label_map": setup.mapping,
        "unmapped_classes": tracks.unmapped,
        "model_classes_absent": [n for n in setup.labels if n not in present],
        "sample_rate": rate,
        "segment_samples": segment,  # the evaluation window
        "segment_seconds": segment / rate,
        "train_segment_samples": int(setup.ckpt["segment_samples"]),
        "hop_seconds": (setup.hop or segment) / rate,
        "windows": int(result.tracks.numel()),
        "tracks_expected": len(tracks.expected),
        "tracks_missing": [tracks.keys[t] for t in tracks.missing],
        "tracks_unreadable": tracks.unreadable,
        "world_size": accelerator.num_processes,
        "precision": precision,
        "device": str(accelerator.device.type),
    }


def _predictions(stream: Any, setup: _Setup, result: WindowResults, tracks: _Coverage) -> list[dict[str, Any]]:
    """One row per evaluated track for predictions.csv."""
    keys, labels = tracks.keys, setup.labels
    paths = dict(zip(keys, stream.track_paths()))
    labels_of = torch.tensor([setup.index[lab] for lab in tracks.shard_labels_of], dtype=torch.long)
    counts = torch.bincount(torch.searchsorted(tracks.track_ids, result.tracks), minlength=tracks.track_ids.numel())
    rows = []
    for row, (t, p, v) in enumerate(zip(tracks.track_ids.tolist(), tracks.track_probs, tracks.vote.tolist())):
        true = int(labels_of[t])
        top2 = p.topk(min(2, p.numel())).indices.tolist()
        pred = int(p.argmax())
        rows.append({
            "key": keys[t], "path": paths.get(keys[t], ""), "true_label": labels[true],
            "predicted_label": labels[pred], "correct": pred == true, "top2_correct": true in top2,
            "vote_label": labels[v], "windows": int(counts[row]), "probs": p.tolist(),
        })  # fmt: skip
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Evaluate a checkpoint on a split of a shard set: segment (window) and track metrics, per-class "
            "table, confusion matrix, predictions.csv. Runs on CPU or GPU; launch with `accelerate launch -m "
            "engine.evaluate ...` or `torchrun -m engine.evaluate ...` for several processes (same figures)."
        ),
    )
    p.add_argument("checkpoint", help="genre-engine checkpoint (.pt)")
    p.add_argument("--shards", required=True, help="shard-set directory (with manifest.json)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument(
        "--out",
        default=None,
        help="report directory (default: <checkpoint dir>/eval-<split>); its metrics.json, report.md, "
        "confusion_matrix*.png and predictions.csv are replaced when an earlier evaluation wrote them, "
        "refused otherwise; other files in it are left alone",
    )
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="windows per batch (default: 64)")
    p.add_argument(
        "--segment-seconds",
        type=float_above(0),
        default=None,
        help="evaluation window in seconds (default: the window the run validated with, stored in the checkpoint)",
    )
    p.add_argument(
        "--hop-seconds",
        type=float_above(0),
        default=None,
        help="window hop in seconds (default: window length, no overlap)",
    )
    p.add_argument(
        "--track-aggregate",
        choices=TRACK_AGGREGATES,
        default=None,
        help="how a track's windows make its prediction: mean of probabilities or of log-probabilities "
        "(default: the run's eval.track_aggregate; both are reported)",
    )
    p.add_argument(
        "--label-map",
        default=None,
        metavar="FILE",
        help="YAML/JSON {shard label: model label or null} for a shard set whose label names differ",
    )
    p.add_argument("--precision", type=canonical_precision, choices=PRECISIONS, default="fp32",
                   help="autocast of the forward pass (the old 'no': fp32)")  # fmt: skip
    p.add_argument("--workers", type=int_at_least(0, "0: load in this process"), default=None,
                   help="DataLoader workers (default: automatic)")  # fmt: skip
    p.add_argument("--fold", type=int_at_least(0, "folds are 0-based"), default=None,
                   help="evaluate only the tracks of this k-fold fold")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _print_summary(metrics: dict[str, Any], out: Path | None) -> None:
    seg, trk = metrics["segment"], metrics["track"]
    print(
        f"{metrics['split']}: {trk['n']} tracks, {seg['n']} windows of {metrics['segment_seconds']:.2f} s "
        f"({metrics['world_size']} process{'es' if metrics['world_size'] > 1 else ''})"
    )
    print(f"{'':18}{'segment':>10}{'track':>10}")
    for key, name in (  # macro F1 first: the honest figure on imbalanced sets (MSD genres)
        ("macro_f1", "macro F1"),
        ("accuracy", "accuracy"),
        ("top2_accuracy", "top-2 accuracy"),
        ("macro_precision", "macro precision"),
        ("macro_recall", "macro recall"),
    ):
        print(f"{name:<18}{100 * seg[key]:>9.2f}%{100 * trk[key]:>9.2f}%")
    print(f"{'vote accuracy':<18}{'':>10}{100 * metrics['track_vote']['accuracy']:>9.2f}%")
    for name in TRACK_AGGREGATES:
        mark = " (headline)" if name == metrics.get("track_aggregate") else ""
        print(f"{'track acc ' + name:<24}{100 * metrics['track_' + name]['accuracy']:>13.2f}%{mark}")
    if metrics.get("unmapped_classes"):
        u = metrics["unmapped_classes"]
        print(f"unmapped classes: {', '.join(u)} ({sum(u.values())} tracks not evaluated)")
    if metrics.get("model_classes_absent"):
        print(f"model classes absent from the shards: {', '.join(metrics['model_classes_absent'])}")
    from engine.report import print_summary_tail  # plotting imports only when a summary is printed

    print_summary_tail(metrics, out)


@cli_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    """Run the command; a refusal is one line on stderr and exit status 2 (no traceback)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{args.split}"
    try:
        metrics = evaluate_checkpoint(
            args.checkpoint,
            args.shards,
            split=args.split,
            out=out,
            batch_size=args.batch_size,
            hop_seconds=args.hop_seconds,
            segment_seconds=args.segment_seconds,
            track_aggregate=args.track_aggregate,
            label_map=args.label_map,
            num_workers=args.workers,
            precision=args.precision,
            fold=args.fold,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"{PROG}: error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return EXIT_USER_ERROR
    from accelerate import PartialState

    if PartialState().is_main_process:
        if metrics.get("task") == "multilabel":
            from engine.tag_evaluation import print_tag_summary

            print_tag_summary(metrics, out)
        else:
            _print_summary(metrics, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
