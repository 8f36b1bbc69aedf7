#!/usr/bin/env python
"""The classic baseline, outside the engine: MFCC(20) mean and std over the whole clip -> StandardScaler ->
LogisticRegression, cross-validated on exactly the folds of a shard set.

The audio and the folds come from the shard set itself (``make_shards.py --folds K``): every track's
``.pcm`` and its ``fold`` from the ``.json`` next to it, so this script and ``python -m engine cv`` see the
same samples and the same folds. As in ``engine/cv.py``: fold ``k`` trains on the training split's tracks
of every other fold and tests on the training split's fold ``k`` (the validation split, which the engine
uses only for early stopping, is left out unless ``--with-valid``).

Features (librosa, its defaults: n_fft 2048, hop 512, 128 mels): ``mfcc`` = MFCC(20) mean and population
std (ddof 0) over every frame of the clip (40 values); ``mfcc+chroma`` adds the deltas, delta-deltas
and chroma_stft (tuning 0), the same 144 statistics as the engine's ``stats`` architecture in
``configs/stats.yaml``. Mean +- std over folds is the population std (as ``engine cv`` prints it).

scikit-learn and librosa are benchmark references only, never engine dependencies.

    python benchmarks/realmusic/baseline.py [--shards /work/data/realmusic_shards] [--features mfcc]
        [--C 1.0] [--with-valid] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from shards.format import (
    FEATS_EXT,
    META_EXT,
    PCM_EXT,
    PCM_SCALE,
    decode_feats,
    decode_meta,
    decode_pcm,
    load_manifest,
    split_shards,
)


def read_split(shard_dir: Path, manifest: dict, split: str) -> list[dict]:
    """Every track of ``split`` in manifest order: ``{"key", "meta" (its .json), "label_index" (None when the
    sample has none, as a multi-label sample may), "fold", "data"}``, where ``data`` is the audio as float32
    ``(T,)`` in [-1, 1) (``.pcm``) or the feature rows as float32 ``(N, D)`` (``.feats.npy``, an embedding set)."""
    tracks: list[dict] = []
    for path, _ in split_shards(manifest, split, shard_dir):
        members: dict[str, dict] = {}
        with tarfile.open(path) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                fh = tar.extractfile(m)
                assert fh is not None
                members.setdefault(key, {})[ext] = fh.read()
        for key, parts in members.items():
            if META_EXT not in parts or (PCM_EXT not in parts and FEATS_EXT not in parts):
                raise SystemExit(f"{path}: sample {key!r} lacks .{META_EXT} or a .{PCM_EXT} / .{FEATS_EXT} member")
            meta = decode_meta(parts[META_EXT])
            if PCM_EXT in parts:
                data = decode_pcm(parts[PCM_EXT]).astype(np.float32) / PCM_SCALE
            else:
                data = decode_feats(parts[FEATS_EXT]).astype(np.float32)
            index = meta.get("label_index")
            tracks.append({"key": key, "meta": meta, "label_index": None if index is None else int(index),
                           "fold": int(meta["fold"]), "data": data})  # fmt: skip
    return tracks


def clip_features(y: np.ndarray, sr: int, kind: str) -> np.ndarray:
    import librosa

    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, n_fft=2048, hop_length=512, n_mels=128)  # (20, frames)
    bands = [mfcc]
    if kind == "mfcc+chroma":
        bands += [
            librosa.feature.delta(mfcc, width=9, order=1),
            librosa.feature.delta(mfcc, width=9, order=2),
            librosa.feature.chroma_stft(y=y, sr=sr, n_fft=2048, hop_length=512, tuning=0.0),
        ]
    x = np.concatenate(bands).astype(np.float64)
    return np.concatenate([x.mean(axis=1), x.std(axis=1, ddof=0)])


def cross_validate(train: list[dict], valid: list[dict], feats: dict[str, np.ndarray], k: int,
                   C: float, tol: float = 1e-4) -> list[dict]:  # fmt: skip
    """Fold ``f`` of ``k``: StandardScaler -> LogisticRegression(C, tol) fitted on the ``train`` tracks of the other
    folds (plus every ``valid`` track), track accuracy on fold ``f``'s ``train`` tracks; ``feats`` maps a
    track's key to its feature vector. One row per fold (``seconds``: that fold's fit and predict). ``tol``:
    scikit-learn's default 1e-4 stops L-BFGS short of the optimum on a nearly separable probe problem; 1e-12
    solves it (what the engine's exact solver returns)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = []
    for fold in range(k):
        t1 = time.perf_counter()
        fit = [t for t in train if t["fold"] != fold] + valid
        test = [t for t in train if t["fold"] == fold]
        x_fit = np.stack([feats[t["key"]] for t in fit])
        y_fit = np.array([t["label_index"] for t in fit])
        x_test = np.stack([feats[t["key"]] for t in test])
        y_test = np.array([t["label_index"] for t in test])
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=tol, max_iter=100000))
        clf.fit(x_fit, y_fit)
        acc = float((clf.predict(x_test) == y_test).mean())
        rows.append({"fold": fold, "track_accuracy": acc, "n_train": len(fit), "n_test": len(test),
                     "seconds": time.perf_counter() - t1})  # fmt: skip
        print(f"fold {fold}: track accuracy {100 * acc:.1f}% ({len(test)} test / {len(fit)} train tracks, "
              f"{rows[-1]['seconds']:.2f}s)")  # fmt: skip
    return rows


def report(rows: list[dict]) -> tuple[float, float]:
    """Print and return the mean and population std of the folds' track accuracy (fractions)."""
    accs = [r["track_accuracy"] for r in rows]
    mean, std = statistics.fmean(accs), statistics.pstdev(accs)
    print(f"mean +- std (population): {100 * mean:.1f} +- {100 * std:.1f}%")
    return mean, std


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shards", type=Path, default=Path("/work/data/realmusic_shards"), help="shard set with folds")
    p.add_argument("--features", choices=["mfcc", "mfcc+chroma"], default="mfcc")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    p.add_argument("--tol", type=float, default=1e-4, help="LogisticRegression's tol (1e-12: solved to the optimum)")
    p.add_argument("--with-valid", action="store_true", help="also train on the validation split")
    p.add_argument("--json", type=Path, default=None, help="write the per-fold results here")
    args = p.parse_args(argv)

    manifest = load_manifest(args.shards)
    k = int(manifest.get("folds") or 0)
    if k < 2:
        print(f"error: {args.shards} has no folds; make it with make_shards.py --folds 5", file=sys.stderr)
        return 2
    sr = int(manifest["sample_rate"])
    t0 = time.perf_counter()
    train = read_split(args.shards, manifest, "train")
    valid = read_split(args.shards, manifest, "valid") if args.with_valid else []
    feats = {t["key"]: clip_features(t["data"], sr, args.features) for t in train + valid}
    t_feat = time.perf_counter() - t0
    print(f"{len(train)} train-split tracks ({len(valid)} valid added), {len(manifest['labels'])} classes, "
          f"{k} folds; features '{args.features}' ({len(next(iter(feats.values())))} values) in {t_feat:.1f}s")  # fmt: skip

    rows = cross_validate(train, valid, feats, k, args.C, args.tol)
    mean, std = report(rows)
    print(f"total {time.perf_counter() - t0:.1f}s (reading, features and the {k} fits)")
    if args.json:
        args.json.write_text(json.dumps({"features": args.features, "C": args.C, "with_valid": args.with_valid,
                                         "folds": rows, "mean": mean, "std": std,
                                         "feature_seconds": t_feat}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
