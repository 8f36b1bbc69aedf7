"""Track-level split and fold assignment: stratified by label, optionally grouped (e.g. by artist), seeded.

One greedy algorithm serves every case. The units to place are groups of tracks (one track per group
when nothing is grouped; all tracks of one artist otherwise). Units are visited in a seeded random order
(largest groups first, so big artists cannot wreck the proportions at the end); each unit goes to the bin
(split or fold) with the largest label-weighted deficit ``sum_l n_l * (ratio_b * total_l - count_b,l)``.
For ungrouped tracks this is per-label largest-remainder allocation in a random order: every label is
split as close to the ratios as integers allow. The result depends only on the track keys, labels, groups
and the seed (never on input order).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources

import numpy as np

from shards.format import SPLITS


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> train/valid/test fractions (normalized; each finite and >= 0, sum > 0).

    A 0 is allowed and means that split gets no track (``1,0,0``: everything in train, for ``--folds``;
    ``0,0,1``: a set only to evaluate on); :meth:`IngestConfig.validate` refuses the zero train share that
    ``--folds`` or ``--offline-augment`` cannot work with."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--split-ratios {text!r}: expected three numbers like 0.7,0.15,0.15") from None
    if len(vals) != 3 or not all(math.isfinite(v) and v >= 0 for v in vals) or sum(vals) <= 0:
        raise ValueError(f"--split-ratios {text!r}: expected three non-negative numbers like 0.7,0.15,0.15")
    s = sum(vals)
    return (vals[0] / s, vals[1] / s, vals[2] / s)


def assign_bins(
    keys: Sequence[str],
    labels: Sequence[str],
    ratios: Sequence[float],
    seed: int,
    groups: Sequence[str | None] | None = None,
) -> list[int]:
    """Assign each item to a bin ``0..len(ratios)-1``, stratified by label, grouped, seeded.

    ``keys`` must be unique (they fix the order before the seeded shuffle); ``groups[i]`` None means
    the item is its own group. Items of one group always share a bin.
    """
    n = len(keys)
    if not (len(labels) == n and (groups is None or len(groups) == n)):
        raise ValueError("keys, labels and groups must have the same length")
    nbins = len(ratios)
    ratio = np.asarray(ratios, dtype=np.float64)
    ratio = ratio / ratio.sum()
    label_names = sorted(set(labels))
    lidx = {lab: i for i, lab in enumerate(label_names)}

    # units: group name -> item indices; ungrouped items are units of their own
    units: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        g = None if groups is None else groups[i]
        units[f"g:{g}" if g is not None else f"k:{k}"].append(i)
    names = sorted(units)
    rng = random.Random(seed)
    rng.shuffle(names)
    # stable sort by size descending keeps the shuffled order among equal sizes
    names.sort(key=lambda u: -len(units[u]))

    totals = np.zeros(len(label_names))
    for lab in labels:
        totals[lidx[lab]] += 1
    target = ratio[:, None] * totals[None, :]  # (bins, labels)
    count = np.zeros_like(target)
    out = [0] * n
    for u in names:
        vec = np.zeros(len(label_names))
        for i in units[u]:
            vec[lidx[labels[i]]] += 1
        deficit = ((target - count) * vec[None, :]).sum(axis=1) / vec.sum()
        # ties: the bin with the larger ratio, then the lower index
        b = max(range(nbins), key=lambda j: (round(deficit[j], 9), ratio[j], -j))
        if ratio[b] == 0:
            b = int(np.argmax(ratio))
        count[b] += vec
        for i in units[u]:
            out[i] = b
    return out


def stratified_splits(
    keys: Sequence[str],
    labels: Sequence[str],
    ratios: Sequence[float],
    seed: int,
    groups: Sequence[str | None] | None = None,
) -> list[str]:
    """train/valid/test per item (see :func:`assign_bins`)."""
    return [SPLITS[b] for b in assign_bins(keys, labels, ratios, seed, groups)]


def kfold(
    keys: Sequence[str],
    labels: Sequence[str],
    k: int,
    seed: int,
    groups: Sequence[str | None] | None = None,
) -> list[int]:
    """Fold ``0..k-1`` per item, stratified by label and grouped (no group in two folds)."""
    if k < 2:
        raise ValueError(f"--folds {k}: need at least 2 folds")
    # a different seed stream than the split assignment so folds and splits are independent
    return assign_bins(keys, labels, [1.0 / k] * k, seed * 1_000_003 + 7919, groups)


def gtzan_filtered_lists() -> dict[str, str]:
    """``{"blues/blues.00012.wav": "test", ...}``: the shipped fault-filtered GTZAN split (Sturm / Kereliuk)."""
    out: dict[str, str] = {}
    pkg = resources.files("shards") / "gtzan_filtered"
    for split in SPLITS:
        text = (pkg / f"{split}_filtered.txt").read_text(encoding="utf-8")
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out[line] = split
    return out

