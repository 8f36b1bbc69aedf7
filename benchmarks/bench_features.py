"""Throughput of the feature front end against librosa, clip by clip (the seed's way).

Features: log-mel (128) + MFCC (20, with delta and delta-delta) + chroma (12), on batches of synthetic music
(harmonic notes + noise bursts, 22,050 Hz) of 3-s and 30-s clips. Compared in one run:

* ``torch``   -- ``kernels.features`` Frontend, torch.stft backend (fixed tuning 0.0)
* ``torch+tuning`` -- same, with the batched per-clip tuning estimation (== librosa's default chroma_stft)
* ``nnaudio`` -- the Frontend with nnAudio's conv STFT
* ``librosa (seed)`` -- three separate librosa calls per clip: melspectrogram + power_to_db, mfcc,
  chroma_stft with its default tuning estimation (no deltas)
* ``librosa tuning=0`` -- the same with ``chroma_stft(..., tuning=0.0)``

On CUDA (``--device cuda``) it also prints an analytic estimate of FLOPs and bytes per clip and the achieved
fraction of the H100's 3.35 TB/s HBM bandwidth; ``--compile`` wraps the front end in ``torch.compile``
(``--compile reduce-overhead`` also uses CUDA graphs).

    python benchmarks/bench_features.py --quick            # a minute on 2 CPU cores
    python benchmarks/bench_features.py --device cuda --batch 64 --compile reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from kernels.features import FrontendConfig, build_frontend

SR = 22050
H100_BW = 3.35e12  # bytes/s, H100 SXM HBM3


def synth_batch(batch: int, seconds: float, seed: int = 0) -> np.ndarray:
    """``(batch, seconds * SR)`` float32 synthetic music: harmonic notes, noise bursts, a noise floor."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n, dtype=np.float32) / SR
    out = np.empty((batch, n), dtype=np.float32)
    for i in range(batch):
        y = np.zeros(n, dtype=np.float32)
        note = int(0.5 * SR)
        for start in range(0, n, note):
            seg = slice(start, min(n, start + note))
            tt = t[seg] - t[start]
            f0 = 440.0 * 2 ** ((rng.integers(45, 76) - 69) / 12)
            env = np.exp(-3.0 * tt)
            for h in range(1, 5):
                y[seg] += (0.25 / h) * env * np.sin(2 * np.pi * h * f0 * tt)
        for start in range(0, n, SR // 4):
            k = min(n - start, int(0.05 * SR))
            y[start : start + k] += 0.3 * rng.standard_normal(k).astype(np.float32)
        y += 0.003 * rng.standard_normal(n).astype(np.float32)
        out[i] = 0.9 * y / np.abs(y).max()
    return out


def librosa_seed(y: np.ndarray, tuning: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed's per-clip features: three separate librosa calls."""
    import librosa

    mel = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=SR, n_fft=2048, hop_length=512, n_mels=128)
    )
    mfcc = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=20, n_fft=2048, hop_length=512, n_mels=128)
    chroma = librosa.feature.chroma_stft(y=y, sr=SR, n_fft=2048, hop_length=512, tuning=tuning)
    return mel, mfcc, chroma


def time_it(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Best (minimum) wall seconds of ``fn`` over ``repeats`` runs after one warm-up run.

    The minimum, not the mean: on a shared machine other processes only ever add time.
    """
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(min(times))


def cost_per_clip(cfg: FrontendConfig, num_samples: int) -> tuple[float, float]:
    """Analytic (FLOPs, bytes of memory traffic) per clip for logmel + mfcc(+deltas) + chroma.

    FLOPs: real FFT ~2.5 N log2 N per frame, the dense mel / chroma / DCT GEMMs, delta filters. Bytes: the
    unavoidable float32 tensors each written once and read by their consumers (wave in, complex STFT out and
    read, power written and read by two GEMMs, log-mel, MFCC, chroma, output) -- a lower bound for an
    unfused pipeline.
    """
    frames = 1 + num_samples // cfg.hop_length
    n_freq = cfg.n_fft // 2 + 1
    flops = frames * 2.5 * cfg.n_fft * math.log2(cfg.n_fft)
    flops += 2 * frames * n_freq * (cfg.n_mels + 12)  # mel + chroma GEMMs
    flops += 2 * frames * cfg.n_mels * cfg.n_mfcc  # DCT
    flops += 2 * frames * cfg.n_mfcc * cfg.delta_width * cfg.deltas
    flops += 10 * frames * (cfg.n_mels + n_freq)  # log10, clamp, power, normalisation (elementwise)
    out_bins = cfg.n_mels + cfg.n_mfcc * (1 + cfg.deltas) + 12
    nbytes = 4 * num_samples  # wave
    nbytes += 4 * frames * cfg.n_fft  # framed + windowed input to the FFT
    nbytes += 8 * frames * n_freq * 2  # complex STFT written, read
    nbytes += 4 * frames * n_freq * 3  # power written, read by mel and chroma GEMMs
    nbytes += 4 * frames * (cfg.n_mels * 3 + cfg.n_mfcc * (1 + cfg.deltas) * 2 + 12 * 2)  # intermediates
    nbytes += 4 * frames * out_bins * 2  # concatenated output
    return flops, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=32, help="clips per batch (default 32)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[3.0, 30.0], help="clip lengths in s")
    ap.add_argument("--repeats", type=int, default=3, help="timed batches per case (best of)")
    ap.add_argument("--librosa-clips", type=int, default=8, help="clips timed with librosa per length")
    ap.add_argument(
        "--compile",
        choices=["none", "default", "reduce-overhead", "max-autotune"],
        default="none",
        help="torch.compile mode for the torch backend (reduce-overhead = CUDA graphs on CUDA)",
    )
    ap.add_argument("--quick", action="store_true", help="batch 16, best of 2 batches, 3 librosa clips")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.repeats, args.librosa_clips = min(args.batch, 16), 2, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"torch threads={torch.get_num_threads()}, batch={args.batch}, compile={args.compile}"
    )
    base = FrontendConfig(features=["logmel", "mfcc", "chroma"], deltas=2)
    cases = {
        "torch": FrontendConfig(**{**base.__dict__, "backend": "torch"}),
        "torch+tuning": FrontendConfig(**{**base.__dict__, "backend": "torch", "estimate_tuning": True}),
        "nnaudio": FrontendConfig(**{**base.__dict__, "backend": "nnaudio"}),
    }
    results: dict[str, dict[str, float]] = {}
    for seconds in args.seconds:
        waves = synth_batch(args.batch, seconds)
        key = f"{seconds:g}s"
        res: dict[str, float] = {}
        wave_dev = torch.from_numpy(waves).to(device)
        for name, cfg in cases.items():
            fe = build_frontend(cfg, SR).to(device).eval()
            run = fe
            if args.compile != "none" and name == "torch":
                run = torch.compile(fe, mode=args.compile, dynamic=False)

            def step(run=run, wave_dev=wave_dev) -> torch.Tensor:
                with torch.inference_mode():
                    return run(wave_dev)

            res[name] = args.batch / time_it(step, args.repeats, sync)  # clips/s
        n_lib = min(args.librosa_clips, args.batch)
        for name, tuning in (("librosa (seed)", None), ("librosa tuning=0", 0.0)):
            librosa_seed(waves[0], tuning)  # warm-up (numba JIT, filterbank caches)
            per_clip = []
            for i in range(n_lib):
                t0 = time.perf_counter()
                librosa_seed(waves[i], tuning)
                per_clip.append(time.perf_counter() - t0)
            res[name] = 1.0 / min(per_clip)  # best clip, as time_it
        results[key] = res

        seed = res["librosa (seed)"]
        print(f"\n{key} clips ({args.batch} per batch; librosa on {n_lib} clips one by one)")
        print(f"  {'method':<18}{'clips/s':>10}{'ms/clip':>10}{'vs seed':>10}{'vs librosa t=0':>16}")
        for name, cps in res.items():
            print(
                f"  {name:<18}{cps:>10.1f}{1e3 / cps:>10.2f}{cps / seed:>9.1f}x"
                f"{cps / res['librosa tuning=0']:>15.1f}x"
            )
        if device.type == "cuda":
            flops, nbytes = cost_per_clip(base, int(seconds * SR))
            cps = res["torch"]
            print(
                f"  estimate per clip: {flops / 1e6:.0f} MFLOP, {nbytes / 1e6:.1f} MB; torch backend achieves "
                f"{flops * cps / 1e12:.2f} TFLOP/s, {nbytes * cps / 1e9:.0f} GB/s = "
                f"{100 * nbytes * cps / H100_BW:.1f}% of H100 HBM (3.35 TB/s)"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "batch": args.batch, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
