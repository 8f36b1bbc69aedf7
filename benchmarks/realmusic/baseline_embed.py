#!/usr/bin/env python
"""The linear probe of a pretrained embedding, outside the engine: the clip mean of each track's embedding rows ->
StandardScaler -> LogisticRegression, cross-validated on exactly the folds of the shard set it was made from.

Input: a feature-shard set written by ``python -m engine embed`` (``kind: features``; one float16 row per
evaluation window, ``<key>.feats.npy`` ``[N_windows, D]``), which keeps the source's keys, labels, splits and
folds. Each track becomes the mean of its rows (D values); the folds are those of ``baseline.py`` (fold ``k``:
train on the other folds' training-split tracks, test on fold ``k``; ``--with-valid`` adds the validation
split to every fit). Mean +- std over folds is the population std.

    python -m engine embed musicnn:MSD_musicnn --shards /work/data/realmusic_shards --out /work/data/realmusic_emb_msd
    python benchmarks/realmusic/baseline_embed.py [--emb /work/data/realmusic_emb_msd] [--C 1.0] [--with-valid]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from baseline import cross_validate, read_split, report

from shards.format import load_manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--emb", type=Path, default=Path("/work/data/realmusic_emb_msd"), help="embedding feature-shard set")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    p.add_argument("--tol", type=float, default=1e-4, help="LogisticRegression's tol (1e-12: solved to the optimum)")
    p.add_argument("--with-valid", action="store_true", help="also train on the validation split")
    p.add_argument("--json", type=Path, default=None, help="write the per-fold results here")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    manifest = load_manifest(args.emb)
    k = int(manifest.get("folds") or 0)
    if manifest.get("kind") != "features" or k < 2:
        print(f"error: {args.emb} is not a feature-shard set with folds (python -m engine embed ... of a shard set "
              "made with --folds)", file=sys.stderr)  # fmt: skip
        return 2
    train = read_split(args.emb, manifest, "train")
    valid = read_split(args.emb, manifest, "valid") if args.with_valid else []
    feats = {t["key"]: t["data"].astype("float64").mean(axis=0) for t in train + valid}  # (D,) per track
    t_read = time.perf_counter() - t0
    dim = len(next(iter(feats.values())))
    emb = manifest.get("embedding", {})
    print(f"{len(train)} train-split tracks ({len(valid)} valid added), {len(manifest['labels'])} classes, {k} folds; "
          f"{emb.get('checkpoint', '?')} '{emb.get('embedding', '?')}' clip means ({dim} values), read in {t_read:.1f}s")  # fmt: skip
    rows = cross_validate(train, valid, feats, k, args.C, args.tol)
    mean, std = report(rows)
    print(f"total {time.perf_counter() - t0:.1f}s (reading and the {k} fits)")
    if args.json:
        args.json.write_text(json.dumps({"emb": str(args.emb), "C": args.C, "with_valid": args.with_valid,
                                         "folds": rows, "mean": mean, "std": std}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
