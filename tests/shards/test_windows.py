"""The one window policy shared by evaluation (shards.reader) and classification (engine.classify)."""

from __future__ import annotations

import numpy as np
import pytest

from shards.windows import fill_window, window_starts


@pytest.mark.parametrize(
    ("n", "seg", "hop", "want"),
    [
        (10, 64, None, [0]),  # shorter than a window: one (padded) window
        (64, 64, None, [0]),  # exactly one window
        (95, 64, None, [0]),  # 31-sample tail < 32: left out
        (96, 64, None, [0, 32]),  # 32-sample tail >= half a window: one end-aligned window
        (256, 64, None, [0, 64, 128, 192]),  # tiles exactly
        (200, 64, 48, [0, 48, 96, 136]),  # overlapping hop; 40-sample tail >= 24: end-aligned
        (999, 64, 48, [48 * k for k in range(20)]),  # 23-sample tail < 24: left out
    ],
)
def test_windows_tile_the_track_and_cover_a_long_tail_with_an_end_aligned_window(n, seg, hop, want):
    assert window_starts(n, seg, hop=hop).tolist() == want


def test_max_windows_spreads_evenly_from_first_to_last_start():
    assert window_starts(1000, 100, max_windows=3).tolist() == [0, 450, 900]
    assert window_starts(1000, 100, max_windows=1).tolist() == [450]  # the middle of the track
    assert window_starts(300, 100, max_windows=5).tolist() == [0, 100, 200]  # fewer windows than asked


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError):
        window_starts(100, 0)
    with pytest.raises(ValueError):
        window_starts(100, 10, hop=0)


def test_fill_window_fills_only_a_track_shorter_than_one_window():
    x = np.arange(1, 4, dtype=np.int16)
    np.testing.assert_array_equal(fill_window(x, 8, "loop"), [1, 2, 3, 1, 2, 3, 1, 2])
    np.testing.assert_array_equal(fill_window(x, 8, "zero"), [1, 2, 3, 0, 0, 0, 0, 0])
    long = np.arange(10, dtype=np.int16)
    assert fill_window(long, 8, "loop") is long  # a whole window or more: untouched, not cut
    np.testing.assert_array_equal(fill_window(np.zeros(0, np.int16), 4, "loop"), np.zeros(4, np.int16))
