"""Multi-label metrics agree with scikit-learn on fixed scores (ties, a tag without positives, one without
negatives, logits), per-tag thresholds maximise validation F1, track pooling means window sigmoids, and the
accumulator gives the numbers of the whole set."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from engine.tag_metrics import (
    TagAccumulator,
    average_precision_per_tag,
    choose_thresholds,
    f1_scores,
    micro_average_precision,
    micro_roc_auc,
    pool_by_track,
    roc_auc_per_tag,
    tag_metrics,
)

TAGS = ["rock", "jazz", "ties", "none", "all", "coarse"]


@pytest.fixture
def fixed() -> tuple[np.ndarray, np.ndarray]:
    """40 rows x 6 tags: random scores; tag 2 scores on a 3-level grid (many ties across classes), tag 3 has
    no positive, tag 4 no negative, tag 5 scores rounded to 0.1 (ties)."""
    rng = np.random.default_rng(3)
    n = 40
    y = (rng.random((n, 6)) < [0.3, 0.5, 0.4, 0.0, 1.0, 0.2]).astype(np.int64)
    s = rng.random((n, 6))
    s[:, 0] += 0.4 * y[:, 0]
    s[:, 2] = rng.integers(0, 3, n) / 2 + 0.25 * y[:, 2]
    s[:, 2] = np.round(s[:, 2] * 2) / 2  # grid of 0.5: ties between positives and negatives
    s[:, 5] = np.round(s[:, 5] + 0.2 * y[:, 5], 1)
    assert y[:, 3].sum() == 0 and y[:, 4].sum() == n
    return s, y


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def test_per_tag_auc_and_ap_match_sklearn_with_ties_and_nan_for_one_class_tags(fixed):
    s, y = fixed
    auc = roc_auc_per_tag(_t(s), _t(y)).numpy()
    ap = average_precision_per_tag(_t(s), _t(y)).numpy()
    for j in (0, 1, 2, 5):
        assert auc[j] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
        assert ap[j] == pytest.approx(average_precision_score(y[:, j], s[:, j]), abs=1e-12)
    assert math.isnan(auc[3]) and math.isnan(auc[4]) and math.isnan(ap[3]) and math.isnan(ap[4])


def test_macro_means_leave_out_one_class_tags_and_count_them(fixed):
    s, y = fixed
    m = tag_metrics(_t(s), _t(y), TAGS)
    ok = [0, 1, 2, 5]
    assert m["tags_left_out"] == 2 and m["tags_left_out_names"] == ["none", "all"]
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y[:, ok], s[:, ok], average="macro"), abs=1e-12)
    assert m["pr_auc_macro"] == pytest.approx(
        average_precision_score(y[:, ok], s[:, ok], average="macro"), abs=1e-12
    )
    assert m["per_tag"]["none"]["support"] == 0 and m["per_tag"]["all"]["support"] == 40
    json.dumps(m)  # JSON-ready (NaN written as NaN)


def test_micro_averages_pool_all_pairs_like_sklearn(fixed):
    s, y = fixed
    assert micro_roc_auc(_t(s), _t(y)) == pytest.approx(roc_auc_score(y, s, average="micro"), abs=1e-12)
    assert micro_average_precision(_t(s), _t(y)) == pytest.approx(
        average_precision_score(y, s, average="micro"), abs=1e-12
    )


def test_auc_uses_the_raw_order_of_logits_without_saturating_them():
    y = np.array([0, 1, 0, 1, 1, 0])
    logits = np.array([40.0, 50.0, 45.0, 60.0, -3.0, -4.0])  # sigmoid(40..60) are all 1.0 in float64
    auc = float(roc_auc_per_tag(_t(logits[:, None]), _t(y[:, None]))[0])
    assert auc == pytest.approx(roc_auc_score(y, logits), abs=1e-15)


def test_f1_at_half_matches_sklearn_and_macro_skips_tags_without_support(fixed):
    s, y = fixed
    s = s / s.max()  # in [0, 1]
    f = f1_scores(_t(s), _t(y), 0.5)
    pred = (s >= 0.5).astype(int)
    want = f1_score(y, pred, average=None, zero_division=0)
    np.testing.assert_allclose(f["per_tag"].numpy(), want, atol=1e-12)
    present = y.sum(0) > 0
    assert f["macro"] == pytest.approx(want[present].mean(), abs=1e-12)
    assert f["micro"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)


def test_chosen_thresholds_reach_the_best_f1_of_every_cut(fixed):
    s, y = fixed
    thr = choose_thresholds(_t(s), _t(y))
    assert isinstance(thr, list) and len(thr) == 6 and all(isinstance(v, float) for v in thr)
    assert thr[3] == 0.5  # no positive: the default
    tuned = f1_scores(_t(s), _t(y), thr)["per_tag"].numpy()
    for j in (0, 1, 2, 4, 5):
        best = max(f1_score(y[:, j], (s[:, j] >= c).astype(int), zero_division=0) for c in np.unique(s[:, j]))
        assert tuned[j] == pytest.approx(best, abs=1e-12)
        # same predictions with > as with >=: the threshold lies between two scores
        assert (
            f1_score(y[:, j], (s[:, j] > thr[j]).astype(int), zero_division=0) == pytest.approx(tuned[j])
            or thr[j] == s[:, j].min()
        )
    m = tag_metrics(_t(s), _t(y), TAGS, thresholds=thr)
    assert m["f1_macro_tuned"] >= m["f1_macro"] - 1e-12 and m["per_tag"]["rock"]["threshold"] == thr[0]


def test_empty_input_gives_nan_aucs_and_every_tag_left_out():
    m = tag_metrics(torch.zeros(0, 3), torch.zeros(0, 3), ["a", "b", "c"])
    assert m["n"] == 0 and m["tags_left_out"] == 3 and math.isnan(m["roc_auc_macro"])


def test_bad_shapes_and_non_binary_targets_raise():
    with pytest.raises(ValueError, match="both be"):
        tag_metrics(torch.zeros(4, 3), torch.zeros(4, 2), ["a", "b", "c"])
    with pytest.raises(ValueError, match="only 0 and 1"):
        roc_auc_per_tag(torch.zeros(2, 1), torch.tensor([[0.5], [1.0]]))


def test_pool_by_track_means_window_scores_and_checks_targets():
    scores = torch.tensor([[0.2, 0.9], [0.4, 0.7], [0.6, 0.1], [1.0, 0.0]])
    targets = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 0]])
    ids, pooled, tt = pool_by_track(scores, torch.tensor([7, 7, 3, 7]), targets)
    assert ids.tolist() == [3, 7]
    torch.testing.assert_close(pooled, torch.tensor([[0.6, 0.1], [1.6 / 3, 1.6 / 3]], dtype=torch.float64))
    assert tt.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="different targets"):
        pool_by_track(scores, torch.tensor([7, 7, 7, 3]), targets)


def test_accumulator_with_identity_gather_equals_metrics_of_the_whole_set(fixed):
    s, y = fixed
    tracks = np.arange(40) // 2  # two windows per track, same targets within a track
    y = y[tracks * 2]
    gathered = []

    def gather(x: torch.Tensor) -> torch.Tensor:
        gathered.append(x.shape[0])
        return x

    acc = TagAccumulator(gather)
    for a in range(0, 40, 16):
        acc.update(_t(s[a : a + 16]), _t(y[a : a + 16]), _t(tracks[a : a + 16]))
    assert len(acc) == 40 and gathered == [16] * 6 + [8] * 3  # scores, targets, tracks of each batch
    got = acc.compute(TAGS)
    _, ps, pt = pool_by_track(_t(s), _t(tracks), _t(y))
    want = tag_metrics(ps, pt, TAGS)
    assert got["n"] == 20
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    rows = acc.compute(TAGS, track_level=False)
    assert rows["n"] == 40 and rows["roc_auc_macro"] == pytest.approx(
        tag_metrics(_t(s), _t(y), TAGS)["roc_auc_macro"]
    )
    with pytest.raises(ValueError, match="every batch or for none"):
        acc.update(_t(s[:2]), _t(y[:2]))


@settings(max_examples=80, deadline=None)
@given(
    st.integers(2, 30).flatmap(
        lambda n: st.tuples(
            st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, -2.0, 3.5]), min_size=n, max_size=n),
            st.lists(st.integers(0, 1), min_size=n, max_size=n),
        )
    )
)
def test_any_tied_scores_give_sklearns_auc_and_ap(pair):
    s, y = np.asarray(pair[0])[:, None], np.asarray(pair[1])[:, None]
    auc = float(roc_auc_per_tag(_t(s), _t(y))[0])
    ap = float(average_precision_per_tag(_t(s), _t(y))[0])
    if y.min() == y.max():
        assert math.isnan(auc) and math.isnan(ap)
    else:
        assert auc == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]), abs=1e-12)
        assert ap == pytest.approx(average_precision_score(y[:, 0], s[:, 0]), abs=1e-12)
