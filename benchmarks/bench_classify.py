"""Batch classification throughput: ``engine.classify`` vs a plain per-file librosa script, and vs bare decoding.

Corpus: N generated 30-s tracks in mixed formats (44.1-kHz stereo WAV, 22.05-kHz FLAC, 44.1-kHz OGG,
44.1-kHz MP3, 48-kHz AIFF) written to a temporary folder. Model: the cnn model of configs/cnn.yaml (its model section:
128-mel log-mel, n_fft 2048, hop 512, 3-s windows at 22050 Hz, channels 32-64-128), untrained (speed only).

Measured, on the same files and the same cores:

- ``engine``: ``classify(ckpt, [folder], out)`` -- decode workers (one per core), every 3-s window of every
  track, batches of ``--batch-size`` windows, mean of window probabilities;
- ``librosa``: the usual script -- per file ``librosa.load(sr=22050)`` + ``librosa.feature.melspectrogram``
  + ``power_to_db`` of the same windows, then the same model's backbone on that file's windows, one file
  after the other in one process;
- ``decode``: bare ``soundfile`` + ``soxr`` decode-and-resample of the same files (``shards.audio.load_audio``)
  in a pool of as many processes as the engine has decode workers -- the ceiling for an input-bound job;
  the engine's efficiency is its track rate over this one.
- ``long file``: peak RSS of a ``python -m engine.classify`` subprocess on one long 44.1-kHz stereo WAV
  (chunked decoding keeps it bounded; a whole-file float32 decode alone would need the stated size).

- ``formats``: AAC ``.m4a`` and Opus tracks, ``shards.audio.load_audio`` (the engine's decoder) against
  ``librosa.load`` of the same files (target >= 3x on AAC), and each format's raw decode by libsndfile and by
  PyAV (``benchmarks/formats.py``, shared with bench_ingest.py; ``--format-tracks 0`` skips it).

Reported: tracks/s, audio-hours/s, the ratio engine / librosa (target >= 2x on CPU), the efficiency engine /
decode, the peak RSS, the format ratios. One JSON line at the end.

    python benchmarks/bench_classify.py [--quick] [--tracks 48] [--batch-size 64] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.checkpoint import load_model  # noqa: E402
from engine.checkpoint_format import save_checkpoint  # noqa: E402
from engine.classify import classify  # noqa: E402
from engine.config import from_dict, to_dict  # noqa: E402
from engine.models import ModelConfig, build_model  # noqa: E402
from shards.audio import load_audio  # noqa: E402
from shards.reader import default_num_workers  # noqa: E402
from shards.windows import window_starts  # noqa: E402

SR = 22050
SEG = 3 * SR  # 3-s windows
LABELS = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
FORMATS = [  # (extension, source rate, channels, soundfile format/subtype)
    ("wav", 44100, 2, {"subtype": "PCM_16"}),
    ("flac", 22050, 1, {}),
    ("ogg", 44100, 2, {}),
    ("mp3", 44100, 2, {}),
    ("aiff", 48000, 1, {}),
]


def make_corpus(folder: Path, n: int, seconds: float) -> list[Path]:
    """``n`` tracks of harmonic tones + noise bursts, cycling through the formats."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        ext, sr, ch, kw = FORMATS[i % len(FORMATS)]
        t = np.arange(int(seconds * sr)) / sr
        f0 = rng.uniform(80, 400)
        x = sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) for k in range(1, 6))
        x = x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)) + 0.02 * rng.standard_normal(t.size)
        x = np.stack([x * (1 - 0.2 * c) for c in range(ch)], axis=1).astype(np.float32)
        p = folder / f"track {i:04d}.{ext}"
        sf.write(p, x, sr, **kw)
        paths.append(p)
    return paths


def make_checkpoint(path: Path) -> Path:
    cfg = from_dict(
        ModelConfig,
        {
            "arch": "cnn",
            "params": {"channels": [32, 64, 128], "hidden": 128, "input_norm": "channel"},
            "features": {
                "features": ["logmel"],
                "n_fft": 2048,
                "hop_length": 512,
                "n_mels": 128,
                "top_db": 80.0,
            },
        },
    )
    torch.manual_seed(0)
    model = build_model(cfg, len(LABELS), SR, SEG)
    return save_checkpoint(
        path, model=model, config={"model": to_dict(cfg)}, labels=LABELS, sample_rate=SR,
        segment_samples=SEG, epoch=0, metrics={},
    )  # fmt: skip


def run_librosa(ckpt: Path, paths: list[Path]) -> tuple[float, dict[str, list[float]]]:
    """The plain script: per file librosa.load + log-mel + the same backbone; returns (seconds, probs)."""
    import librosa  # noqa: PLC0415 -- reference only

    model, _ = load_model(ckpt, "cpu")
    out = {}
    t0 = time.perf_counter()
    for p in paths:
        y, _ = librosa.load(p, sr=SR, mono=True)
        y = np.pad(y, (0, max(0, SEG - y.size)))
        wins = [y[s : s + SEG] for s in window_starts(y.size, SEG)]
        feats = []
        for w in wins:
            m = librosa.feature.melspectrogram(y=w, sr=SR, n_fft=2048, hop_length=512, n_mels=128, power=2.0)
            feats.append(librosa.power_to_db(m, ref=np.max, top_db=80.0))
        x = torch.from_numpy(np.stack(feats)[:, None].astype(np.float32))  # (n, 1, 128, frames)
        with torch.inference_mode():
            probs = torch.softmax(model.backbone(x), -1).mean(0)
        out[str(p)] = probs.tolist()
    return time.perf_counter() - t0, out


def _decode_one(p: str) -> int:
    return int(load_audio(p, SR)[0].size)


def run_decode(paths: list[Path], workers: int) -> float:
    """Bare soundfile + soxr decode of every file with ``workers`` processes; returns seconds."""
    ctx = get_context("fork")
    with ctx.Pool(workers) as pool:
        pool.map(_decode_one, [str(paths[0])])  # pool start-up outside the timing
        t0 = time.perf_counter()
        pool.map(_decode_one, [str(p) for p in paths], chunksize=1)
        return time.perf_counter() - t0


def _write_wav(path: Path, seconds: float, sr: int = 44100) -> None:
    """A 44.1-kHz stereo WAV written in 30-s blocks (bounded memory here too)."""
    n = int(seconds * sr)
    rng = np.random.default_rng(1)
    with sf.SoundFile(path, "w", sr, 2, subtype="PCM_16") as fh:
        for a in range(0, n, sr * 30):
            b = min(n, a + sr * 30)
            t = np.arange(a, b) / sr
            x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(b - a)
            fh.write(np.stack([x, x], axis=1).astype(np.float32))


def _classify_subprocess(ckpt: Path, path: Path, workers: int) -> dict:
    out = path.with_suffix(".jsonl")
    cmd = [sys.executable, "-m", "engine.classify", str(ckpt), str(path), "--out", str(out),
           "--num-workers", str(workers), "--no-progress", "--batch-size", "32"]  # fmt: skip
    path_env = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keep carried wheels
    res = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": path_env}, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(out.read_text().splitlines()[0])


def run_long_file(ckpt: Path, folder: Path, minutes: float, workers: int) -> dict[str, float]:
    """Peak RSS (MB, largest process) of classify subprocesses on a 30-s file, then on a long file.

    ``RUSAGE_CHILDREN`` keeps the maximum over every child waited for, so the short run comes first and the
    long run's figure is max(short, long): equal figures mean the long file costs no extra memory.
    """
    _write_wav(folder / "short.wav", 30.0)
    _classify_subprocess(ckpt, folder / "short.wav", workers)
    rss_short = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    _write_wav(folder / "long.wav", minutes * 60)
    t0 = time.perf_counter()
    rec = _classify_subprocess(ckpt, folder / "long.wav", workers)
    return {
        "minutes": minutes,
        "seconds": time.perf_counter() - t0,
        "windows": rec["windows"],
        "peak_rss_mb_30s_file": rss_short,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "whole_file_float32_mb": minutes * 60 * 44100 * 2 * 4 / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 tracks, a 12-minute long file")
    ap.add_argument("--tracks", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each track")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: all cores)")
    ap.add_argument("--long-minutes", type=float, default=30.0)
    ap.add_argument("--format-tracks", type=int, default=None,
                    help="AAC and Opus tracks each for the librosa.load comparison (default 6, --quick 3; 0: skip)")  # fmt: skip
    args = ap.parse_args()
    if args.quick:
        args.tracks, args.long_minutes = 10, 12.0
    workers = args.workers or default_num_workers(decode=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="bench_classify_") as tmp:
        tmp = Path(tmp)
        folder = tmp / "music"
        folder.mkdir()
        paths = make_corpus(folder, args.tracks, args.seconds)
        ckpt = make_checkpoint(tmp / "cnn.pt")
        audio_h = args.tracks * args.seconds / 3600
        # first: RUSAGE_CHILDREN keeps the largest child ever waited for, so nothing else may come before
        long = run_long_file(ckpt, tmp, args.long_minutes, workers)

        summary = classify(ckpt, [folder], tmp / "out.jsonl", batch_size=args.batch_size, num_workers=workers,
                           precision="fp32", progress=False)  # fmt: skip
        t_engine = summary["elapsed_s"]
        engine_probs = {}
        for line in (tmp / "out.jsonl").read_text().splitlines():
            rec = json.loads(line)
            engine_probs[rec["path"]] = {t["label"]: t["prob"] for t in rec["top"]}
        t_librosa, lib_probs = run_librosa(ckpt, paths)
        # agreement of the two pipelines (librosa features vs the torch front end; not bit-identical)
        agree = np.mean(
            [max(d, key=d.get) == LABELS[int(np.argmax(lib_probs[p]))] for p, d in engine_probs.items()]
        )
        t_decode = run_decode(paths, workers)

    n_fmt = args.format_tracks if args.format_tracks is not None else (3 if args.quick else 6)
    formats = {}
    if n_fmt > 0:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import formats as decode_formats  # noqa: PLC0415 -- benchmarks/formats.py, shared with bench_ingest.py

        formats = decode_formats.run(n_fmt, args.seconds, long_minutes=3.0 if args.quick else 10.0)

    res = {
        "bench": "classify",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "tracks": args.tracks,
        "track_seconds": args.seconds,
        "decode_workers": workers,
        "batch_size": args.batch_size,
        "engine_tracks_per_s": args.tracks / t_engine,
        "engine_audio_h_per_s": audio_h / t_engine,
        "librosa_tracks_per_s": args.tracks / t_librosa,
        "librosa_audio_h_per_s": audio_h / t_librosa,
        "speedup_vs_librosa": t_librosa / t_engine,
        "decode_tracks_per_s": args.tracks / t_decode,
        "efficiency_vs_decode": t_decode / t_engine,
        "top1_agreement_engine_vs_librosa": float(agree),
        "long_file": long,
        "formats": formats,
    }
    print(f"engine  : {res['engine_tracks_per_s']:.2f} tracks/s, {res['engine_audio_h_per_s']:.4f} audio-h/s")
    print(
        f"librosa : {res['librosa_tracks_per_s']:.2f} tracks/s, {res['librosa_audio_h_per_s']:.4f} audio-h/s"
    )
    print(f"speed-up vs librosa script: {res['speedup_vs_librosa']:.2f}x (target >= 2x on CPU)")
    print(
        f"bare decode+resample ({workers} procs): {res['decode_tracks_per_s']:.2f} tracks/s -> engine efficiency "
        f"{res['efficiency_vs_decode']:.0%}"
    )
    print(
        f"long file ({long['minutes']:.0f} min 44.1-kHz stereo, {long['windows']} windows): peak RSS "
        f"{long['peak_rss_mb']:.0f} MB vs {long['peak_rss_mb_30s_file']:.0f} MB for a 30-s file "
        f"(a whole-file float32 decode alone: {long['whole_file_float32_mb']:.0f} MB)"
    )
    if formats:
        aac = formats["load"]["aac .m4a"]
        print(f"AAC .m4a decode vs librosa.load: {aac['speedup_vs_librosa']:.2f}x wall, "
              f"{aac['cpu_ratio_vs_librosa']:.2f}x CPU (target >= 3x)")  # fmt: skip
    print(json.dumps(res))


if __name__ == "__main__":
    main()
