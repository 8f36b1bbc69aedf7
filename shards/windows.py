"""Where a track is cut into model windows: one policy for evaluation (shards.reader) and classification.

Windows of ``segment`` samples start every ``hop`` samples while they fit inside the track; a tail of at
least half a hop gets one more window aligned to the track's end (real audio instead of zero padding; a
shorter tail is left out). A track no longer than one window has one window at 0 (the caller pads it).
So ``python -m engine evaluate`` scores exactly the windows ``python -m engine classify`` averages, and a
track shorter than its window is filled the same way (:func:`fit_length`) in training, evaluation and
classification.
"""

from __future__ import annotations

import numpy as np


def window_starts(
    num_samples: int, segment: int, *, hop: int | None = None, max_windows: int | None = None
) -> np.ndarray:
    """Start sample of every window of a track of ``num_samples``, int64 ``(n,)``, ``n >= 1``.

    ``hop`` defaults to ``segment`` (non-overlapping). ``max_windows`` keeps that many, spread evenly from
    the first to the last possible start (one window: the middle of the track).
    """
    hop = segment if hop is None else hop
    if segment <= 0 or hop <= 0:
        raise ValueError(f"segment and hop must be > 0, got {segment}, {hop}")
    if num_samples <= segment:
        return np.zeros(1, dtype=np.int64)
    last = num_samples - segment  # the last start that fits
    starts = np.arange(0, last + 1, hop, dtype=np.int64)
    if last - starts[-1] >= max(1, hop // 2):  # tail not covered by a window
        starts = np.append(starts, np.int64(last))
    if max_windows is not None and max_windows < len(starts):
        if max_windows == 1:
            return np.array([last // 2], dtype=np.int64)
        return np.rint(np.linspace(0, last, max_windows)).astype(np.int64)
    return starts


def fill_window(x: np.ndarray, segment: int, pad: str) -> np.ndarray:
    """A track shorter than one window, filled to exactly one (``pad``: ``"loop"`` from its start, or
    ``"zero"``); a track of at least one window is returned as it is. The one policy of evaluation, ``embed``
    and ``classify`` for short tracks (training fills a short crop from a random phase: ``fit_length``)."""
    return fit_length(x, segment, pad) if x.shape[0] < segment else x


def fit_length(x: np.ndarray, length: int, pad: str = "zero", phase: int = 0) -> np.ndarray:
    """``x`` ``(n, ...)`` -> ``(length, ...)`` along the first axis: cut to ``length``, or fill to it with zeros
    (``pad="zero"``, or an empty ``x``) or with ``x`` looped, starting at sample ``phase`` (``pad="loop"``)."""
    n = x.shape[0]
    if n >= length:
        return x[:length]
    if n == 0 or pad == "zero":
        out = np.zeros((length, *x.shape[1:]), dtype=x.dtype)
        out[:n] = x
        return out
    reps = -(-(length + phase) // n)
    return np.concatenate([x] * reps, axis=0)[phase : phase + length]
