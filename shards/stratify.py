"""Multi-label split and fold assignment: iterative stratification, optionally grouped, seeded.

The algorithm is Sechidis, Tsoumakas and Vlahavas (2011), "On the stratification of multi-label data"
(ECML PKDD, LNCS 6913, pp. 145-158), Algorithm 1, written here from the paper:

1. Each bin ``j`` (fold, or train/valid/test) with ratio ``r_j`` desires ``r_j * |D|`` examples in all
   and ``r_j * |D_l|`` examples of each label ``l``.
2. While examples remain: take the label with the fewest remaining examples (rare labels first, so they
   are spread while every bin still wants them; ties broken by the seeded generator) and place each of its
   remaining examples in the bin that desires that label most; ties go to the bin that desires the most
   examples in all, then to a seeded random choice. Placing an example lowers the bin's desire for every
   label of the example and its overall desire.
3. Examples without labels go to the bins with the largest overall desire.

Grouped (artist, piece, album): a group is one unit, never split; it counts for ``size`` examples and, per
label, for the number of its tracks carrying that label (the group's summed label counts), and desires
are lowered by those counts. Within one label the larger units are placed first (an even spread of large
groups needs room to be left), in a seeded order among equal sizes. Our one change to step 2, for groups
of two or more tracks only: the desire for the label is capped at the group's count of it (every bin that
still wants all of the group's tracks of the label ties, none is better for wanting more), and the tie
goes to the bin with the largest desire for all the group's labels, each relative to the label's total
(``sum_l c_l * desire_j,l / total_l``), then to the overall desire. With the paper's rule alone a group
goes wherever its rarest label is most wanted, whatever its other labels; on the test set (3000 tracks,
300 artists, tags correlated within artists) this change cuts the mean |count - desired| per (fold, tag)
from 7.8 to 2.5 tracks (random placement of the artists: 11.7). Single tracks follow the paper exactly.

Determinism: one ``random.Random(seed)`` drives every tie; nothing reads the global generator. The result
depends on the inputs in their order and on the seed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Sequence

from shards.format import SPLITS

__all__ = ["iterative_kfold", "iterative_split", "iterative_stratification", "label_counts_per_bin"]


def _units(n: int, groups: Sequence[Hashable | None] | None) -> list[list[int]]:
    """Indices of each unit, in order of first appearance; ``groups[i]`` None = a unit of its own."""
    if groups is None:
        return [[i] for i in range(n)]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} label sets")
    by_group: dict[Hashable, list[int]] = {}
    units: list[list[int]] = []
    for i, g in enumerate(groups):
        if g is None:
            units.append([i])
        elif g in by_group:
            by_group[g].append(i)
        else:
            by_group[g] = [i]
            units.append(by_group[g])
    return units


def _normalised(ratios: Sequence[float]) -> list[float]:
    r = [float(v) for v in ratios]
    if len(r) < 2 or any(v < 0 for v in r) or sum(r) <= 0:
        raise ValueError(f"ratios {list(ratios)}: need at least two non-negative numbers with a positive sum")
    return [v / sum(r) for v in r]


def iterative_stratification(
    label_sets: Sequence[Sequence[str]],
    ratios: Sequence[float],
    seed: int,
    groups: Sequence[Hashable | None] | None = None,
) -> list[int]:
    """Bin ``0..len(ratios)-1`` of each item, so that every label is spread over the bins in the ratios.

    Args:
        label_sets: the labels (tag names) of each item; repeats within one item count once; may be empty.
        ratios: desired share of each bin (normalised; a bin with ratio 0 receives nothing).
        seed: drives every tie; same inputs and seed give the same bins.
        groups: optional group of each item (None = its own group); the items of a group share a bin.
    """
    ratio = _normalised(ratios)
    units = _units(len(label_sets), groups)
    # per unit: label -> how many of its tracks carry it
    counts = [Counter(lab for i in u for lab in set(label_sets[i])) for u in units]
    sizes = [len(u) for u in units]
    rng = random.Random(seed)
    order = list(range(len(units)))
    rng.shuffle(order)
    order.sort(key=lambda u: -sizes[u])  # stable: largest units first, seeded among equal sizes
    totals: Counter = Counter()
    by_label: dict[str, list[int]] = {}
    for u in order:
        for lab, c in counts[u].items():
            totals[lab] += c
            by_label.setdefault(lab, []).append(u)
    bins = range(len(ratio))
    open_bins = [j for j in bins if ratio[j] > 0]
    want_size = [r * len(label_sets) for r in ratio]
    want = [{lab: r * t for lab, t in totals.items()} for r in ratio]  # per bin: label -> desired count
    remaining = dict(totals)
    out_unit = [-1] * len(units)

    def place(u: int, key) -> None:
        best = max(key(j) for j in open_bins)
        j = rng.choice([j for j in open_bins if key(j) == best])
        out_unit[u] = j
        want_size[j] -= sizes[u]
        for lab, c in counts[u].items():
            want[j][lab] -= c
            remaining[lab] -= c

    def _bin_key(j: int, lab: str, u: int) -> tuple[float, ...]:
        if sizes[u] == 1:  # the paper's rule: desire for the label, then overall desire
            return (round(want[j][lab], 9), round(want_size[j], 9))
        # a group: the bins that still want all its tracks of the label tie (no bin is better for taking
        # more than it wants); among them, the largest desire for all its labels, relative to their totals
        spread = sum(c * want[j][x] / totals[x] for x, c in counts[u].items())
        return (round(min(want[j][lab], counts[u][lab]), 9), round(spread, 9), round(want_size[j], 9))

    while True:
        left = sorted(lab for lab, c in remaining.items() if c > 0)
        if not left:
            break
        fewest = min(remaining[lab] for lab in left)
        lab = rng.choice([x for x in left if remaining[x] == fewest])
        for u in by_label[lab]:
            if out_unit[u] < 0:
                place(u, lambda j, lab=lab, u=u: _bin_key(j, lab, u))
    for u in order:  # units without labels
        if out_unit[u] < 0:
            place(u, lambda j: round(want_size[j], 9))
    out = [0] * len(label_sets)
    for u, idx in enumerate(units):
        for i in idx:
            out[i] = out_unit[u]
    return out


def iterative_kfold(
    label_sets: Sequence[Sequence[str]], k: int, seed: int, groups: Sequence[Hashable | None] | None = None
) -> list[int]:
    """Fold ``0..k-1`` of each item: iterative stratification into ``k`` equal folds (groups never split)."""
    if k < 2:
        raise ValueError(f"k = {k}: need at least 2 folds")
    return iterative_stratification(label_sets, [1.0] * k, seed, groups)


def iterative_split(
    label_sets: Sequence[Sequence[str]],
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[Hashable | None] | None = None,
) -> list[str]:
    """``"train"`` / ``"valid"`` / ``"test"`` of each item, in the train/valid/test ``ratios``."""
    if len(ratios) != len(SPLITS):
        raise ValueError(f"ratios {list(ratios)}: need one per split {SPLITS}")
    return [SPLITS[b] for b in iterative_stratification(label_sets, ratios, seed, groups)]


def label_counts_per_bin(
    label_sets: Sequence[Sequence[str]], bins: Sequence[Hashable]
) -> tuple[dict[Hashable, Counter], Counter]:
    """How many items of each label every bin holds.

    Returns:
        ``(per_bin, sizes)``: ``per_bin[bin]`` a Counter of label -> items in that bin, ``sizes[bin]`` the
        number of items in the bin (for logs and tests).
    """
    per_bin: dict = {}
    sizes: Counter = Counter()
    for labs, b in zip(label_sets, bins):
        per_bin.setdefault(b, Counter()).update(set(labs))
        sizes[b] += 1
    return per_bin, sizes
