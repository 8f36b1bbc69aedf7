"""Window scoring: tracks -> device batches of model windows -> per-window outputs -> per-track results.

Every job that runs a model over whole tracks scores windows the same way:

* :class:`WindowScorer` (``classify``, ``embed``): the windows of many tracks are packed into one int16
  buffer ``[batch_size, T]`` (pinned on CUDA); each full buffer is one call of the job's score function
  (``int16 [n, T] -> float32 [n, D]`` on the host), each output row goes back to its track, and a track is
  handed back as a :class:`ScoredTrack` once it is closed and every window of it is scored. Windows are cut
  by the window rule of :mod:`shards.windows` (:meth:`WindowScorer.add_track`), or arrive already cut
  (classify's decode workers: :meth:`WindowScorer.add_windows`).
* the evaluation loop (:mod:`engine.evaluation_loop`) scores the batches of an evaluation
  :class:`shards.window_stream.WindowStream`, which arrive packed the same way (windows cut by the same rule in
  the DataLoader workers, each row with its track), and gathers the per-window outputs of every process
  before the per-track figures (:mod:`engine.metrics`).

All of them run the model through :func:`forward`: host batch -> device -> autocast (:data:`engine.distributed.PRECISIONS`) ->
float32 output.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.distributed import autocast
from shards.windows import fill_window, window_starts

__all__ = ["ScoredTrack", "WindowScorer", "forward"]


def forward(fn: Callable[[Tensor], Tensor], x: Tensor, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    """``fn(x)`` on ``device`` under autocast to ``dtype`` (None: float32), as a float32 tensor. ``x`` is moved
    to ``device`` without blocking (a pinned host batch overlaps the copy); one already there stays."""
    x = x.to(device, non_blocking=True)
    with autocast(device, dtype):
        out = fn(x)
    return out.float()


@dataclass
class ScoredTrack:
    """One track's windows and, once scored, their outputs (row ``j`` of :meth:`rows` is window ``j``)."""

    key: Hashable  # the caller's name for the track, unique among the tracks in flight
    info: Any = None  # the caller's data about the track (shard metadata, path, ...)
    starts: list[int] = field(default_factory=list)  # window starts, samples, in the order they were added
    outputs: list[np.ndarray] = field(default_factory=list)  # float32 (D,) per scored window, same order
    closed: bool = False  # no more windows will come

    @property
    def complete(self) -> bool:
        """Closed, with at least one window, and every window scored."""
        return self.closed and 0 < len(self.starts) == len(self.outputs)

    def rows(self) -> np.ndarray:
        """The window outputs, float32 ``(n, D)``."""
        return np.stack(self.outputs)

    def mean(self) -> np.ndarray:
        """The mean window output, float64 ``(D,)``: summed in window order (float64), divided by n."""
        total = self.outputs[0].astype(np.float64)
        for row in self.outputs[1:]:
            total = total + row.astype(np.float64)
        return total / len(self.outputs)


class WindowScorer:
    """Windows of many tracks -> full device batches -> outputs per track.

    ``score`` maps int16 windows ``[n, window_samples]`` (a view of the pinned buffer) to float32 outputs
    ``[n, D]`` on the host; it runs on every full buffer and, at :meth:`flush`, on the last partial one.
    Tracks come back in the order they were first added. A dropped track's windows still in the buffer are
    scored with the others and discarded.
    """

    def __init__(
        self, score: Callable[[Tensor], np.ndarray], batch_size: int, window_samples: int, device: torch.device
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.score, self.window_samples = score, window_samples
        self.buf = torch.empty((batch_size, window_samples), dtype=torch.int16, pin_memory=device.type == "cuda")
        self.owners: list[ScoredTrack] = []  # the track of each filled row of buf
        self.tracks: dict[Hashable, ScoredTrack] = {}  # in flight, in the order first added

    def add_track(
        self, key: Hashable, wave: np.ndarray, *, hop: int | None = None, pad: str = "loop", info: Any = None
    ) -> list[ScoredTrack]:
        """A whole track (int16 ``(T,)``, copied here): its windows by :func:`shards.windows.window_starts`
        (hop ``hop`` samples, default one window), a track shorter than a window filled to one
        (:func:`shards.windows.fill_window`, ``pad``). Returns the tracks this finished."""
        x = fill_window(np.asarray(wave), self.window_samples, pad)
        starts = window_starts(len(x), self.window_samples, hop=hop)  # every window whole: filled above
        windows = (x[s : s + self.window_samples] for s in starts.tolist())
        return self.add_windows(key, windows, starts, last=True, info=info)

    def add_windows(
        self,
        key: Hashable,
        windows: Iterable[np.ndarray],
        starts: Sequence[int] | np.ndarray,
        *,
        last: bool,
        info: Any = None,
    ) -> list[ScoredTrack]:
        """More windows of track ``key`` (int16 ``(window_samples,)`` each, starting at ``starts``); ``last``
        closes the track; ``info`` (when given) replaces the track's :attr:`ScoredTrack.info`. Returns the
        tracks finished meanwhile: those finished by a batch run here, then ``key``'s own."""
        track = self.tracks.get(key)
        if track is None:
            track = self.tracks[key] = ScoredTrack(key)
        if info is not None:
            track.info = info
        done: list[ScoredTrack] = []
        for w, start in zip(windows, np.asarray(starts).tolist()):
            self.buf[len(self.owners)].copy_(torch.from_numpy(np.asarray(w)))
            self.owners.append(track)
            track.starts.append(int(start))
            if len(self.owners) == len(self.buf):
                done += self._run_batch()
        if last:
            track.closed = True
            if track.complete:
                done.append(self.tracks.pop(key))
        return done

    def drop(self, key: Hashable) -> ScoredTrack | None:
        """Forget track ``key`` (its windows in the buffer are discarded when scored); returns it, if in flight."""
        return self.tracks.pop(key, None)

    def flush(self) -> list[ScoredTrack]:
        """Score the partial batch; returns the tracks that finished."""
        return self._run_batch()

    def clear(self) -> list[ScoredTrack]:
        """Forget the buffer and every track in flight; returns those tracks (unfinished), in order."""
        self.owners.clear()
        left = list(self.tracks.values())
        self.tracks.clear()
        return left

    def _run_batch(self) -> list[ScoredTrack]:
        n = len(self.owners)
        if n == 0:
            return []
        out = self.score(self.buf[:n])  # (n, D)
        for track, row in zip(self.owners, out):
            if self.tracks.get(track.key) is track:  # a dropped track's windows are discarded
                track.outputs.append(row)
        self.owners.clear()
        finished = [key for key, track in self.tracks.items() if track.complete]
        return [self.tracks.pop(key) for key in finished]
