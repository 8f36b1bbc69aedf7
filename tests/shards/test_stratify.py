"""Iterative stratification: every tag is spread over the folds in the ratios (within one item of the
desired count when ungrouped, within a stated share when grouped), groups are never split, sizes follow the
ratios, the result is a function of inputs and seed, and single-label input is split like a stratified
split."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.stratify import iterative_kfold, iterative_split, iterative_stratification, label_counts_per_bin

N = 3000
TAGS = [f"tag{j:02d}" for j in range(25)]


@pytest.fixture(scope="module")
def dataset() -> tuple[list[list[str]], list[str]]:
    """3000 tracks, 25 tags with Zipf-like frequencies (about 30 % down to 2 %; some tracks untagged), by
    artists of 1 to about 60 tracks (geometric, mean 10) whose tracks mostly share the artist's main tag."""
    rng = np.random.default_rng(0)
    freq = 0.3 / (1 + np.arange(len(TAGS))) ** 0.9
    artists: list[str] = []
    labels: list[list[str]] = []
    while len(labels) < N:
        a = len(set(artists))
        main = TAGS[int(rng.choice(len(TAGS), p=freq / freq.sum()))]
        for _ in range(min(int(rng.geometric(0.1)), N - len(labels))):
            tags = {t for t, f in zip(TAGS, freq) if rng.random() < f / 2}
            if rng.random() < 0.8:
                tags.add(main)
            labels.append(sorted(tags))
            artists.append(f"artist{a}")
    return labels, artists


def _deviation(labels, bins, ratios) -> tuple[float, float]:
    """Largest |count - desired count| and largest |share in bin - overall share| over (bin, tag)."""
    per_bin, sizes = label_counts_per_bin(labels, bins)
    total = Counter(t for labs in labels for t in set(labs))
    r = np.asarray(ratios, dtype=float) / sum(ratios)
    keys = sorted(sizes)
    count_dev = max(abs(per_bin[b][t] - r[i] * total[t]) for i, b in enumerate(keys) for t in total)
    share_dev = max(abs(per_bin[b][t] / sizes[b] - total[t] / len(labels)) for b in keys for t in total)
    return count_dev, share_dev


@pytest.mark.parametrize("ratios", [[1, 1, 1, 1, 1], [0.7, 0.15, 0.15], [0.8, 0.1, 0.1]])
def test_every_tag_is_within_one_item_of_its_desired_count_per_bin(dataset, ratios):
    labels, _ = dataset
    bins = iterative_stratification(labels, ratios, seed=1)
    count_dev, share_dev = _deviation(labels, bins, ratios)
    assert count_dev <= 1.0  # tolerance: one item per (bin, tag)
    assert share_dev <= 0.005  # so every tag's share per bin is within 0.5 points of its overall share


def test_sizes_match_the_ratios(dataset):
    labels, _ = dataset
    for ratios in ([1] * 5, [0.7, 0.15, 0.15]):
        sizes = Counter(iterative_stratification(labels, ratios, seed=2))
        for j, r in enumerate(np.asarray(ratios) / sum(ratios)):
            assert abs(sizes[j] - r * N) <= 1


def _largest_in_one_group(labels, artists) -> tuple[Counter, int]:
    """Per tag, the most tracks of it that one artist holds; and the largest artist's size."""
    per = Counter((a, t) for labs, a in zip(labels, artists) for t in labs)
    most: Counter = Counter()
    for (_, t), c in per.items():
        most[t] = max(most[t], c)
    return most, max(Counter(artists).values())


@pytest.mark.parametrize("ratios", [[1, 1, 1, 1, 1], [0.8, 0.1, 0.1]])
def test_grouped_bins_never_split_a_group_and_stay_stratified(dataset, ratios):
    labels, artists = dataset
    bins = iterative_stratification(labels, ratios, seed=3, groups=artists)
    bin_of: dict[str, set[int]] = {}
    for a, b in zip(artists, bins):
        bin_of.setdefault(a, set()).add(b)
    assert all(len(b) == 1 for b in bin_of.values())
    most, largest = _largest_in_one_group(labels, artists)
    per_bin, sizes = label_counts_per_bin(labels, bins)
    total = Counter(t for labs in labels for t in labs)
    r = np.asarray(ratios) / sum(ratios)
    for b in sizes:
        assert abs(sizes[b] - r[b] * N) <= largest  # tolerance: one group
        for t in total:  # tolerance: 1.5 times the most tracks of the tag one artist holds
            assert abs(per_bin[b][t] - r[b] * total[t]) <= 1.5 * most[t]
    assert (
        _deviation(labels, bins, ratios)[1] <= 0.05
    )  # every tag's share within 5 points of its overall share


def test_grouped_stratification_spreads_tags_far_better_than_random_groups(dataset):
    labels, artists = dataset
    total = Counter(t for labs in labels for t in labs)

    def mean_dev(bins):
        per_bin, _ = label_counts_per_bin(labels, bins)
        return np.mean([abs(per_bin[b][t] - total[t] / 5) for b in range(5) for t in total])

    rng = random.Random(0)
    fold_of = {a: rng.randrange(5) for a in sorted(set(artists))}
    assert mean_dev(iterative_kfold(labels, 5, 0, artists)) < 0.5 * mean_dev([fold_of[a] for a in artists])


def test_stratified_beats_a_random_split_on_tag_spread(dataset):
    labels, _ = dataset
    rng = random.Random(0)
    random_bins = [rng.randrange(5) for _ in labels]
    assert (
        _deviation(labels, iterative_kfold(labels, 5, 0), [1] * 5)[0]
        < _deviation(labels, random_bins, [1] * 5)[0]
    )


def test_same_inputs_and_seed_give_the_same_bins_and_another_seed_differs(dataset):
    labels, artists = dataset
    state = random.getstate()
    a = iterative_split(labels, (0.8, 0.1, 0.1), seed=5, groups=artists)
    random.seed(123)  # the global generator plays no part
    b = iterative_split(labels, (0.8, 0.1, 0.1), seed=5, groups=artists)
    random.setstate(state)
    assert a == b and set(a) == {"train", "valid", "test"}
    assert iterative_split(labels, (0.8, 0.1, 0.1), seed=6, groups=artists) != a


def test_single_label_input_is_split_like_a_stratified_split():
    rng = np.random.default_rng(1)
    classes = [f"g{int(c)}" for c in rng.choice(6, size=997, p=[0.4, 0.2, 0.15, 0.15, 0.07, 0.03])]
    ratios = (0.7, 0.15, 0.15)
    splits = iterative_split([[c] for c in classes], ratios, seed=0)
    per_split = {s: Counter(c for c, x in zip(classes, splits) if x == s) for s in ("train", "valid", "test")}
    total = Counter(classes)
    for r, s in zip(ratios, ("train", "valid", "test")):
        for c, n in total.items():
            assert abs(per_split[s][c] - r * n) <= 1  # every class as close to the ratio as integers allow


def test_a_zero_ratio_bin_gets_nothing_and_bad_ratios_raise():
    labels = [["a"], ["a", "b"], ["b"], [], ["c"]] * 10
    assert 2 not in iterative_stratification(labels, [0.5, 0.5, 0.0], seed=0)
    with pytest.raises(ValueError, match="ratios"):
        iterative_stratification(labels, [1.0, -1.0], seed=0)
    with pytest.raises(ValueError, match="at least 2 folds"):
        iterative_kfold(labels, 1, seed=0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sets(st.sampled_from("abcde"), max_size=3), st.one_of(st.none(), st.integers(0, 6))),
        min_size=1,
        max_size=40,
    ),
    st.integers(2, 4),
    st.integers(0, 2**32 - 1),
)
def test_any_input_gives_valid_bins_with_groups_kept_whole_and_repeatable(items, k, seed):
    labels = [sorted(labs) for labs, _ in items]
    groups = [g for _, g in items]
    folds = iterative_kfold(labels, k, seed, groups)
    assert len(folds) == len(labels) and all(0 <= f < k for f in folds)
    for g in set(groups) - {None}:
        assert len({f for f, h in zip(folds, groups) if h == g}) == 1
    assert iterative_kfold(labels, k, seed, groups) == folds
