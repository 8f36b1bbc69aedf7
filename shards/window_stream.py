"""The evaluation pass over a split: every window of every track once, in order, exact under DDP x workers.

Design (see ARCHITECTURE.md, "Reader"; the shared index and worker split are :class:`shards.reader.SplitStream`):
the stream scans the split once (``.json`` members only; ``.pcm`` data is skipped with a seek) to learn each
track's length, cuts every track into windows of ``window_samples`` with hop ``hop_samples``
(:func:`shards.windows.window_starts`: the tail covered by a window aligned to the track's end, short tracks
filled to one window as training fills a short crop: looped by default), splits the window sequence over
ranks by contiguous track ranges (floor split: every track on exactly one rank) and over workers by batches.
Rows that only fill a batch (or equalise the batch count across ranks) have ``valid=False``, ``track=-1``;
so do the rows of a track that could not be read (logged).
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np

from .batching import Batch, EvalBatcher
from .reader import SplitStream
from .tarstream import ShardReadError, iter_samples, sample_meta
from .windows import window_starts

log = logging.getLogger(__name__)

__all__ = ["WindowStream"]


class WindowStream(SplitStream):
    """Evaluation batches of a split: every window of every track once, in track order, split over ranks and
    DataLoader workers.

    Args (besides those of :class:`~shards.reader.SplitStream`: ``shards``, ``split``, ``batch_size``,
    ``rank``, ``world_size``, ``holdout_fold``, ``folds``, ``pad_mode``):
        window_samples: window length in samples at the shard set's sample rate (frames for feature shards).
        hop_samples: window hop (default ``window_samples``: non-overlapping).

    Yields dicts ``{"wave": int16 [B, T], "label": int64 [B], "track": int64 [B], "valid": bool [B]}``:
    ``track`` indexes :meth:`track_keys` (-1 for padding rows), ``valid`` is False for rows that only fill a
    batch. Feature shards give ``"feats": float16 [B, T_frames, D]`` instead of ``"wave"``; multi-label sets
    (:attr:`task` ``"multilabel"``) ``"targets": float32 [B, K]`` multi-hot instead of ``"label"`` (all zero
    on padding rows). The split is
    scanned once at construction (each track's length gives its windows).
    """

    scans_split = True

    def __init__(
        self,
        shards: str | os.PathLike[str] | Sequence[tuple[str, int]],
        split: str,
        *,
        window_samples: int,
        batch_size: int,
        hop_samples: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        holdout_fold: int = -1,
        folds: str = "exclude",
        pad_mode: str = "loop",
    ):
        if window_samples <= 0:
            raise ValueError(f"window_samples must be > 0, got {window_samples}")
        hop = window_samples if hop_samples is None else hop_samples
        if hop <= 0:
            raise ValueError(f"hop_samples must be > 0, got {hop_samples}")
        super().__init__(
            shards, split, batch_size=batch_size, rank=rank, world_size=world_size,
            holdout_fold=holdout_fold, folds=folds, pad_mode=pad_mode,
        )  # fmt: skip
        self.window_samples = int(window_samples)
        self.hop_samples = int(hop)

    def num_windows(self) -> list[int]:
        """Evaluation windows per track, in track order."""
        idx = self._build_index()
        window, hop = self.window_samples, self.hop_samples
        return [len(window_starts(idx.lengths[i], window, hop=hop)) for i in self._selected or []]

    # -- partition
    def _layout(self) -> tuple[list[int], list[int], int]:
        """``(window offsets per track (M+1), track offsets per rank (R+1), batches per rank)``."""
        win_start = [0]
        for w in self.num_windows():
            win_start.append(win_start[-1] + w)
        m = len(win_start) - 1
        rank_tracks = [r * m // self.world_size for r in range(self.world_size + 1)]
        batches = max(
            -(-(win_start[rank_tracks[r + 1]] - win_start[rank_tracks[r]]) // self.batch_size)
            for r in range(self.world_size)
        )
        return win_start, rank_tracks, batches

    def __len__(self) -> int:
        """Batches this rank yields (the same on every rank)."""
        return self._layout()[2]

    # -- reading
    def __iter__(self) -> Iterator[Batch]:
        idx = self._build_index()
        sel = self._selected or []
        window, hop, bs = self.window_samples, self.hop_samples, self.batch_size
        win_start, rank_tracks, num_batches = self._layout()
        b0, b1 = self._worker_batches(num_batches)
        if b1 <= b0:
            return
        r_lo = win_start[rank_tracks[self.rank]]
        r_hi = win_start[rank_tracks[self.rank + 1]]
        w_lo, w_hi = min(r_lo + b0 * bs, r_hi), min(r_lo + b1 * bs, r_hi)  # real windows of this worker
        dim = idx.feature_dim
        if dim is None and self.manifest is not None:
            dim = self.manifest.get("feature_dim")
        is_feats = self.kind == "features" or (self.kind is None and dim is not None)
        batcher = EvalBatcher(
            bs,
            (window, dim) if is_feats else (window,),
            np.float16 if is_feats else np.int16,
            pad=self.pad_mode,
            num_targets=self.num_targets,
        )
        multi = self.num_targets is not None
        for t, x in self._read_tracks(w_lo, w_hi, win_start):
            starts = window_starts(idx.lengths[sel[t]], window, hop=hop)  # the window policy classify uses
            w_a = max(w_lo, win_start[t]) - win_start[t]  # this worker's windows of the track
            w_b = min(w_hi, win_start[t + 1]) - win_start[t]
            target = idx.label_sets[sel[t]] if multi else idx.labels[sel[t]]
            yield from batcher.add_track(t, target, x, starts[w_a:w_b])
        yield from batcher.pad_to((b1 - b0) * bs)  # fill the last batch / equalise batches across ranks

    def _read_tracks(
        self, w_lo: int, w_hi: int, win_start: list[int]
    ) -> Iterator[tuple[int, np.ndarray | None]]:
        """``(track, its samples or frames)`` of the tracks holding windows ``[w_lo, w_hi)``, in order; None
        for a track that could not be read (logged). The data views a reused buffer: valid until the next."""
        if w_hi <= w_lo:
            return
        idx, sel = self._build_index(), self._selected or []
        t_first = bisect.bisect_right(win_start, w_lo) - 1
        t_last = bisect.bisect_right(win_start, w_hi - 1) - 1
        groups: list[tuple[int, list[int]]] = []  # tracks by shard (contiguous: tracks are in manifest order)
        for t in range(t_first, t_last + 1):
            s = idx.shard[sel[t]]
            if not groups or groups[-1][0] != s:
                groups.append((s, []))
            groups[-1][1].append(t)
        for s, tracks in groups:
            url = self.shards[s][0]
            by_ordinal = {idx.ordinal[sel[t]]: t for t in tracks}
            pending = iter(tracks)
            samples = iter_samples(url, [idx.ordinal[sel[t]] for t in tracks])
            while True:
                try:
                    sample = next(samples, None)
                except ShardReadError as e:
                    log.error("%s; its remaining tracks are marked valid=False", e)
                    sample = None
                got_t = by_ordinal[sample.ordinal] if sample is not None else None
                for t in pending:  # tracks before got_t (or all remaining at the end) were not read
                    x = None
                    if t == got_t:
                        if sample_meta(sample) is None:  # type: ignore[arg-type]
                            log.error("%s: track %d unreadable: %s", url, t, sample.error)  # type: ignore[union-attr]
                        else:
                            x = sample.data  # type: ignore[union-attr]
                    elif got_t is None or t < got_t:
                        log.error("%s: track %d (%s) missing", url, t, idx.keys[sel[t]])
                    yield t, x
                    if t == got_t:
                        break
                if sample is None:
                    break

