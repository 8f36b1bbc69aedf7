"""Ingest throughput: make_shards (scan + probe + dedupe + decode + resample + tar write) vs bare decode.

The baseline is the least any ingest must do: soundfile decode + channel average + soxr HQ resample of the
same files with the same number of worker processes (``Pool.imap``, results not even sent back). The
ratio ``ingest files/s / baseline files/s`` is the ingest's efficiency (target >= 0.80).

    python benchmarks/bench_ingest.py            # 48 x 30 s 44.1 kHz stereo clips (WAV/FLAC/MP3)
    python benchmarks/bench_ingest.py --quick    # 12 clips

Then the formats libsndfile cannot read or reads slowly (``benchmarks/formats.py``): AAC ``.m4a`` and Opus
tracks decoded by ``shards.audio.load_audio`` against ``librosa.load`` of the same files (target >= 3x on
AAC), and each format's raw decode by libsndfile and by PyAV (``--format-tracks 0`` skips it).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from shards.ingest import IngestConfig, run_ingest

FORMATS = (("wav", "PCM_16"), ("flac", "PCM_16"), ("mp3", "MPEG_LAYER_III"))


def make_clips(root: Path, n: int, seconds: float, sr: int = 44100) -> list[Path]:
    """``n`` music-like stereo clips over ``len(FORMATS)`` genre folders, cycling WAV/FLAC/MP3."""
    paths = []
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        rng = np.random.default_rng(i)
        f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in (1, 2, 3)) * 0.15
        x = x + 0.02 * rng.standard_normal(t.size)
        stereo = np.stack([x, 0.8 * x + 0.01 * rng.standard_normal(t.size)], axis=1).astype(np.float32)
        ext, subtype = FORMATS[i % len(FORMATS)]
        p = root / f"genre{i % 4}" / f"clip{i:04d}.{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(p), stereo, sr, subtype=subtype)
        paths.append(p)
    return paths


def _bare_decode(path: str) -> int:
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    y = soxr.resample(mono, sr, 22050, quality="soxr_hq")
    return int(y.size)


def bench_baseline(paths: list[Path], workers: int) -> float:
    with mp.get_context().Pool(workers) as pool:
        pool.map(abs, range(workers))  # workers started before the clock
        t0 = time.perf_counter()
        total = sum(pool.imap(_bare_decode, [str(p) for p in paths], chunksize=1))
        dt = time.perf_counter() - t0
    assert total > 0
    return len(paths) / dt


def bench_ingest(src: Path, out: Path, workers: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = run_ingest(IngestConfig(source=src, out=out, workers=workers, progress=False, shard_size="64MB"))
    dt = time.perf_counter() - t0
    n = sum(e["tracks"] for e in res.manifest["splits"].values())
    return n / dt, res.manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="12 clips instead of 48")
    ap.add_argument("--files", type=int, default=None, help="number of clips (overrides --quick)")
    ap.add_argument("--seconds", type=float, default=30.0, help="clip length, s")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--repeats", type=int, default=1, help="alternate baseline/ingest this many times, keep best"
    )
    ap.add_argument("--format-tracks", type=int, default=None,
                    help="AAC and Opus tracks each for the librosa.load comparison (default 6, --quick 3; 0: skip)")  # fmt: skip
    args = ap.parse_args(argv)
    n = args.files or (12 if args.quick else 48)
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = make_clips(tmp / "src", n, args.seconds)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"generated {n} x {args.seconds:.0f} s 44.1 kHz stereo clips (WAV/FLAC/MP3, {mb:.0f} MB) "
              f"in {time.perf_counter() - t0:.1f} s; workers={args.workers}")  # fmt: skip
        for p in paths:  # warm the page cache for both contenders
            p.read_bytes()
        base, ing = 0.0, 0.0
        for r in range(args.repeats):
            base = max(base, bench_baseline(paths, args.workers))
            rate, manifest = bench_ingest(tmp / "src", tmp / f"out{r}", args.workers)
            ing = max(ing, rate)
        audio_h = sum(e["seconds"] for e in manifest["splits"].values()) / 3600
        print(f"bare soundfile+soxr decode : {base:8.2f} files/s")
        print(f"make_shards (end to end)   : {ing:8.2f} files/s  ({ing * args.seconds:.0f} s of audio/s, "
              f"{audio_h:.2f} h stored)")  # fmt: skip
        print(f"efficiency                 : {ing / base:8.1%}  (target >= 80%)")
    n_fmt = args.format_tracks if args.format_tracks is not None else (3 if args.quick else 6)
    if n_fmt > 0:
        import formats as decode_formats  # noqa: PLC0415 -- benchmarks/formats.py, shared with bench_classify.py

        print()
        res = decode_formats.run(
            n_fmt, args.seconds, repeats=args.repeats + 2, long_minutes=3.0 if args.quick else 10.0
        )
        print(
            f"AAC decode vs librosa.load: {res['load']['aac .m4a']['speedup_vs_librosa']:.2f}x (target >= 3x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
