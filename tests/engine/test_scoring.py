"""The window scorer: windows of many tracks packed into device batches, outputs routed back per track."""

from __future__ import annotations

import numpy as np
import torch

from engine.scoring import WindowScorer, forward
from shards.windows import fill_window, window_starts

T = 8  # window, samples
# a fixed linear "model" with small integer weights: every sum exact, whatever the batch (no BLAS rounding)
WEIGHTS = np.random.default_rng(0).integers(-4, 5, size=(T, 3)).astype(np.float64)


class _Model:
    """int16 windows (n, T) -> float32 (n, 3): the fixed linear map; records the size of every batch."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, windows: torch.Tensor) -> np.ndarray:
        self.batches.append(len(windows))
        return (windows.numpy().astype(np.float64) @ WEIGHTS).astype(np.float32)


def _tracks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    lengths = {"a": 37, "b": 5, "c": 8, "d": 61}  # "b" shorter than a window, "c" exactly one
    return {k: rng.integers(-3000, 3000, size=n).astype(np.int16) for k, n in lengths.items()}


def test_per_track_mean_equals_a_hand_computation_across_batch_boundaries():
    tracks, model = _tracks(), _Model()
    scorer = WindowScorer(model, batch_size=3, window_samples=T, device=torch.device("cpu"))
    done = []
    for key, wave in tracks.items():
        done += scorer.add_track(key, wave, hop=6, info={"key": key})
    done += scorer.flush()

    assert [t.key for t in done] == list(tracks)  # every track, in the order added
    assert sum(model.batches) == sum(len(t.starts) for t in done) and max(model.batches) == 3
    assert len(model.batches) > len(tracks)  # tracks are split across batch boundaries
    for track in done:
        x = fill_window(tracks[track.key], T, "loop")
        starts = window_starts(len(x), T, hop=6)
        by_hand = np.stack([x[s : s + T].astype(np.float64) @ WEIGHTS for s in starts])  # (n, 3), exact
        assert track.starts == starts.tolist() and track.info == {"key": track.key}
        np.testing.assert_array_equal(track.rows(), by_hand)
        np.testing.assert_allclose(track.mean(), by_hand.sum(axis=0) / len(starts), rtol=1e-15)


def test_a_track_fed_in_pieces_finishes_after_its_last_window_and_a_dropped_track_is_discarded():
    model = _Model()
    scorer = WindowScorer(model, batch_size=5, window_samples=T, device=torch.device("cpu"))
    w = np.arange(5 * T, dtype=np.int16).reshape(5, T)
    assert scorer.add_windows("x", w[:2], [0, 8], last=False) == []
    assert scorer.add_windows("gone", w[2:3], [0], last=False) == []
    assert scorer.drop("gone") is not None
    done = scorer.add_windows("x", w[3:5], [16, 24], last=True)  # fills the batch: "x" is complete
    assert [t.key for t in done] == ["x"] and model.batches == [5]
    np.testing.assert_array_equal(done[0].rows(), w[[0, 1, 3, 4]].astype(np.float64) @ WEIGHTS)
    assert scorer.flush() == [] and scorer.clear() == []


def test_forward_runs_on_the_device_and_returns_float32():
    out = forward(lambda x: x.to(torch.float64) * 2, torch.ones(2, 3, dtype=torch.int16), torch.device("cpu"), None)
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((2, 3), 2.0))
