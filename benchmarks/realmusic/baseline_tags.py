#!/usr/bin/env python
"""The multi-label baseline, outside the engine: MFCC statistics -> StandardScaler -> one-vs-rest
LogisticRegression, cross-validated on the folds of a multi-label set; macro ROC-AUC and mAP per fold.

Two sources of tracks, tags and folds:

- ``--shards DIR``: a multi-label shard set (``manifest.json`` with ``"task": "multilabel"`` and ``labels`` the
  tag vocabulary; each sample's ``.json`` has ``"labels": [names]``) made with ``--folds K``. As in
  ``baseline.py``: fold ``k`` trains on the training split's tracks of every other fold and tests on the
  training split's fold ``k`` (``--with-valid`` adds the validation split to every fit).
- ``--csv clips.csv``: the clips straight from the build (``build.py``'s ``labels`` column, ``;``-separated
  instrument families; audio read from the ``path`` column). Folds: ``--folds-from SHARDS`` takes each clip's
  split and fold from a shard set made from the same CSV (e.g. the single-label one: the same clips and folds
  as ``baseline.py``); without it, scikit-learn's ``GroupKFold(--folds)`` over every clip, grouped by the
  ``artist`` column (the piece).

Features: ``baseline.clip_features`` (``mfcc``: MFCC(20) mean/std, 40 values; ``mfcc+chroma``: the 144
``stats`` values). Metrics per fold (scikit-learn's ``roc_auc_score`` / ``average_precision_score`` per tag, on
``predict_proba``): a tag whose test fold has no positive (or no negative) has no ranking to measure and is
left out of that fold's macro mean (the count is printed); a tag with no positive in a fold's training data
gets a constant score (scikit-learn's one-vs-rest). Mean +- std over folds is the population std.

    python benchmarks/realmusic/baseline_tags.py --csv /work/data/realmusic/clips.csv \\
        --folds-from /work/data/realmusic_shards [--features mfcc] [--C 1.0] [--json OUT.json]
    python benchmarks/realmusic/baseline_tags.py --shards /work/data/realmusic_tag_shards
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from baseline import clip_features, read_split
from build import TAGS

from shards.format import load_manifest


def tag_matrix(tracks: list[dict], vocab: list[str]) -> np.ndarray:
    """``{0, 1}`` int ``[N, K]``: track ``n`` has tag ``vocab[k]`` (``track["tags"]``: a list of names)."""
    index = {t: i for i, t in enumerate(vocab)}
    y = np.zeros((len(tracks), len(vocab)), dtype=int)
    for n, t in enumerate(tracks):
        for name in t["tags"]:
            y[n, index[name]] = 1
    return y


def shard_tracks(shards: Path, with_valid: bool) -> tuple[list[dict], list[dict], list[str], int, int]:
    """(train tracks, valid tracks, vocabulary, folds, sample rate) of a multi-label shard set."""
    manifest = load_manifest(shards)
    if manifest.get("task") != "multilabel":
        raise SystemExit(f"{shards} is not a multi-label shard set (manifest task {manifest.get('task')!r})")
    k = int(manifest.get("folds") or 0)
    if k < 2:
        raise SystemExit(f"{shards} has no folds; make it with make_shards.py --folds 5")

    def tagged(split: str) -> list[dict]:
        return [{**t, "tags": list(t["meta"]["labels"])} for t in read_split(shards, manifest, split)]

    train, valid = tagged("train"), tagged("valid") if with_valid else []
    return train, valid, list(manifest["labels"]), k, int(manifest["sample_rate"])


def csv_tracks(csv_path: Path, folds_from: Path | None, n_folds: int,
               with_valid: bool) -> tuple[list[dict], list[dict], list[str], int, int]:  # fmt: skip
    """(train tracks, valid tracks, vocabulary, folds, sample rate) of ``clips.csv``: folds and splits from the
    shard set ``folds_from`` (matched on the clip's path), else GroupKFold by ``artist`` (no valid split)."""
    import soundfile as sf

    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "labels" not in rows[0]:
        raise SystemExit(f"{csv_path} has no 'labels' column (rebuild with build.py)")
    tracks, rates = [], set()
    for r in rows:
        data, sr = sf.read(csv_path.parent / r["path"], dtype="float32")
        rates.add(sr)
        tracks.append({"key": r["path"], "path": r["path"], "artist": r["artist"], "data": data,
                       "tags": [t for t in r["labels"].split(";") if t]})  # fmt: skip
    if len(rates) != 1:
        raise SystemExit(f"{csv_path}: clips at several rates {sorted(rates)}")
    present = {t for tr in tracks for t in tr["tags"]}
    vocab = [t for t in TAGS if t in present] + sorted(present - set(TAGS))
    if folds_from is None:
        from sklearn.model_selection import GroupKFold

        groups = [t["artist"] for t in tracks]
        for fold, (_, test) in enumerate(GroupKFold(n_splits=n_folds).split(tracks, groups=groups)):
            for i in test:
                tracks[i]["fold"] = fold
        return tracks, [], vocab, n_folds, rates.pop()
    manifest = load_manifest(folds_from)
    where = {}  # clip path (as in the CSV) -> (split, fold)
    for split in ("train", "valid", "test"):
        if split in manifest["splits"]:
            for t in read_split(folds_from, manifest, split):
                where[Path(t["meta"]["path"]).as_posix()] = (split, int(t["meta"]["fold"]))
    missing = [t["path"] for t in tracks if t["path"] not in where]
    if missing:
        raise SystemExit(f"{len(missing)} clips of {csv_path} are not in {folds_from}, e.g. {missing[0]}")
    for t in tracks:
        t["split"], t["fold"] = where[t["path"]]
    train = [t for t in tracks if t["split"] == "train"]
    valid = [t for t in tracks if t["split"] == "valid"] if with_valid else []
    return train, valid, vocab, int(manifest["folds"]), rates.pop()


def fold_scores(y: np.ndarray, scores: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-tag ROC-AUC and AP of one test fold (``y`` ``{0,1}`` ``[N, K]``, ``scores`` ``[N, K]``); NaN for a
    tag with no positive or no negative in ``y``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    auc, ap = [], []
    for j in range(y.shape[1]):
        if 0 < y[:, j].sum() < len(y):
            auc.append(float(roc_auc_score(y[:, j], scores[:, j])))
            ap.append(float(average_precision_score(y[:, j], scores[:, j])))
        else:
            auc.append(float("nan"))
            ap.append(float("nan"))
    return auc, ap


def cross_validate_tags(train: list[dict], valid: list[dict], feats: dict[str, np.ndarray], vocab: list[str],
                        k: int, C: float) -> list[dict]:  # fmt: skip
    """Fold ``f``: one-vs-rest LogisticRegression(C) after a StandardScaler on the other folds' ``train`` tracks
    plus ``valid``; per-tag and macro ROC-AUC / AP on fold ``f``'s ``train`` tracks. One row per fold."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = []
    for fold in range(k):
        t1 = time.perf_counter()
        fit = [t for t in train if t["fold"] != fold] + valid
        test = [t for t in train if t["fold"] == fold]
        clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=C, max_iter=5000)))
        with warnings.catch_warnings():  # "Label k is present in all training examples": a constant scorer
            warnings.filterwarnings("ignore", message="Label .* (present|not present) in all training examples")
            clf.fit(np.stack([feats[t["key"]] for t in fit]), tag_matrix(fit, vocab))
        scores = clf.predict_proba(np.stack([feats[t["key"]] for t in test]))  # [N_test, K]
        auc, ap = fold_scores(tag_matrix(test, vocab), scores)
        kept = [j for j in range(len(vocab)) if not np.isnan(auc[j])]
        row = {"fold": fold, "macro_roc_auc": statistics.fmean(auc[j] for j in kept),
               "map": statistics.fmean(ap[j] for j in kept), "tags_left_out": [vocab[j] for j in range(len(vocab))
               if j not in kept], "per_tag_roc_auc": dict(zip(vocab, auc)), "per_tag_ap": dict(zip(vocab, ap)),
               "n_train": len(fit), "n_test": len(test), "seconds": time.perf_counter() - t1}  # fmt: skip
        rows.append(row)
        print(f"fold {fold}: macro ROC-AUC {100 * row['macro_roc_auc']:.1f}, mAP {100 * row['map']:.1f} "
              f"({len(kept)}/{len(vocab)} tags; left out: {', '.join(row['tags_left_out']) or 'none'}; "
              f"{len(test)} test / {len(fit)} train tracks, {row['seconds']:.2f}s)")  # fmt: skip
    return rows


def summarize(rows: list[dict], vocab: list[str]) -> dict:
    """Print mean +- population std of the macro metrics over folds and each tag's mean AUC / AP over the folds
    that measure it; return them (fractions)."""
    out = {}
    for name, title in (("macro_roc_auc", "macro ROC-AUC"), ("map", "mAP")):
        vals = [r[name] for r in rows]
        out[name] = (statistics.fmean(vals), statistics.pstdev(vals))
        print(f"{title}: mean +- std (population) {100 * out[name][0]:.1f} +- {100 * out[name][1]:.1f}")
    out["per_tag"] = {}
    for tag in vocab:
        auc = [r["per_tag_roc_auc"][tag] for r in rows if not np.isnan(r["per_tag_roc_auc"][tag])]
        ap = [r["per_tag_ap"][tag] for r in rows if not np.isnan(r["per_tag_ap"][tag])]
        out["per_tag"][tag] = {"roc_auc": statistics.fmean(auc) if auc else None,
                               "ap": statistics.fmean(ap) if ap else None, "folds": len(auc)}  # fmt: skip
        if auc:
            print(f"  {tag:14s} ROC-AUC {100 * out['per_tag'][tag]['roc_auc']:5.1f}  "
                  f"AP {100 * out['per_tag'][tag]['ap']:5.1f}  ({len(auc)} folds)")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", type=Path, help="multi-label shard set with folds")
    src.add_argument("--csv", type=Path, help="clips.csv with a 'labels' column (build.py's)")
    p.add_argument("--folds-from", type=Path, default=None, help="--csv: take splits and folds from this shard set")
    p.add_argument("--folds", type=int, default=5, help="--csv without --folds-from: GroupKFold by artist")
    p.add_argument("--features", choices=["mfcc", "mfcc+chroma"], default="mfcc")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of each logistic regression")
    p.add_argument("--with-valid", action="store_true", help="also train on the validation split")
    p.add_argument("--json", type=Path, default=None, help="write the per-fold results here")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    if args.shards is not None:
        train, valid, vocab, k, sr = shard_tracks(args.shards, args.with_valid)
    else:
        train, valid, vocab, k, sr = csv_tracks(args.csv, args.folds_from, args.folds, args.with_valid)
    feats = {t["key"]: clip_features(t["data"], sr, args.features) for t in train + valid}
    t_feat = time.perf_counter() - t0
    counts = tag_matrix(train + valid, vocab).sum(axis=0)
    print(f"{len(train)} train-split tracks ({len(valid)} valid added), {len(vocab)} tags "
          f"({', '.join(f'{t} {c}' for t, c in zip(vocab, counts))}), {k} folds; features '{args.features}' "
          f"({len(next(iter(feats.values())))} values) in {t_feat:.1f}s")  # fmt: skip
    rows = cross_validate_tags(train, valid, feats, vocab, k, args.C)
    summary = summarize(rows, vocab)
    print(f"total {time.perf_counter() - t0:.1f}s (reading, features and the {k} fits)")
    if args.json:
        args.json.write_text(json.dumps({"features": args.features, "C": args.C, "with_valid": args.with_valid,
                                         "vocab": vocab, "folds": rows, "summary": summary,
                                         "feature_seconds": t_feat}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
