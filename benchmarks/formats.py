"""Decode rate of what libsndfile cannot read (AAC ``.m4a``) or reads slowly (Opus), shared by bench_ingest.py
and bench_classify.py.

- ``load``: ``shards.audio.load_audio(path, 22050)`` against ``librosa.load(path, sr=22050)`` of the same
  files, one process, interleaved per file, best of ``repeats``; the ratio is librosa's time over ours,
  in wall time and in CPU time (this process plus the ffmpeg processes librosa spawns).
  librosa reads ``.m4a`` through audioread, which spawns the ``ffmpeg`` command per file: the system's if
  there is one, else imageio-ffmpeg's binary put on PATH (said in the output); ``.opus`` through libsndfile.
- ``ranged``: a 3-s read near the end of a long file (seeking) against the whole file's decode.
- ``decoders``: the raw decode alone (no resampling) of the same 30-s clip by libsndfile and by PyAV, in
  CPU seconds (``time.process_time``, steadier on a shared machine), per format -- the measurement behind
  ``shards.audio``'s choice of decoder for each format.

    python benchmarks/formats.py [--tracks 6] [--seconds 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "shards"))  # the FFmpeg-encoder fixtures: one writer, not two

from conftest import write_av_clip, write_clip  # noqa: E402

from shards import ffmpeg_decode  # noqa: E402
from shards.audio import load_audio  # noqa: E402

SR = 22050


def ensure_ffmpeg_command() -> str:
    """Make an ``ffmpeg`` command reachable for audioread; returns where it comes from (for the output)."""
    found = shutil.which("ffmpeg")
    if found:
        return f"system ffmpeg ({found})"
    try:
        import imageio_ffmpeg  # noqa: PLC0415 -- benchmark/test reference only
    except ImportError:
        return "none: librosa.load cannot read .m4a here (pip install imageio-ffmpeg)"
    bindir = Path(tempfile.mkdtemp(prefix="ffmpeg_bin_"))
    (bindir / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    import audioread  # noqa: PLC0415

    audioread.available_backends(flush_cache=True)  # it keeps the backends it found on its first call
    return f"imageio-ffmpeg's binary ({imageio_ffmpeg.get_ffmpeg_version()}), no system ffmpeg"


def make_tracks(folder: Path, n: int, seconds: float) -> dict[str, list[Path]]:
    """``n`` AAC ``.m4a`` (44.1 kHz stereo, FFmpeg's AAC encoder at its default 128 kbit/s) and ``n`` Opus
    ``.opus`` tracks (48 kHz stereo, libopus' default 96 kbit/s)."""
    out: dict[str, list[Path]] = {"aac .m4a": [], "opus .opus": []}
    for i in range(n):
        out["aac .m4a"].append(
            write_av_clip(folder / f"track {i:03d}.m4a", "aac", seconds=seconds, seed=i)[0]
        )
        out["opus .opus"].append(
            write_av_clip(folder / f"track {i:03d}.opus", "opus", seconds=seconds, seed=i)[0]
        )
    return out


def _cpu_now() -> float:
    """CPU seconds of this process and of its waited-for children (audioread's ffmpeg processes)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def bench_load(paths: list[Path], repeats: int) -> dict:
    """Per file, best of ``repeats``: ours vs librosa.load, wall and CPU (children included); totals,
    ratios, agreement. On a busy machine the CPU ratio is the steadier figure."""
    import librosa  # noqa: PLC0415 -- reference only

    ours = theirs = ours_cpu = theirs_cpu = 0.0
    max_diff = 0.0
    same_len = True
    for p in paths:
        t_ours = t_theirs = c_ours = c_theirs = float("inf")
        for _ in range(repeats):
            c0, t0 = _cpu_now(), time.perf_counter()
            y, _ = load_audio(p, SR)
            t_ours, c_ours = min(t_ours, time.perf_counter() - t0), min(c_ours, _cpu_now() - c0)
            c0, t0 = _cpu_now(), time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "PySoundFile failed. Trying audioread instead."
                ref, _ = librosa.load(str(p), sr=SR, mono=True)
            t_theirs, c_theirs = min(t_theirs, time.perf_counter() - t0), min(c_theirs, _cpu_now() - c0)
        ours, theirs = ours + t_ours, theirs + t_theirs
        ours_cpu, theirs_cpu = ours_cpu + c_ours, theirs_cpu + c_theirs
        same_len &= y.shape == ref.shape
        if y.shape == ref.shape:
            max_diff = max(max_diff, float(np.max(np.abs(y - ref))))
    n = len(paths)
    return {"files": n, "ours_ms_per_file": 1e3 * ours / n, "librosa_ms_per_file": 1e3 * theirs / n,
            "speedup_vs_librosa": theirs / ours, "ours_cpu_ms_per_file": 1e3 * ours_cpu / n,
            "librosa_cpu_ms_per_file": 1e3 * theirs_cpu / n, "cpu_ratio_vs_librosa": theirs_cpu / ours_cpu,
            "same_length": bool(same_len), "max_abs_diff": max_diff}  # fmt: skip


def _cpu(fn, k: int) -> float:
    best = float("inf")
    for _ in range(k):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def bench_decoders(folder: Path, seconds: float, k: int = 5) -> dict[str, dict]:
    """CPU ms of the raw decode of one clip per format by libsndfile and by PyAV (soundfile's float32)."""
    clips = {
        "mp3": write_clip(folder / "d.mp3", sample_rate=44100, channels=2, seconds=seconds),
        "opus": write_av_clip(folder / "d.opus", "opus", seconds=seconds)[0],
        "ogg vorbis": write_clip(folder / "d.ogg", sample_rate=44100, channels=2, seconds=seconds),
        "flac": write_clip(folder / "d.flac", sample_rate=44100, channels=2, seconds=seconds),
        "wav": write_clip(folder / "d.wav", sample_rate=44100, channels=2, seconds=seconds),
    }
    res = {}
    for name, p in clips.items():
        a = sf.read(str(p), dtype="float32", always_2d=True)[0]
        b = ffmpeg_decode.read(p)[0]
        diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")
        t_sf = _cpu(lambda p=p: sf.read(str(p), dtype="float32", always_2d=True), k)
        t_av = _cpu(lambda p=p: ffmpeg_decode.read(p), k)
        res[name] = {"libsndfile_cpu_ms": 1e3 * t_sf, "pyav_cpu_ms": 1e3 * t_av, "pyav_speedup": t_sf / t_av,
                     "max_abs_diff": diff}  # fmt: skip
    return res


def bench_ranged(folder: Path, minutes: float) -> dict[str, dict]:
    """A 3-s ``load_audio`` read near the end of a long AAC ``.m4a`` / Opus file (it seeks) against the
    whole file's decode: what a chunked reader of a long podcast pays per chunk."""
    res = {}
    for name, codec, ext in (("aac .m4a", "aac", "m4a"), ("opus .opus", "opus", "opus")):
        p, _ = write_av_clip(folder / f"long.{ext}", codec, seconds=minutes * 60, channels=1, seed=7)
        offset = minutes * 60 - 10.0
        t_part = min(_timed(lambda p=p, o=offset: load_audio(p, SR, offset_seconds=o, max_seconds=3.0))
                     for _ in range(3))  # fmt: skip
        t_full = _timed(lambda p=p: load_audio(p, SR))
        res[name] = {"minutes": minutes, "ranged_3s_ms": 1e3 * t_part, "full_decode_ms": 1e3 * t_full}
    return res


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(
    n: int = 6, seconds: float = 30.0, repeats: int = 3, decoders: bool = True, long_minutes: float = 10.0
) -> dict:
    """Both measurements on fresh files; prints a table and returns the figures."""
    ffmpeg = ensure_ffmpeg_command()
    res: dict = {"ffmpeg_command": ffmpeg, "track_seconds": seconds, "load": {}, "decoders": {}}
    with tempfile.TemporaryDirectory(prefix="bench_formats_") as tmp:
        tmp = Path(tmp)
        tracks = make_tracks(tmp, n, seconds)
        print(f"AAC/Opus decode vs librosa.load ({n} x {seconds:.0f}-s stereo tracks each; "
              f"librosa's ffmpeg: {ffmpeg})")  # fmt: skip
        for name, paths in tracks.items():
            r = bench_load(paths, repeats)
            res["load"][name] = r
            print(f"  {name:11s}: ours {r['ours_ms_per_file']:6.1f} ms/file, librosa.load "
                  f"{r['librosa_ms_per_file']:6.1f} ms/file -> {r['speedup_vs_librosa']:.2f}x wall; CPU "
                  f"{r['ours_cpu_ms_per_file']:.0f} vs {r['librosa_cpu_ms_per_file']:.0f} ms -> "
                  f"{r['cpu_ratio_vs_librosa']:.2f}x  (same length: {r['same_length']}, max |diff| "
                  f"{r['max_abs_diff']:.1e})")  # fmt: skip
        if decoders:
            res["decoders"] = bench_decoders(tmp, seconds)
            print(f"raw decode of one {seconds:.0f}-s clip, CPU ms (best of 5): libsndfile vs PyAV")
            for name, r in res["decoders"].items():
                print(f"  {name:11s}: libsndfile {r['libsndfile_cpu_ms']:6.1f}  PyAV {r['pyav_cpu_ms']:6.1f}  "
                      f"-> PyAV {r['pyav_speedup']:.2f}x  (max |diff| {r['max_abs_diff']:.1e})")  # fmt: skip
        if long_minutes > 0:
            res["ranged"] = bench_ranged(tmp, long_minutes)
            print(f"3-s read near the end of a {long_minutes:.0f}-min mono file (seeks) vs its whole decode")
            for name, r in res["ranged"].items():
                print(f"  {name:11s}: {r['ranged_3s_ms']:6.1f} ms vs {r['full_decode_ms']:7.1f} ms")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=6, help="tracks per format")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--long-minutes", type=float, default=10.0, help="long file for the ranged read (0: skip)"
    )
    args = ap.parse_args(argv)
    print(json.dumps(run(args.tracks, args.seconds, args.repeats, long_minutes=args.long_minutes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
