"""Ingest throughput: make_shards (scan + probe + dedupe + decode + resample + tar write) vs bare decode.

The baseline is the least any ingest must do: soundfile decode + channel average + soxr HQ resample of the
same files with the same number of worker processes (``Pool.imap``, results not even sent back). The
ratio ``ingest files/s / baseline files/s`` is the ingest's efficiency (target >= 0.80).

    python benchmarks/bench_ingest.py            # 48 x 30 s 44.1 kHz stereo clips (WAV/FLAC/MP3)
    python benchmarks/bench_ingest.py --quick    # 12 clips

``--procs 1,2`` also runs the ingest as that many ranks of one job (spawned processes meeting in a gloo group
over ``MASTER_ADDR``/``MASTER_PORT``, as ``accelerate launch`` / ``torchrun`` would start them; ``--workers`` decode
processes each) and prints files/s and the efficiency per process against bare decode with as many workers in
all. ``--serial-paths 100000`` measures what a multi-machine ingest does on one process only (rank 0's scan of
a tree of that many tiny files, the plan's save and broadcast, the manifest) for the model in RESULTS.md.

Then the formats libsndfile cannot read or reads slowly (``benchmarks/formats.py``): AAC ``.m4a`` and Opus
tracks decoded by ``shards.audio.load_audio`` against ``librosa.load`` of the same files (target >= 3x on
AAC), and each format's raw decode by libsndfile and by PyAV (``--format-tracks 0`` skips it).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from shards.ingest import IngestConfig, run_ingest
from shards.layouts import scan_source
from shards.plan import scan_digest
from shards.resumable import DoneRecords, atomic_write_json

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


def _rank_main(rank: int, world: int, port: int, src: str, out: str, workers: int, start, times) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")  # fmt: skip
    import torch.distributed  # noqa: F401, PLC0415 -- imported before the clock, like the launcher's own start-up

    start.wait()  # imports done in every process before the clock (the rendezvous is timed: once per job)
    t0 = time.perf_counter()
    run_ingest(IngestConfig(source=Path(src), out=Path(out), workers=workers, progress=False, shard_size="64MB"))
    times[rank] = (t0, time.perf_counter())


def bench_ranks(src: Path, out: Path, procs: int, workers: int) -> float:
    """files/s of one ingest run as ``procs`` ranks (``workers`` decode processes each), imports excluded."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    start, times = ctx.Barrier(procs), ctx.Manager().dict()
    ps = [ctx.Process(target=_rank_main, args=(r, procs, port, str(src), str(out), workers, start, times))
          for r in range(procs)]  # fmt: skip
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    assert all(p.exitcode == 0 for p in ps), [p.exitcode for p in ps]
    t0, t1 = min(t[0] for t in times.values()), max(t[1] for t in times.values())
    n = len([p for p in src.rglob("*") if p.is_file()])
    return n / (t1 - t0)


def bench_serial(root: Path, n: int) -> dict[str, float]:
    """Seconds of what only rank 0 does, on a tree of ``n`` tiny WAV files (100 label folders): the scan, the
    plan's save and broadcast (pickle round trip) for ``n`` tracks, the manifest (one done-record per shard)."""
    wav = (b"RIFF" + (36 + 20).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
           + bytes.fromhex("01000100") + (22050).to_bytes(4, "little") + (44100).to_bytes(4, "little")
           + bytes.fromhex("02001000") + b"data" + (20).to_bytes(4, "little") + bytes(20))  # fmt: skip
    t0 = time.perf_counter()
    for i in range(n):
        p = root / f"g{i % 100:03d}" / f"t{i:06d}.wav"
        p.parent.mkdir(exist_ok=True, parents=True)
        p.write_bytes(wav)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    scan = scan_source(root, "folder")
    scan_digest(scan.tracks, scan.skipped)
    out = {"make_tree_s": made, "scan_s": time.perf_counter() - t0, "tracks": float(len(scan.tracks))}
    shards = max(1, n // 190)  # 30-s clips at 22.05 kHz in 256-MB shards: ~190 tracks each
    plan = {"tracks": [{"key": t.rel.replace("/", "_")[:-4], "rel": t.rel, "path": str(t.path), "label": t.label,
                        "track_id": None, "artist": None, "split": "train", "fold": -1, "orig_sample_rate": 44100,
                        "channels": 2} for t in scan.tracks],
            "shards": [{"name": f"train-{j:06d}.tar", "split": "train", "start": j, "stop": j + 1} for j in range(shards)]}  # fmt: skip
    t0 = time.perf_counter()
    atomic_write_json(root / "plan.json", plan)
    pickle.loads(pickle.dumps(plan))
    out["plan_save_broadcast_s"] = time.perf_counter() - t0
    done = DoneRecords(root, ".state")
    done.mkdir()
    rec = {"shard": {"name": "x", "samples": 190, "bytes": 256_000_000, "sha256": "0" * 64}, "skipped": [],
           "per_label": {f"g{k:03d}": 2 for k in range(100)}, "seconds": 5700.0}  # fmt: skip
    for s in plan["shards"]:
        done.write(s["name"], rec)
    t0 = time.perf_counter()
    recs = [done.read(s["name"]) for s in plan["shards"]]
    atomic_write_json(root / "manifest.json", {"splits": {"train": {"shards": [r["shard"] for r in recs]}}})
    out["manifest_s"] = time.perf_counter() - t0
    out["shards"] = float(shards)
    return out


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
    ap.add_argument("--procs", default="", help="also run the ingest as these numbers of ranks, e.g. 1,2")
    ap.add_argument("--serial-paths", type=int, default=0, help="measure rank 0's serial work on N tiny files")
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
        for procs in [int(x) for x in args.procs.split(",") if x]:
            b = bench_baseline(paths, procs * args.workers)
            r = bench_ranks(tmp / "src", tmp / f"ranks{procs}", procs, args.workers)
            print(f"{procs} rank(s) x {args.workers} worker(s): {r:8.2f} files/s; bare decode with "
                  f"{procs * args.workers} workers {b:8.2f} files/s; efficiency {r / b:6.1%}; per process "
                  f"{r / procs:8.2f} files/s")  # fmt: skip
    if args.serial_paths:
        with tempfile.TemporaryDirectory(prefix="bench_serial_") as tmp:
            res = bench_serial(Path(tmp), args.serial_paths)
        print(", ".join(f"{k} {v:.3f}" for k, v in res.items()))
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
