"""``python -m engine demo``: the whole product in one command, on the built-in synthetic corpus.

generate corpus -> make shards -> train a small CRNN -> evaluate on the held-out split -> classify a
folder of new clips -> print where every artefact is. The last two lines are always
``checkpoint: PATH`` and ``track accuracy: NN.N%`` so scripts can pick them up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.checkpoint_format import CheckpointError
from engine.config import ConfigError, apply_overrides, config_json, from_dict
from engine.train import TrainConfig, saved_state_dir, train
from shards.format import ManifestError
from shards.outputs import cli_errors, prepare_output_dir


@dataclass(frozen=True)
class DemoSize:
    clips_per_genre: int
    duration: float  # seconds per clip
    genres: int
    epochs: int
    classify_clips: int  # new clips per genre to classify


SIZES = {
    "tiny": DemoSize(clips_per_genre=6, duration=4.0, genres=4, epochs=2, classify_clips=1),  # tests
    "small": DemoSize(clips_per_genre=12, duration=8.0, genres=10, epochs=12, classify_clips=1),
    "default": DemoSize(clips_per_genre=16, duration=10.0, genres=10, epochs=25, classify_clips=2),
    "large": DemoSize(clips_per_genre=60, duration=30.0, genres=10, epochs=40, classify_clips=3),
}


def demo_config(shards: Path, run_dir: Path, epochs: int, arch: str, overrides: list[str]) -> TrainConfig:
    """A small CRNN recipe that trains in minutes on a CPU (3-s crops, 64 mels, light augmentation)."""
    base = {
        "data": {"shards": str(shards), "segment_seconds": 3.0, "batch_size": 16, "eval_batch_size": 32},
        "model": {
            "arch": arch,
            "features": {"features": ["logmel"], "n_mels": 64, "n_fft": 1024, "hop_length": 512},
        },
        "optim": {"lr": 2e-3, "epochs": epochs, "early_stop_patience": 0, "schedule": "cosine"},
        "run": {"out_dir": str(run_dir), "seed": 0, "tensorboard": False},
    }
    return from_dict(TrainConfig, apply_overrides(base, overrides))


def run_demo(args: argparse.Namespace) -> dict:
    from engine.classify import classify
    from engine.evaluate import evaluate_checkpoint
    from shards.ingest import main as make_shards
    from shards.synthetic import GENRES, make_corpus

    size = SIZES[args.size]
    out = prepare_output_dir(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    epochs = size.epochs if args.epochs is None else args.epochs
    demo_config(out / "shards", out / "run", epochs, args.arch, args.set or [])  # a config mistake: before any work
    if args.source and not Path(args.source).is_dir():
        raise ConfigError(f"--source {args.source}: not a folder; give your music folder, or leave --source out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    genres = list(GENRES[: size.genres])

    # 1. corpus (skipped when the user brings a folder)
    if args.source:
        source, layout = Path(args.source), args.layout
    else:
        source, layout = out / "corpus", "folder"
        if not source.is_dir():
            print(f"[1/5] generating the synthetic corpus: {len(genres)} genres x {size.clips_per_genre} clips x {size.duration:g} s")
            make_corpus(source, clips_per_genre=size.clips_per_genre, duration=size.duration, genres=genres,
                        formats=("wav", "flac", "ogg", "mp3"), seed=0, progress=not args.quiet)  # fmt: skip
    # 2. shards
    shards = out / "shards"
    if not (shards / "manifest.json").is_file():
        print(f"[2/5] sharding {source} ({layout} layout)")
        argv = [str(source), "--out", str(shards), "--layout", layout, "--seed", "0"]
        if args.quiet:
            argv.append("--no-progress")
        rc = make_shards(argv)
        if rc:
            raise SystemExit(rc)
    manifest = json.loads((shards / "manifest.json").read_text())
    # 3. train
    run_dir = out / "run"
    print(f"[3/5] training a {args.arch} for {epochs} epochs")
    cfg = demo_config(shards, run_dir, epochs, args.arch, args.set or [])
    cfg.run.resume = saved_state_dir(run_dir) is not None
    cfg.run.progress = not args.quiet
    summary = train(cfg)
    ckpt = summary["best_checkpoint"]
    # 4. evaluate on the held-out split
    print("[4/5] evaluating on the test split")
    metrics = evaluate_checkpoint(ckpt, shards, split="test", out=out / "eval", progress=not args.quiet)
    # 5. classify new clips the model has never seen
    to_classify = out / "new_clips"
    if not args.source and not to_classify.is_dir():
        make_corpus(to_classify, clips_per_genre=size.classify_clips, duration=size.duration, genres=genres,
                    formats=("mp3",), seed=12345, progress=False)  # fmt: skip
    results = out / "classified.jsonl"
    print(f"[5/5] classifying {to_classify if to_classify.is_dir() else source}")
    csummary = classify(ckpt, [str(to_classify if to_classify.is_dir() else source)], results, progress=not args.quiet)

    track_acc = float(metrics["track"]["accuracy"])
    report = {
        "corpus": str(source),
        "shards": str(shards),
        "run_dir": str(run_dir),
        "evaluation": str(out / "eval"),
        "classified": str(results),
        "tracks": {s: v["tracks"] for s, v in manifest["splits"].items()},
        "segment_accuracy": float(metrics["segment"]["accuracy"]),
        "track_accuracy": track_acc,
        "track_macro_f1": float(metrics["track"].get("macro_f1", float("nan"))),
        "classify": {k: v for k, v in csummary.items() if isinstance(v, (int, float, str, dict))},
        "seconds": time.perf_counter() - t0,
        "config": config_json(cfg),
        "checkpoint": ckpt,
    }
    (out / "demo.json").write_text(json.dumps(report, indent=2, default=str))
    print()
    print(f"corpus:        {source}")
    print(f"shards:        {shards}  ({', '.join(f'{s} {n}' for s, n in report['tracks'].items())} tracks)")
    print(f"run:           {run_dir}  (history.csv, curves.png, best.pt, last.pt)")
    print(f"evaluation:    {out / 'eval'}  (report.md, metrics.json, confusion_matrix.png, predictions.csv)")
    print(f"classified:    {results}")
    print(f"segment accuracy: {100 * report['segment_accuracy']:.1f}%  macro F1 (track): {100 * report['track_macro_f1']:.1f}%")
    print(f"time: {report['seconds']:.0f} s")
    print(f"checkpoint: {ckpt}")
    print(f"track accuracy: {100 * track_acc:.1f}%")
    return report


@cli_errors("python -m engine demo")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine demo",
        description="Generate the synthetic corpus, shard it, train a small CRNN, evaluate it and classify new clips.",
    )
    p.add_argument("--out", help="where everything goes (default: a fresh runs/demo-<time>/)")
    p.add_argument("--size", choices=sorted(SIZES), default="default", help="corpus and training budget (default: default)")
    p.add_argument("--epochs", type=int, help="override the size's epoch count")
    p.add_argument("--arch", default="crnn", help="architecture (default crnn)")
    p.add_argument("--source", help="use your own music folder instead of the synthetic corpus")
    p.add_argument("--layout", default="folder", help="layout of --source (auto, gtzan, fma, folder, csv)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="training config overrides, e.g. optim.lr=1e-3")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        run_demo(args)
    except (ConfigError, CheckpointError, ManifestError) as err:
        print(f"python -m engine demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
