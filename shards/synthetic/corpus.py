"""A synthetic corpus on disk, ``OUT/<genre>/<genre>.000NN.<ext>`` (GTZAN's layout), written in parallel
(:func:`make_corpus`), and its command line (:func:`main`, ``tools/make_synthetic.py``)."""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shards.synthetic.recipes import GENRES, OVERLAP
from shards.synthetic.render import _validate, generate_clip

logger = logging.getLogger(__name__)

# extension -> (soundfile format, subtype)
FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
# MPEG-1/2/2.5 layer III sample rates (Hz); LAME refuses anything else.
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def clip_seed(seed: int, genre: str, index: int) -> np.random.SeedSequence:
    """The seed of clip ``index`` of ``genre``: a function of (seed, genre name, index) only."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(genre.encode("utf-8")), int(index)])


def clip_path(out_dir: str | os.PathLike, genre: str, index: int, ext: str) -> Path:
    """``out_dir/<genre>/<genre>.000NN.<ext>`` (GTZAN's naming)."""
    return Path(out_dir) / genre / f"{genre}.{index:05d}.{ext}"


def _write_clip(task: tuple[str, str, int, str, float, int, int, int, float]) -> str:
    out_dir, genre, index, ext, duration, sample_rate, channels, seed, overlap = task
    import soundfile as sf

    rng = np.random.default_rng(clip_seed(seed, genre, index))
    audio = generate_clip(genre, rng, duration, sample_rate, channels, overlap=overlap)
    path = clip_path(out_dir, genre, index, ext)
    fmt, subtype = FORMATS[ext]
    tmp = path.with_name(f".{path.name}.part")  # hidden partial file: a crash never leaves a truncated clip
    try:
        sf.write(str(tmp), audio, sample_rate, format=fmt, subtype=subtype)
        os.replace(tmp, path)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"could not write {path}: {err}") from err
    return str(path)


def make_corpus(
    out_dir: str | os.PathLike,
    *,
    clips_per_genre: int = 12,
    duration: float = 10.0,
    sample_rate: int = 22050,
    formats: Sequence[str] = ("wav",),
    seed: int = 0,
    genres: Sequence[str] = GENRES,
    channels: int = 1,
    workers: int | None = None,
    progress: bool = True,
    overlap: float = OVERLAP,
) -> list[Path]:
    """Write a synthetic corpus ``out_dir/<genre>/<genre>.000NN.<ext>``; returns the paths in (genre, index) order.

    Clip ``i`` of a genre is written as ``formats[i % len(formats)]`` (``wav`` PCM_16, ``flac`` PCM_16,
    ``ogg`` Vorbis, ``mp3`` layer III), so a mixed-format corpus is deterministic. Each clip's generator is
    derived from ``(seed, genre, i)``, so the audio does not depend on ``workers`` (``None``: one process per
    CPU core, ``0``/``1``: in this process). ``overlap`` is :func:`generate_clip`'s part-borrowing probability.
    Existing files of the same names are overwritten.
    """
    genres = list(genres)
    formats = [f.lower().lstrip(".") for f in formats]
    if clips_per_genre < 1:
        raise ValueError(f"clips_per_genre must be >= 1, got {clips_per_genre}")
    if not genres:
        raise ValueError("no genres requested")
    if len(set(genres)) != len(genres):
        raise ValueError(f"genres repeated: {genres}")
    if not formats:
        raise ValueError("no formats requested")
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}")
    for genre in genres:
        _validate(genre, duration, sample_rate, channels)
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be a probability in [0, 1], got {overlap!r}")
    if "mp3" in formats and sample_rate not in MP3_SAMPLE_RATES:
        raise ValueError(
            f"MP3 cannot store {sample_rate} Hz; use one of {MP3_SAMPLE_RATES} or another format"
        )
    out = Path(out_dir)
    for genre in genres:
        (out / genre).mkdir(parents=True, exist_ok=True)
    tasks = [
        (
            str(out),
            g,
            i,
            formats[i % len(formats)],
            float(duration),
            int(sample_rate),
            int(channels),
            int(seed),
            float(overlap),
        )
        for g in genres
        for i in range(clips_per_genre)
    ]
    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    n_workers = max(1, min(n_workers, len(tasks)))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="synthesising clips", unit="clip", disable=not progress)
    try:
        if n_workers == 1:
            for task in tasks:
                _write_clip(task)
                bar.update()
        else:
            # spawn: safe even when the parent holds threads (torch, a test runner); results are order-free
            with mp.get_context("spawn").Pool(n_workers) as pool:
                for _ in pool.imap_unordered(_write_clip, tasks, chunksize=1):
                    bar.update()
    finally:
        bar.close()
    logger.info("wrote %d synthetic clips (%d genres) to %s", len(tasks), len(genres), out)
    return [clip_path(out, g, i, ext) for (_, g, i, ext, *_rest) in tasks]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python tools/make_synthetic.py OUT [options]`` (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="make_synthetic.py",
        description=(
            "Write a deterministic synthetic music corpus, OUT/<genre>/<genre>.000NN.<ext>, in GTZAN's layout "
            "and genre names. Each genre is a recipe of rhythm (tempo, swing, drum patterns), harmony "
            "(chord progressions, bass and melody styles) and timbre (instrument harmonics, distortion, "
            "filtering); loudness and a mastering EQ are random per clip. Output depends only on the seed, "
            "never on --workers."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "out", type=Path, help="output folder (created; files of the same names are overwritten)"
    )
    parser.add_argument("--clips-per-genre", type=int, default=12, help="clips per genre")
    parser.add_argument("--duration", type=float, default=10.0, help="clip length in seconds")
    parser.add_argument("--sample-rate", type=int, default=22050, help="sample rate in Hz")
    parser.add_argument(
        "--formats",
        default="wav",
        help="comma-separated file formats from wav,flac,ogg,mp3; clip i gets formats[i %% len(formats)]",
    )
    parser.add_argument("--channels", type=int, default=1, choices=(1, 2), help="1: mono, 2: stereo")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument(
        "--overlap",
        type=float,
        default=OVERLAP,
        help="probability that a clip borrows a part (drums, bass, chords, melody) from another genre",
    )
    parser.add_argument(
        "--genres", nargs="+", default=list(GENRES), metavar="GENRE", help=f"genres, from: {' '.join(GENRES)}"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per CPU core; 1: no pool)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    genres = [g for item in args.genres for g in item.split(",") if g]
    formats = [f for f in args.formats.split(",") if f]
    try:
        paths = make_corpus(
            args.out,
            clips_per_genre=args.clips_per_genre,
            duration=args.duration,
            sample_rate=args.sample_rate,
            formats=formats,
            seed=args.seed,
            genres=genres,
            channels=args.channels,
            workers=args.workers,
            overlap=args.overlap,
            progress=not args.quiet,
        )
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {len(paths)} clips ({len(genres)} genres x {args.clips_per_genre}) to {args.out}")
    return 0
