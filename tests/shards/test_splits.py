"""shards.splits: stratified, grouped, seeded split and fold assignment, with counts computed by hand."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from shards.format import SPLITS
from shards.splits import (
    assign_bins,
    gtzan_filtered_lists,
    kfold,
    parse_ratios,
    stratified_splits,
)

RATIOS = (0.7, 0.15, 0.15)


def split_summary(splits, labels) -> dict[str, Counter]:
    """``{split: Counter(label -> tracks)}``."""
    out: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for s, lab in zip(splits, labels):
        out[s][lab] += 1
    return out


def _tracks(per_label: dict[str, int]) -> tuple[list[str], list[str]]:
    """Unique keys and their labels, ``per_label[label]`` tracks of each label."""
    keys, labels = [], []
    for label, n in per_label.items():
        for i in range(n):
            keys.append(f"{label}{i:04d}")
            labels.append(label)
    return keys, labels


def _counts(bins: list, labels: list[str]) -> dict[str, tuple[int, ...]]:
    """``{label: (tracks in bin 0, bin 1, ...)}``"""
    names = sorted(set(bins))
    c = Counter(zip(labels, bins))
    return {lab: tuple(c[lab, b] for b in names) for lab in sorted(set(labels))}


# ------------------------------------------------------------------------------------------------ ratios
@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.7,0.15,0.15", (0.7, 0.15, 0.15)), ("7,1.5,1.5", (0.7, 0.15, 0.15)), ("8, 2, 0", (0.8, 0.2, 0.0))],
)
def test_parse_ratios_normalises_to_fractions(text, expected):
    assert parse_ratios(text) == pytest.approx(expected)
    assert sum(parse_ratios(text)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0.5,0.5", "three non-negative numbers"),
        ("0.5,0.3,0.1,0.1", "three non-negative numbers"),
        ("0.8,-0.1,0.3", "three non-negative numbers"),
        ("0,0,0", "three non-negative numbers"),
        ("0.7,x,0.15", "three numbers like"),
    ],
)
def test_parse_ratios_rejects_what_is_not_three_fractions(text, reason):
    with pytest.raises(ValueError, match=f"--split-ratios '{text}': expected {reason}"):
        parse_ratios(text)


# ------------------------------------------------------------------------------------- stratification
@pytest.mark.parametrize(
    ("n", "expected"),
    [
        # targets 7, 1.5, 1.5: train takes its 7; the tied half-tracks go to valid first (lower index)
        (10, (7, 2, 1)),
        (3, (2, 1, 0)),  # targets 2.1, 0.45, 0.45
        (1, (1, 0, 0)),
        (20, (14, 3, 3)),  # exact
        (7, (5, 1, 1)),  # targets 4.9, 1.05, 1.05
        (13, (9, 2, 2)),  # targets 9.1, 1.95, 1.95
    ],
)
def test_each_label_is_split_as_the_ratios_allow_hand_computed(n, expected):
    # two labels of different sizes: the allocation of one never disturbs the other
    keys, labels = _tracks({"jazz": n, "rock": 20})
    for seed in (0, 1, 2):
        splits = stratified_splits(keys, labels, RATIOS, seed)
        c = split_summary(splits, labels)
        assert (c["train"]["jazz"], c["valid"]["jazz"], c["test"]["jazz"]) == expected
        assert (c["train"]["rock"], c["valid"]["rock"], c["test"]["rock"]) == (14, 3, 3)


def test_every_bin_is_within_one_track_of_its_target_for_every_label():
    rng = random.Random(5)
    for trial in range(40):
        per_label = {f"l{j}": rng.randint(1, 60) for j in range(rng.randint(1, 6))}
        ratios = [rng.random() + 0.01 for _ in range(rng.randint(2, 6))]
        keys, labels = _tracks(per_label)
        bins = assign_bins(keys, labels, ratios, seed=trial)
        total = sum(ratios)
        c = Counter(zip(labels, bins))
        for lab, n in per_label.items():
            for b, r in enumerate(ratios):
                assert abs(c[lab, b] - r / total * n) < 1.0, (per_label, ratios, lab, b)


def test_a_zero_ratio_bin_gets_nothing():
    keys, labels = _tracks({"a": 17, "b": 5})
    splits = stratified_splits(keys, labels, parse_ratios("8,2,0"), seed=3)
    assert set(splits) == {"train", "valid"}
    groups = [k[:3] for k in keys]  # groups of up to 10 tracks
    assert "test" not in stratified_splits(keys, labels, (0.8, 0.2, 0.0), seed=3, groups=groups)


# ---------------------------------------------------------------------------------------- determinism
def test_assignment_depends_on_keys_labels_groups_and_seed_never_on_input_order():
    keys, labels = _tracks({"a": 40, "b": 25, "c": 9})
    groups = [f"artist{i % 17}" if i % 3 else None for i in range(len(keys))]  # some tracks ungrouped
    base = dict(zip(keys, stratified_splits(keys, labels, RATIOS, seed=11, groups=groups)))
    order = list(range(len(keys)))
    for shuffle_seed in range(3):
        random.Random(shuffle_seed).shuffle(order)
        again = stratified_splits(
            [keys[i] for i in order], [labels[i] for i in order], RATIOS, 11, [groups[i] for i in order]
        )
        assert dict(zip([keys[i] for i in order], again)) == base
    # the same seed gives the same split; another seed another one (with the same per-label counts)
    assert dict(zip(keys, stratified_splits(keys, labels, RATIOS, 11, groups))) == base
    other = stratified_splits(keys, labels, RATIOS, 12)
    same_seed = stratified_splits(keys, labels, RATIOS, 11)
    assert other != same_seed and _counts(other, labels) == _counts(same_seed, labels)


def test_items_without_a_group_are_groups_of_their_own():
    keys, labels = _tracks({"a": 30, "b": 12})
    plain = assign_bins(keys, labels, RATIOS, seed=4)
    assert assign_bins(keys, labels, RATIOS, seed=4, groups=[None] * len(keys)) == plain
    # naming each track its own group changes the unit names, not the allocation per label
    own = assign_bins(keys, labels, RATIOS, seed=4, groups=list(keys))
    assert _counts(own, labels) == _counts(plain, labels)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="same length"):
        assign_bins(["a", "b"], ["x"], RATIOS, 0)
    with pytest.raises(ValueError, match="same length"):
        assign_bins(["a", "b"], ["x", "y"], RATIOS, 0, groups=["g"])


# --------------------------------------------------------------------------------------------- groups
def _artists(n_artists: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Tracks of artists with 1-9 tracks each; an artist plays one genre (as in GTZAN / MSD)."""
    rng = random.Random(seed)
    keys, labels, groups = [], [], []
    for a in range(n_artists):
        genre = ("rock", "jazz", "pop", "metal")[a % 4]
        for t in range(rng.randint(1, 9)):
            keys.append(f"a{a:03d}t{t}")
            labels.append(genre)
            groups.append(f"artist{a:03d}")
    return keys, labels, groups


def test_an_artist_never_appears_on_both_sides_of_a_split():
    keys, labels, groups = _artists(80, seed=0)
    for seed in range(5):
        splits = stratified_splits(keys, labels, RATIOS, seed, groups)
        sides = defaultdict(set)
        for g, s in zip(groups, splits):
            sides[g].add(s)
        assert all(len(s) == 1 for s in sides.values())
        # and the proportions stay near the ratios: within the largest artist (9 tracks) per split and genre
        c = split_summary(splits, labels)
        for genre in set(labels):
            n = labels.count(genre)
            for split, r in zip(("train", "valid", "test"), RATIOS):
                assert abs(c[split][genre] - r * n) <= 9, (seed, genre, split)


def test_one_big_group_goes_whole_to_the_largest_bin():
    keys, labels = _tracks({"a": 10, "b": 10})
    groups = ["same"] * 12 + [None] * 8  # 10 a + 2 b in one group
    bins = assign_bins(keys, labels, RATIOS, seed=0, groups=groups)
    assert set(bins[:12]) == {0}  # visited first (largest unit), where the deficit is largest
    # the 8 loose b tracks then fill b's remaining targets: 7 - 2 = 5 train, 1.5 -> 2 valid, 1 test
    assert Counter(bins[12:]) == {0: 5, 1: 2, 2: 1}


# ---------------------------------------------------------------------------------------------- folds
@pytest.mark.parametrize("k", [2, 5, 10])
def test_folds_partition_the_tracks_stratified_by_label(k):
    keys, labels = _tracks({"a": 23, "b": 50, "c": 7})
    folds = kfold(keys, labels, k, seed=2)
    assert len(folds) == len(keys) and set(folds) <= set(range(k))
    members = [{key for key, f in zip(keys, folds) if f == i} for i in range(k)]
    assert set().union(*members) == set(keys) and sum(map(len, members)) == len(keys)  # disjoint, complete
    c = Counter(zip(labels, folds))
    for lab in "abc":
        n = labels.count(lab)
        assert all(abs(c[lab, f] - n / k) < 1.0 for f in range(k))  # floor or ceil of n / k
    assert kfold(keys, labels, k, seed=2) == folds
    assert kfold(keys, labels, k, seed=3) != folds


def test_an_artist_is_in_exactly_one_fold():
    keys, labels, groups = _artists(60, seed=1)
    folds = kfold(keys, labels, 5, seed=7, groups=groups)
    per_artist = defaultdict(set)
    for g, f in zip(groups, folds):
        per_artist[g].add(f)
    assert all(len(f) == 1 for f in per_artist.values())
    assert set(folds) == set(range(5))


def test_folds_are_not_the_split_assignment_with_other_ratios():
    # a separate seed stream: the folds do not line up with the train/valid/test shuffle of the same seed
    keys, labels = _tracks({"a": 50, "b": 50})
    assert kfold(keys, labels, 3, seed=0) != assign_bins(keys, labels, [1 / 3] * 3, seed=0)


@pytest.mark.parametrize("k", [1, 0, -2])
def test_fewer_than_two_folds_is_an_error(k):
    with pytest.raises(ValueError, match=f"--folds {k}: need at least 2 folds"):
        kfold(["a", "b"], ["x", "y"], k, seed=0)


# ---------------------------------------------------------------------------------------------- GTZAN
def test_shipped_gtzan_filtered_split_has_the_published_sizes_and_no_overlap():
    lists = gtzan_filtered_lists()
    # Kereliuk, Sigtia & Sturm (2015) fault-filtered split: 443 / 197 / 290 of GTZAN's 1000 excerpts
    assert Counter(lists.values()) == {"train": 443, "valid": 197, "test": 290}
    assert len(lists) == 930  # no excerpt in two lists (a dict would hide a duplicate)
    genres = {"blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"}
    for name in lists:
        genre, file = name.split("/")
        assert genre in genres and file.startswith(f"{genre}.00") and file.endswith(".wav")
    per_genre = split_summary(list(lists.values()), [n.split("/")[0] for n in lists])
    assert all(
        per_genre[s].keys() == genres for s in ("train", "valid", "test")
    )  # every genre in every split
