"""Cost of the synthetic corpus and how separable its genres are.

1. Generation: the default corpus (10 genres x 12 clips x 10 s at 22050 Hz, WAV) written by
   ``make_corpus`` with 1 worker and with ``--workers`` workers: wall seconds, clips/s, and the CPU seconds
   of the single-process run (``time.process_time``: what an idle machine would need, whatever the load).
2. Separability: per-clip features of a larger corpus (``--clips`` per genre, ``--seconds`` each), 5-fold
   stratified CV accuracy of
   - logistic regression on standardized ``[RMS, mean spectral centroid]`` (must stay near chance: 0.10),
   - logistic regression and a random forest on means/stds of 20 MFCCs, a key-invariant chroma profile,
     a 12-band onset tempogram summary and onset-strength statistics,
   with the default part-borrowing ``overlap`` and with ``overlap=0`` (textbook recipes).

librosa and scikit-learn are used here only (the library itself is numpy).

    python benchmarks/bench_synthetic_separability.py [--clips 30] [--seconds 10] [--workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shards.synthetic import GENRES, OVERLAP, clip_seed, generate_clip, make_corpus  # noqa: E402

SR = 22050


def bench_generation(clips_per_genre: int, duration: float, workers: int) -> dict[str, float]:
    out: dict[str, float] = {}
    n = clips_per_genre * len(GENRES)
    for w in sorted({1, workers}):
        with tempfile.TemporaryDirectory() as tmp:
            cpu, wall = time.process_time(), time.perf_counter()
            make_corpus(tmp, clips_per_genre=clips_per_genre, duration=duration, workers=w, progress=False)
            wall = time.perf_counter() - wall
            out[f"wall_s_workers_{w}"] = wall
            out[f"clips_per_s_workers_{w}"] = n / wall
            if w == 1:
                out["cpu_s_single_process"] = time.process_time() - cpu
    return out


def features(x: np.ndarray, mel_basis: np.ndarray, chroma_basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``simple`` = [RMS, mean centroid]; ``rich`` = MFCC / chroma / tempogram statistics of one clip."""
    import librosa

    spec = np.abs(librosa.stft(x, n_fft=2048, hop_length=512))  # (1025, frames)
    power = spec**2
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    simple = np.array([rms, librosa.feature.spectral_centroid(S=spec, sr=SR).mean()])
    log_mel = librosa.power_to_db(mel_basis @ power)  # (128, frames)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=20)  # (20, frames)
    chroma = chroma_basis @ power
    chroma = chroma / np.maximum(chroma.max(axis=0, keepdims=True), 1e-10)  # (12, frames)
    onset = librosa.onset.onset_strength(S=log_mel, sr=SR)
    tempogram = librosa.feature.tempogram(onset_envelope=onset, sr=SR, win_length=192).mean(axis=1)
    edges = np.unique(np.geomspace(1, tempogram.shape[0], 13).astype(int))
    bands = [tempogram[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]
    rich = np.concatenate(
        [
            mfcc.mean(axis=1),
            mfcc.std(axis=1),
            np.sort(chroma.mean(axis=1))[::-1],  # key-invariant profile
            [chroma.std(axis=1).mean()],
            bands,
            [onset.mean(), onset.std()],
        ]
    )
    return simple, rich


def bench_separability(clips: int, seconds: float, overlap: float, seed: int) -> dict[str, float]:
    import librosa
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    mel_basis = librosa.filters.mel(sr=SR, n_fft=2048, n_mels=128)
    chroma_basis = librosa.filters.chroma(sr=SR, n_fft=2048, tuning=0.0)
    simple, rich, labels = [], [], []
    for label, genre in enumerate(GENRES):
        for i in range(clips):
            rng = np.random.default_rng(clip_seed(seed, genre, i))
            s, r = features(generate_clip(genre, rng, seconds, SR, overlap=overlap), mel_basis, chroma_basis)
            simple.append(s)
            rich.append(r)
            labels.append(label)
    y = np.array(labels)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)

    def score(model: object, x: list[np.ndarray]) -> float:
        return float(cross_val_score(model, np.array(x), y, cv=cv).mean())

    return {
        "simple_logreg": score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), simple),
        "rich_logreg": score(make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=5000)), rich),
        "rich_forest": score(RandomForestClassifier(300, random_state=0), rich),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=30, help="clips per genre for the separability study")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length for the separability study")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for the generation run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small run: 3 clips/genre generation, 8 x 4 s study")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    gen_clips, clips, seconds = (3, 8, 4.0) if args.quick else (12, args.clips, args.seconds)

    results: dict[str, object] = {"cpu_count": os.cpu_count(), "quick": args.quick}
    gen = bench_generation(gen_clips, 10.0, args.workers)
    results["generation"] = gen
    print(f"generation: {gen_clips * len(GENRES)} clips x 10 s @ {SR} Hz, WAV")
    for k, v in gen.items():
        print(f"  {k:<28} {v:8.2f}")
    for overlap in (OVERLAP, 0.0):
        t = time.perf_counter()
        sep = bench_separability(clips, seconds, overlap, args.seed)
        results[f"separability_overlap_{overlap:g}"] = sep
        print(
            f"separability: {len(GENRES)} genres x {clips} clips x {seconds:g} s, overlap {overlap:g}, 5-fold CV"
        )
        for k, v in sep.items():
            print(f"  {k:<28} {v:8.3f}")
        print(f"  ({time.perf_counter() - t:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
