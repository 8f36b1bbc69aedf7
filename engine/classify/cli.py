"""The ``classify`` command line: ``python -m engine classify MODEL PATH... --out results.jsonl``
(also ``python -m engine.classify`` and, on several devices, ``accelerate launch -m engine.classify``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.classify.decode import DEFAULT_CHUNK_SECONDS
from engine.classify.predictor import CheckpointInputError
from engine.classify.run import classify
from engine.cli_help import HelpFormatter, float_above, float_in, int_at_least
from engine.distributed import PRECISIONS, canonical_precision
from engine.logs import setup_logging
from shards.audio import ignored_summary
from shards.outputs import EXIT_USER_ERROR, cli_errors

PROG = "python -m engine classify"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Classify music files and folders with a trained checkpoint, a pretrained model (musicnn:MSD_musicnn, "
            "musicnn:MTT_musicnn, musicnn:MSD_vgg, musicnn:MTT_vgg: zero-shot tagging with 50 tags) or a model "
            "exported by `engine export` (TorchScript, torch.export .pt2, ONNX). "
            "Writes exactly one line per input file -- status ok with the top-k genres, or error with the reason -- "
            "and resumes when rerun with the same --out. Under folders, a file is an input when its name or its "
            "content says audio (WAV, FLAC, MP3, Ogg, Opus, AAC/ALAC .m4a, WMA, WebM, ... decoded by libsndfile "
            "or FFmpeg); other files (.jpg, .cue, .DS_Store) are counted by extension in the summary and OUT.run.json. A genre model's score is the mean over the file's windows "
            "of its softmax probabilities; a tag model's (multi-label: lines marked \"kind\": \"tags\") is the "
            "mean over the windows of each tag's own sigmoid score, so tag scores do not sum to 1; its lines also "
            "list, as \"tags\", the tags whose score reaches their threshold (--threshold). "
            "Multi-GPU: accelerate launch -m engine.classify ..."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        help="checkpoint .pt from training, a pretrained name (musicnn:MSD_musicnn, converted and cached on first "
        "use), or a file from `engine export` (TorchScript, .pt2, .onnx)",
    )
    p.add_argument("paths", nargs="*", help="audio files and/or folders (walked recursively)")
    p.add_argument("--from-list", metavar="FILE", help="text file with one path (file or folder) per line")
    p.add_argument(
        "--out",
        required=True,
        help="output file, created with OUT.run.json beside it; rerun with the same --out to resume (files "
        "already in it are skipped). An existing file without that OUT.run.json (not written by classify) is "
        "refused and left as it is",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (and its OUT.run.json) instead of resuming it or refusing it",
    )
    p.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        default=None,
        help="default: csv if --out ends in .csv, else jsonl",
    )
    _add_line_options(p)
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="windows per device batch")
    p.add_argument(
        "--max-windows",
        type=int_at_least(1),
        default=None,
        help="at most N windows per track, spread evenly (default: all)",
    )
    p.add_argument(
        "--pad",
        choices=["zero", "loop"],
        default="loop",
        help="how a track shorter than one window is filled: loop (tile it, as training and evaluation fill a "
        "short track) or zero (pad with silence)",
    )
    p.add_argument(
        "--precision",
        type=canonical_precision,
        choices=["auto", *PRECISIONS],
        default="auto",
        help="autocast dtype (auto: bf16 on GPU, fp32 on CPU; the old 'no': fp32)",
    )
    p.add_argument(
        "--num-workers",
        type=int_at_least(0, "0: decode in this process"),
        default=None,
        help="decode worker processes per device (default: cores / local processes, <= 8)",
    )
    p.add_argument("--device", default=None, help="torch device (default: this process's accelerate device)")
    p.add_argument(
        "--chunk-seconds",
        type=float_above(0),
        default=DEFAULT_CHUNK_SECONDS,
        help="audio per decode piece (bounds memory for long files)",
    )
    p.add_argument(
        "--no-channels-last",
        action="store_true",
        help="keep the backbone's conv weights NCHW (default: NHWC)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _add_line_options(p: argparse.ArgumentParser) -> None:
    """What a line holds: top-k, the tag group and threshold of a tag model, the timeline."""
    p.add_argument("--top-k", type=int_at_least(1), default=3, help="genres per file")
    p.add_argument(
        "--tags",
        metavar="GROUP",
        default=None,
        help="tag models only: keep the tags of GROUP, e.g. 'genre' (MSD: 30 of its 50 tags, MTT: 13; "
        "engine/pretrained/musicnn.py GENRE_TAGS). Default: all tags; --top-k is then tags per file "
        "(--top-k 50 lists all 50)",
    )
    p.add_argument(
        "--threshold",
        type=float_in(0, 1),
        default=None,
        help="tag models only: a file has a tag when the tag's score (mean sigmoid over its windows) is at least "
        "this, for every tag (lines: \"tags\", highest first; CSV: a tags column, a;b). Default: the model's own "
        "per-tag thresholds (chosen on the validation split by a multi-label training run), or 0.5 for a model "
        "without them (the pretrained musicnn ones). Part of the run's identity: a resume must use the same",
    )
    p.add_argument(
        "--timeline", action="store_true", help="add per-window predictions (start s, top label, prob)"
    )


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['files']} files in {s['out']}: {s['ok']} ok, {s['error']} error "
        f"({s['new']} classified now, {s['skipped']} already done; world size {s['world_size']})",
        f"throughput: {s['files_per_s']:.2f} files/s, {s['audio_hours_per_s'] * 3600:.1f} audio-s/s "
        f"({s['audio_hours_per_s']:.3g} audio-h/s) on {s['device']} ({s['precision']}, {s['num_workers']} decode workers)",
    ]
    if s["errors_by_reason"]:
        lines.append("errors: " + ", ".join(f"{r}: {n}" for r, n in s["errors_by_reason"].items()))
    if "ignored" in s:  # non-audio files under the folders, counted by the walk (not classified)
        lines.append(ignored_summary(s["ignored"]))
    if s["genres"]:
        what = "top tags" if s.get("kind") == "tags" else "genres"
        lines.append(f"{what}: " + ", ".join(f"{g}: {n}" for g, n in s["genres"].items()))
    if s.get("tag_counts"):  # files per tag, the tag at or above its threshold
        lines.append("files with each tag: " + ", ".join(f"{g}: {n}" for g, n in s["tag_counts"].items()))
    return "\n".join(lines)


@cli_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    """Run the command; a refusal is one line on stderr and exit status 2 (no traceback)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        summary = classify(
            args.checkpoint, args.paths, args.out, from_list=args.from_list, fmt=args.format, top_k=args.top_k,
            batch_size=args.batch_size, max_windows=args.max_windows, pad=args.pad, timeline=args.timeline,
            precision=args.precision, num_workers=args.num_workers, device=args.device,
            chunk_seconds=args.chunk_seconds, channels_last=not args.no_channels_last,
            progress=not args.no_progress, tags=args.tags, threshold=args.threshold, overwrite=args.overwrite,
        )  # fmt: skip
    except (CheckpointInputError, FileNotFoundError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if summary.get("main"):
        print(format_summary(summary))
        print(json.dumps({k: v for k, v in summary.items() if k != "main"}, ensure_ascii=False))
    return 0


