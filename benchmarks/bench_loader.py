"""Shard loader throughput vs. raw sequential reads and vs. decoding MP3 sources with librosa.

Writes its own data set (synthetic 30-s tracks), then in one run measures, all from a warm page cache:

(a) raw sequential read rate of the tar shards (8 MB chunks),
(b) CropStream + DataLoader: 3-s training crops (batch 32) with 0, 1, 2 workers, both with
    ``partial_reads`` on (only the crop's bytes are read: the default) and off (whole tracks read),
(c) ``librosa.load(sr=22050, mono=True)`` of the same clips stored as 44.1 kHz stereo MP3 + a random crop.

Loader rates are whole epochs (worker start-up and the 512-crop shuffle-buffer fill included). "track GB/s"
= PCM of the tracks consumed per second (clips/s x track bytes): the rate at which an epoch walks the data
set, comparable with (a) (with ``partial_reads`` on, most of those bytes are seeked over, not read).
"crop GB/s" = bytes of crops delivered.

    python benchmarks/bench_loader.py --quick
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from shards import format as fmt
from shards.crop_stream import CropStream
from shards.reader import make_loader

SR = 22050


def _tone(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """Cheap music-like float32 mono signal: two harmonics + noise, in [-1, 1]."""
    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    f = rng.uniform(80, 800)
    x = 0.4 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 2.01 * f * t)
    return (x + 0.05 * rng.standard_normal(t.shape[0]).astype(np.float32)).astype(np.float32)


def write_data(root: Path, tracks: int, seconds: float, shards: int, mp3_clips: int) -> list[Path]:
    """Shard set under ``root/shards`` and ``mp3_clips`` MP3 sources under ``root/mp3``."""
    rng = np.random.default_rng(0)
    shard_dir = root / "shards"
    shard_dir.mkdir(parents=True)
    (root / "mp3").mkdir()
    per = -(-tracks // shards)
    entries, mp3s = [], []
    base = _tone(rng, seconds, SR)
    for s in range(shards):
        name = fmt.shard_name("train", s)
        keys = range(s * per, min(tracks, (s + 1) * per))
        with tarfile.open(shard_dir / name, "w") as tar:
            for k in keys:
                pcm = fmt.encode_pcm(np.roll(base, k * 997))  # distinct content, no per-track synthesis cost
                meta = {"key": f"t{k:06d}", "label": "a", "label_index": k % 10, "fold": -1}
                for member, data in ((f"t{k:06d}.json", fmt.encode_meta(meta)), (f"t{k:06d}.pcm", pcm)):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, fileobj=io.BytesIO(data))
        size = (shard_dir / name).stat().st_size
        entries.append({"name": name, "samples": len(keys), "bytes": size, "sha256": ""})
    manifest = {
        "format_version": fmt.FORMAT_VERSION,
        "kind": "audio",
        "sample_rate": SR,
        "labels": [str(i) for i in range(10)],
        "folds": 0,
        "splits": {
            "train": {"tracks": tracks, "seconds": tracks * seconds, "per_label": {}, "shards": entries}
        },
    }
    (shard_dir / fmt.MANIFEST_NAME).write_text(json.dumps(manifest))
    for k in range(mp3_clips):
        x = _tone(rng, seconds, 44100)
        path = root / "mp3" / f"t{k:06d}.mp3"
        sf.write(path, np.stack([x, np.roll(x, 100)], axis=1) * 0.5, 44100, format="MP3")
        mp3s.append(path)
    return mp3s


def raw_read(paths: list[Path], repeats: int) -> float:
    """GB/s of sequential 8 MB reads (first pass warms the page cache and is not timed)."""
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    total = 0
    best = 0.0
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        total = 0
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while n := f.readinto(view):
                    total += n
        dt = time.perf_counter() - t0
        if r:
            best = max(best, total / dt / 1e9)
    return best


def loader_run(
    shard_dir: Path, workers: int, partial: bool, epochs: int, seg: int, bs: int
) -> dict[str, float]:
    """Whole epochs through ``make_loader`` (worker start-up and shuffle-buffer fill included)."""
    stream = CropStream(
        shard_dir, "train", crop_samples=seg, batch_size=bs, partial_reads=partial
    )
    clips = 0
    first = 0.0
    t0 = time.perf_counter()
    for e in range(epochs):
        stream.set_epoch(e)
        t_epoch = time.perf_counter()
        for i, b in enumerate(make_loader(stream, num_workers=workers, pin_memory=False)):
            if i == 0:
                first += time.perf_counter() - t_epoch
            clips += b["wave"].shape[0]
    return {"clips": clips, "seconds": time.perf_counter() - t0, "first": first / epochs}


def handover_ms(bs: int, seg: int, batches: int = 60) -> float:
    """ms per batch a bare DataLoader worker needs to hand an int16 (bs, seg) batch to the main process."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    class Zeros(IterableDataset):
        def __iter__(self):
            for _ in range(batches):
                yield {"wave": torch.from_numpy(np.zeros((bs, seg), np.int16))}

    t0 = time.perf_counter()
    n = sum(1 for _ in DataLoader(Zeros(), batch_size=None, num_workers=1))
    return (time.perf_counter() - t0) / n * 1e3


def librosa_run(mp3s: list[Path], seg_seconds: float) -> float:
    import librosa

    rng = np.random.default_rng(0)
    seg = int(seg_seconds * SR)
    t0 = time.perf_counter()
    for p in mp3s:
        y, _ = librosa.load(p, sr=SR, mono=True)
        off = int(rng.integers(0, max(1, len(y) - seg)))
        _ = np.ascontiguousarray(y[off : off + seg])
    return len(mp3s) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data set, few repeats (~1 minute)")
    ap.add_argument(
        "--tracks", type=int, default=None, help="tracks in the shard set (default 1000, quick 200)"
    )
    ap.add_argument("--seconds", type=float, default=30.0, help="track length, s")
    ap.add_argument("--segment-seconds", type=float, default=3.0, help="training crop length, s")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()

    tracks = args.tracks or (400 if args.quick else 2000)
    mp3_clips = 6 if args.quick else 40
    epochs = 2 if args.quick else 3
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        t0 = time.perf_counter()
        mp3s = write_data(root, tracks, args.seconds, shards=8, mp3_clips=mp3_clips)
        shard_dir = root / "shards"
        tars = sorted(shard_dir.glob("*.tar"))
        data_gb = sum(p.stat().st_size for p in tars) / 1e9
        print(
            f"data: {tracks} tracks x {args.seconds:.0f} s @ {SR} Hz in {len(tars)} shards = {data_gb:.2f} GB "
            f"(+{mp3_clips} MP3 44.1 kHz stereo), written in {time.perf_counter() - t0:.1f} s; "
            f"{os.cpu_count()} CPUs"
        )

        raw = raw_read(tars, repeats=2 if args.quick else 3)
        print(f"(a) raw sequential read (8 MB chunks, warm): {raw:.2f} GB/s")

        seg = int(args.segment_seconds * SR)
        track_bytes = int(args.seconds * SR) * 2
        results = {}
        print(f"(b) loader, {args.segment_seconds:.0f}-s crops, batch {args.batch_size}, {epochs} epochs:")
        for partial in (True, False):
            for w in (int(x) for x in args.workers.split(",")):
                r = loader_run(shard_dir, w, partial, epochs, seg, args.batch_size)
                cps = r["clips"] / r["seconds"]
                results[(partial, w)] = cps
                print(
                    f"    partial_reads={partial!s:5} workers={w}: {cps:6.0f} clips/s = track "
                    f"{cps * track_bytes / 1e9:5.2f} GB/s, crop {cps * seg * 2 / 1e9:5.2f} GB/s "
                    f"(first batch after {r['first'] * 1e3:.0f} ms)"
                )

        ho = handover_ms(args.batch_size, seg)
        print(f"    (bare DataLoader worker -> main hand-over of one batch: {ho:.1f} ms, start-up included)")

        lib = librosa_run(mp3s, args.segment_seconds)
        print(f"(c) librosa.load(sr={SR}, mono=True) of MP3 + crop: {lib:.2f} clips/s")

        whole0 = results[(False, 0)] * track_bytes / 1e9
        best = max(results.values())
        print("ratios:")
        print(f"    loader (whole-track reads, in-process) / raw read = {whole0 / raw:.2f}  (target >= 0.5)")
        print(
            f"    loader (default, in-process) / librosa = {results[(True, 0)] / lib:.0f}x  (target >= 20x)"
        )
        print(f"    best loader config / librosa = {best / lib:.0f}x")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
