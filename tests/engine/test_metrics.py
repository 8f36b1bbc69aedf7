"""engine.metrics against figures computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from engine.metrics import Accumulator, aggregate_tracks, classification_metrics, track_and_segment_metrics

NAMES = ["blues", "jazz", "rock"]
# 8 samples, 3 classes. (label, predicted, second choice)
CASE = [(0, 0, 1), (0, 0, 2), (0, 1, 2), (1, 1, 0), (1, 1, 2), (1, 1, 0), (2, 2, 0), (2, 0, 2)]


def _probs(rows: list[tuple[int, int, int]], k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.full((len(rows), k), 0.1 / max(k - 2, 1))
    for i, (_, first, second) in enumerate(rows):
        probs[i, first] = 0.6
        probs[i, second] = 0.3
    return probs, torch.tensor([r[0] for r in rows])


def test_classification_metrics_match_hand_computed_values():
    probs, labels = _probs(CASE)
    m = classification_metrics(probs, labels, NAMES)
    # confusion (rows true): blues [2,1,0], jazz [0,3,0], rock [1,0,1]
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["top2_accuracy"] == pytest.approx(7 / 8)  # only sample 2 (blues -> jazz, rock) misses
    # predicted-column totals: 3, 4, 1
    expected = {
        "blues": (2 / 3, 2 / 3, 2 / 3, 3),
        "jazz": (3 / 4, 1.0, 6 / 7, 3),
        "rock": (1.0, 1 / 2, 2 / 3, 2),
    }
    for name, (p, r, f, s) in expected.items():
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(p)
        assert pc["recall"] == pytest.approx(r)
        assert pc["f1"] == pytest.approx(f)
        assert pc["support"] == s
    assert m["macro_precision"] == pytest.approx(29 / 36)
    assert m["macro_recall"] == pytest.approx(13 / 18)
    assert m["macro_f1"] == pytest.approx(46 / 63)
    assert m["weighted_precision"] == pytest.approx((3 * 2 / 3 + 3 * 3 / 4 + 2 * 1.0) / 8)
    assert m["weighted_recall"] == pytest.approx(6 / 8)
    assert m["weighted_f1"] == pytest.approx((3 * 2 / 3 + 3 * 6 / 7 + 2 * 2 / 3) / 8)
    assert m["classes_evaluated"] == NAMES


def test_macro_average_covers_only_classes_present_in_truth():
    # class "pop" never true but predicted once (sample 7 goes to pop instead of blues)
    rows = [*CASE[:7], (2, 3, 2)]
    probs, labels = _probs(rows, k=4)
    names = [*NAMES, "pop"]
    m = classification_metrics(probs, labels, names)
    assert m["per_class"]["pop"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["classes_evaluated"] == NAMES
    # blues: tp 2 of 2 predicted -> P 1, R 2/3; jazz P 3/4 R 1; rock P 1 R 1/2
    assert m["macro_precision"] == pytest.approx((1.0 + 3 / 4 + 1.0) / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1.0 + 1 / 2) / 3)
    # a macro over all K classes (scikit-learn's labels=range(K), torchmetrics' macro) keeps the
    # predicted-but-absent class (precision 0) -> lower
    from sklearn.metrics import precision_score

    tm = precision_score(labels, probs.argmax(1), labels=range(4), average="macro", zero_division=0)
    assert tm == pytest.approx((1.0 + 3 / 4 + 1.0 + 0.0) / 4)
    # a class absent from truth and predictions is left out by both
    assert m["accuracy"] == pytest.approx(6 / 8)


def test_empty_input_gives_zeros_not_nan():
    m = classification_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), NAMES)
    assert m["n"] == 0 and m["accuracy"] == 0.0 and not math.isnan(m["macro_f1"])
    assert m["confusion_matrix"] == [[0] * 3] * 3


def test_bad_shapes_and_labels_raise_clear_errors():
    with pytest.raises(ValueError, match="label names"):
        classification_metrics(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0, 3]), NAMES)


def test_aggregate_tracks_mean_and_vote_with_tie_broken_by_mean_probability():
    probs = torch.tensor(
        [
            [0.5, 0.4, 0.1],  # track 5: argmax 0
            [0.1, 0.2, 0.7],  # track 5: argmax 2
            [0.6, 0.3, 0.1],  # track 5: argmax 0 -> vote 0, mean argmax 0
            [0.9, 0.05, 0.05],  # track 2: argmax 0
            [0.3, 0.4, 0.3],  # track 2: argmax 1 -> tie 0 vs 1, mean 0.6 vs 0.225 -> 0
            [0.2, 0.45, 0.35],  # track 9: argmax 1
            [0.2, 0.30, 0.50],  # track 9: argmax 2 -> tie 1 vs 2, mean 0.375 vs 0.425 -> 2
            [0.0, 0.0, 0.0],  # padding
        ]
    )
    tracks = torch.tensor([5, 5, 5, 2, 2, 9, 9, 2])
    valid = torch.tensor([True] * 7 + [False])
    ids, mean, vote = aggregate_tracks(probs, tracks, valid)
    assert ids.tolist() == [2, 5, 9]
    torch.testing.assert_close(mean[0], torch.tensor([0.6, 0.225, 0.175]))
    torch.testing.assert_close(mean[1], torch.tensor([1.2 / 3, 0.9 / 3, 0.9 / 3]))
    torch.testing.assert_close(mean[2], torch.tensor([0.2, 0.375, 0.425]))
    assert vote.tolist() == [0, 0, 2]


def test_vote_majority_beats_higher_mean_probability():
    # two weak windows for class 1 outvote one confident window for class 0
    probs = torch.tensor([[0.98, 0.01, 0.01], [0.3, 0.4, 0.3], [0.3, 0.4, 0.3]])
    ids, mean, vote = aggregate_tracks(probs, torch.tensor([0, 0, 0]))
    assert mean.argmax(1).tolist() == [0] and vote.tolist() == [1]


def test_track_and_segment_metrics_ignore_padding_rows():
    # track 0 (blues): windows argmax 0, 0, 1 ; track 1 (jazz): 1, 0 (mean -> jazz); track 2 (rock): 0
    probs = torch.tensor(
        [
            [0.7, 0.2, 0.1],
            [0.6, 0.3, 0.1],
            [0.3, 0.6, 0.1],
            [0.1, 0.8, 0.1],
            [0.5, 0.4, 0.1],
            [0.5, 0.2, 0.3],
            [0.0, 0.0, 1.0],  # padding, would be a correct rock window
            [0.0, 0.0, 1.0],  # padding
        ]
    )
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    tracks = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    valid = torch.tensor([True] * 6 + [False, False])
    m = track_and_segment_metrics(probs, labels, tracks, valid, NAMES)
    assert m["segment"]["n"] == 6
    assert m["segment"]["accuracy"] == pytest.approx(3 / 6)
    assert m["segment"]["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert m["track"]["n"] == 3
    assert m["track"]["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert m["track"]["accuracy"] == pytest.approx(2 / 3)
    # vote: track 1 ties 1-1, mean [0.3, 0.6] -> jazz; track 2 -> blues
    assert m["track_vote"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    # segment top-2: window 4 (jazz, top2 {0,1}) hits, window 5 (rock, top2 {0,2}) hits
    assert m["segment"]["top2_accuracy"] == pytest.approx(6 / 6)


def test_inconsistent_track_labels_raise():
    with pytest.raises(ValueError, match="different labels"):
        track_and_segment_metrics(torch.rand(2, 3), torch.tensor([0, 1]), torch.tensor([4, 4]), None, NAMES)


def test_accumulator_drops_padding_and_duplicate_windows():
    acc = Accumulator()
    acc.update(
        torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]),
        torch.tensor([0, 1, 1]),
        torch.tensor([3, 1, 1]),
        torch.tensor([True, True, False]),
        windows=torch.tensor([0, 0, 0]),
    )
    # the same window of track 3 seen again (e.g. wrapped around) and a new window of track 1
    acc.update(
        torch.tensor([[0.9, 0.1], [0.4, 0.6]]),
        torch.tensor([0, 1]),
        torch.tensor([3, 1]),
        windows=torch.tensor([0, 16000]),
    )
    assert len(acc) == 5
    out = acc.compute()
    assert out["tracks"].tolist() == [1, 1, 3]  # sorted by track, then arrival
    assert out["labels"].tolist() == [1, 1, 0]
    torch.testing.assert_close(out["probs"], torch.tensor([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1]]))


def test_accumulator_empty_returns_empty_tensors():
    out = Accumulator().compute(num_classes=4)
    assert out["probs"].shape == (0, 4) and out["tracks"].numel() == 0


def test_accumulator_with_only_invalid_windows_returns_empty_tensors():
    # e.g. every class unmapped by a cross-dataset label map: batches arrive, no window is valid
    acc = Accumulator()
    acc.update(torch.full((3, 4), 0.25), torch.zeros(3, dtype=torch.long), torch.arange(3), torch.zeros(3, dtype=torch.bool))
    out = acc.compute(num_classes=4)
    assert out["probs"].shape == (0, 4) and out["tracks"].numel() == 0 and out["labels"].numel() == 0
    m = track_and_segment_metrics(out["probs"], out["labels"], out["tracks"], None, ["a", "b", "c", "d"])
    assert m["segment"]["n"] == 0 and m["track"]["n"] == 0 and m["track"]["accuracy"] == 0.0


def test_mean_logprob_aggregate_is_the_renormalised_geometric_mean_and_both_are_reported():
    # track 0 (blues): two windows lean blues, one rules blues out -> the mean of probabilities says blues,
    # the mean of log-probabilities (product) lets the one confident window veto it
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [1e-6, 0.999999, 0.0], [0.2, 0.2, 0.6]])
    tracks = torch.tensor([0, 0, 0, 1])
    labels = torch.tensor([0, 0, 0, 2])
    _, mean, _ = aggregate_tracks(probs, tracks)
    ids, geo, _ = aggregate_tracks(probs, tracks, aggregate="mean_logprob")
    floor = torch.finfo(torch.float32).tiny
    logs = probs.double().clamp_min(floor).log()
    want = torch.softmax(torch.stack([logs[:3].mean(0), logs[3]]), dim=1).float()
    torch.testing.assert_close(geo, want)
    assert mean.argmax(1).tolist() == [0, 2] and geo.argmax(1).tolist() == [1, 2]
    m = track_and_segment_metrics(probs, labels, tracks, None, NAMES, aggregate="mean_logprob")
    assert m["track_aggregate"] == "mean_logprob" and m["track"]["accuracy"] == pytest.approx(0.5)
    assert m["track_mean_prob"]["accuracy"] == 1.0 and m["track_mean_logprob"]["accuracy"] == pytest.approx(0.5)
    default = track_and_segment_metrics(probs, labels, tracks, None, NAMES)
    assert default["track_aggregate"] == "mean_prob" and default["track"]["accuracy"] == 1.0
    # one window per track: both aggregates give that window's probabilities
    _, one, _ = aggregate_tracks(probs[3:], tracks[3:], aggregate="mean_logprob")
    torch.testing.assert_close(one, probs[3:])
    with pytest.raises(ValueError, match="aggregate must be one of"):
        aggregate_tracks(probs, tracks, aggregate="median")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_precision_recall_f1_equal_scikit_learns_with_zero_division_0(seed):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    g = torch.Generator().manual_seed(seed)
    k = 5
    labels = torch.randint(0, k - 1, (60,), generator=g)  # class 4 never true
    probs = torch.rand(60, k, generator=g)
    m = classification_metrics(probs, labels, [f"c{i}" for i in range(k)])
    preds = probs.argmax(1).numpy()
    p, r, f, s = precision_recall_fscore_support(labels.numpy(), preds, labels=range(k), zero_division=0)
    for i in range(k):
        got = m["per_class"][f"c{i}"]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert m["confusion_matrix"] == confusion_matrix(labels.numpy(), preds, labels=range(k)).tolist()
