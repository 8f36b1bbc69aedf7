"""Samples -> fixed-size batches: the shuffle buffer of training and the window packer of evaluation.

Both write into numpy arrays that a tensor shares (``torch.from_numpy``): one copy per row, no per-sample
tensor. Every batch has exactly ``batch_size`` rows, so every rank of a DDP job yields the same shapes.

* :class:`TrainBatcher`: a shuffle buffer of preallocated slots; which sample lands in which batch row
  depends only on the order samples arrive and on the RNG, never on their data. So a resumed epoch can drop
  the batches it already trained on without assembling them, and :meth:`TrainBatcher.plan` says in advance
  which samples it need not read at all.
* :class:`EvalBatcher`: consecutive windows of tracks, with ``track`` / ``valid`` per row; rows of tracks
  that could not be read and the rows that fill the last batch are ``valid=False``, ``track=-1``.

Targets: a single-label batcher carries each row's class index (``"label": int64 [B]``); a multi-label one
(``num_targets=K``) takes each row's tag indices and carries ``"targets": float32 [B, K]`` multi-hot instead
(all zero on padding rows).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .windows import fill_window

__all__ = ["EvalBatcher", "TrainBatcher", "batch_array"]

Batch = dict[str, torch.Tensor]


def batch_array(shape: tuple[int, ...], dtype: Any, zero: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """A batch buffer as (numpy array, tensor sharing its memory). numpy allocation, not torch.zeros: a
    large torch fill runs on the intra-op thread pool, which costs ~17 ms per 4 MB on a loaded 2-core box."""
    x = np.zeros(shape, dtype=dtype) if zero else np.empty(shape, dtype=dtype)
    return x, torch.from_numpy(x)


def _input_name(x: np.ndarray) -> str:
    """(B, T) int16 waves, or (B, T_frames, D) float16 features."""
    return "feats" if x.ndim == 3 else "wave"


Label = int | Sequence[int]  # a class index (single-label) or the tag indices of a row (multi-label)


def _target_array(batch_size: int, num_targets: int | None) -> np.ndarray:
    """Zeroed per-row targets: int64 ``[B]`` class indices, or float32 ``[B, K]`` multi-hot."""
    if num_targets is None:
        return np.zeros(batch_size, dtype=np.int64)
    return np.zeros((batch_size, num_targets), dtype=np.float32)


def _set_target(targets: np.ndarray, row: int, label: Label) -> None:
    """Write one row's target: a class index, or tag indices (or a multi-hot row) as multi-hot."""
    if targets.ndim == 1:
        targets[row] = label  # type: ignore[assignment]
        return
    targets[row] = 0
    lab = np.asarray(label)
    if lab.ndim == 1 and lab.dtype.kind == "f" and lab.shape[0] == targets.shape[1]:
        targets[row] = lab  # a multi-hot row (refill re-uses rows already assembled)
    else:
        targets[row, lab.astype(np.int64)] = 1


def _target_name(targets: np.ndarray) -> str:
    return "targets" if targets.ndim == 2 else "label"


class TrainBatcher:
    """Shuffle buffer + batch assembly for training crops.

    Crops live in one preallocated slab ``(capacity, T[, D])`` -- no allocation per sample -- and are
    copied once into the batch array when drawn: one copy in, one copy out. The first ``skip`` batches are
    drawn (the RNG advances exactly as in a full pass) but not assembled, and a sample added without data
    (``write=None``) may sit in the buffer as long as it is drawn into one of them.
    """

    def __init__(
        self, capacity: int, batch_size: int, rng: random.Random, skip: int = 0, num_targets: int | None = None
    ):
        self.capacity, self.bs, self.rng, self.skip = capacity, batch_size, rng, skip
        self.num_targets = num_targets  # K tags of a multi-label set; None: single-label
        self.slab: np.ndarray | None = None
        self.free = list(range(capacity - 1, -1, -1))
        self.used: list[tuple[int, Label]] = []  # (slot, label)
        self.empty: set[int] = set()  # slots holding a sample added without data
        self.drawn = 0  # rows drawn so far, those of skipped batches included
        self.x: np.ndarray | None = None  # batch being filled (a view of self.xt)
        self.xt: torch.Tensor | None = None
        self.labels = _target_array(batch_size, num_targets)
        self.last: tuple[np.ndarray, np.ndarray] | None = None  # last assembled batch (x, labels)
        self.trace: list[int] | None = None  # labels of the rows drawn, in order (plan's dry run only)

    @property
    def skipping(self) -> bool:
        """Still drawing rows of the first ``skip`` batches (which are not assembled)."""
        return self.drawn < self.skip * self.bs

    def plan(self, n: int) -> list[int]:
        """Batch index (0 = this batcher's first) that each of the next ``n`` samples is drawn into when all
        ``n`` are added and the buffer drained: a dry run on a copy of the RNG (call before any :meth:`add`)."""
        assert self.drawn == 0 and not self.used, "plan() describes a fresh batcher"
        rng = random.Random()
        rng.setstate(self.rng.getstate())
        dry = TrainBatcher(self.capacity, self.bs, rng, skip=n)  # skips every batch: nothing assembled
        dry.trace = []
        for j in range(n):
            dry.add(None, j)
        for _ in dry.drain():
            pass
        batch_of = [0] * n
        for pos, j in enumerate(dry.trace):
            batch_of[j] = pos // self.bs
        return batch_of

    def _batch(self, x: np.ndarray | None, label: Label) -> Batch | None:
        """Draw one row (``x``: its data; None only for a row of a skipped batch)."""
        if self.skipping:
            self.drawn += 1
            if self.trace is not None:
                self.trace.append(int(label))  # type: ignore[arg-type]  # the dry run's labels are ints
            return None
        assert x is not None, "a sample added without data was drawn into a batch that is assembled"
        row = self.drawn % self.bs
        if row == 0:
            self.x, self.xt = batch_array((self.bs, *x.shape), x.dtype)
            self.labels = _target_array(self.bs, self.num_targets)
        assert self.x is not None and self.xt is not None
        self.x[row] = x
        _set_target(self.labels, row, label)
        self.drawn += 1
        if row + 1 < self.bs:
            return None
        xb, xt, lb = self.x, self.xt, self.labels
        self.last, self.x = (xb, lb), None
        return {_input_name(xb): xt, _target_name(lb): torch.from_numpy(lb)}

    def _take(self, slot: int, label: Label) -> Batch | None:
        """Draw the sample in ``slot`` (its slot is then free to be overwritten)."""
        if slot in self.empty:
            self.empty.discard(slot)
            return self._batch(None, label)
        return self._batch(self.slab[slot], label)  # type: ignore[index]

    def add(
        self,
        write: Callable[[np.ndarray], None] | None,
        label: Label,
        row_shape: tuple[int, ...] = (),
        dtype: Any = None,
    ) -> Batch | None:
        """Store a crop (``write(row)`` fills a slab row of ``row_shape``; None: a sample whose data is not
        needed); returns a batch when one is complete. A full buffer first moves a random stored crop to
        the batch, then reuses its slot. ``label``: the class index, or (multi-label) the tag indices."""
        label = int(label) if self.num_targets is None else tuple(label)  # type: ignore[arg-type]
        if write is not None and self.slab is None:
            self.slab = np.empty((self.capacity, *row_shape), dtype=dtype)
        out = None
        if self.free:
            slot = self.free.pop()
            self.used.append((slot, label))
        else:
            j = self.rng.randrange(len(self.used))
            slot, old = self.used[j]
            out = self._take(slot, old)
            self.used[j] = (slot, label)
        if write is None:
            self.empty.add(slot)
        else:
            write(self.slab[slot])  # type: ignore[index]
        return out

    def drain(self) -> Iterator[Batch]:
        """Draw every stored crop, in random order."""
        self.rng.shuffle(self.used)
        for slot, label in self.used:
            out = self._take(slot, label)
            if out is not None:
                yield out
        self.used = []

    def can_refill(self) -> bool:
        return self.last is not None or (self.x is not None and not self.skipping)

    def refill(self, n: int) -> Iterator[Batch]:
        """``n`` more rows re-using rows already read (keeps the planned batch count after read errors)."""
        if self.last is not None:
            pool_x, pool_l = self.last
        else:
            assert self.x is not None
            row = self.drawn % self.bs
            pool_x, pool_l = self.x[:row].copy(), self.labels[:row].copy()
        for _ in range(n):
            i = self.rng.randrange(len(pool_l))
            out = self._batch(pool_x[i], pool_l[i] if self.num_targets is not None else int(pool_l[i]))
            if out is not None:
                yield out


class EvalBatcher:
    """Evaluation windows -> batches ``{"wave" | "feats", "label" | "targets", "track", "valid"}``.

    Rows are filled in the order windows come; a window of a track that could not be read still takes its
    row (``valid=False``), so a worker yields its planned number of batches whatever it could read. A track
    shorter than one window fills its one window as training fills a short crop (``pad``: ``"loop"`` tiles it
    from its start, ``"zero"`` pads with silence): zero-padding a 10-s clip into a 30-s window would show the
    model two-thirds silence that training never showed it (and drag pooled statistics towards silence).
    """

    def __init__(
        self,
        batch_size: int,
        row_shape: tuple[int, ...],
        dtype: Any,
        pad: str = "loop",
        num_targets: int | None = None,
    ):
        self.bs, self.row_shape, self.dtype, self.pad = batch_size, row_shape, dtype, pad
        self.num_targets = num_targets  # K tags of a multi-label set; None: single-label
        self.segment = row_shape[0]  # window length, samples (or frames)
        self.rows = 0  # rows written so far, all batches
        self._new_batch()

    def _new_batch(self) -> None:
        self.x, self.xt = batch_array((self.bs, *self.row_shape), self.dtype, zero=True)
        self.track = np.full(self.bs, -1, dtype=np.int64)
        self.label = _target_array(self.bs, self.num_targets)
        self.valid = np.zeros(self.bs, dtype=bool)

    def put(self, track: int, label: Label, window: np.ndarray | None) -> Batch | None:
        """Write one window (None: a row of an unreadable track, or padding); returns a complete batch."""
        row = self.rows % self.bs
        if window is not None:
            self.x[row, : window.shape[0]] = window  # a window of add_track is never short
            self.track[row], self.valid[row] = track, True
            _set_target(self.label, row, label)
        self.rows += 1
        if row + 1 < self.bs:
            return None
        out = {
            _input_name(self.x): self.xt,
            _target_name(self.label): torch.from_numpy(self.label),
            "track": torch.from_numpy(self.track),
            "valid": torch.from_numpy(self.valid),
        }
        self._new_batch()
        return out

    def add_track(
        self, track: int, label: Label, x: np.ndarray | None, starts: Sequence[int]
    ) -> Iterator[Batch]:
        """The windows of ``track`` (``x``: the whole track, None when unreadable) starting at ``starts``."""
        if x is not None:
            x = fill_window(x, self.segment, self.pad)  # a short track: its one window (window_starts: start 0)
        for start in starts:
            window = None if x is None else x[start : start + self.segment]
            out = self.put(track, label, window)
            if out is not None:
                yield out

    def pad_to(self, rows: int) -> Iterator[Batch]:
        """``valid=False`` rows up to ``rows`` in all (fills the last batch, equalises ranks)."""
        while self.rows < rows:
            out = self.put(-1, 0, None)  # padding: no target written (zeros)
            if out is not None:
                yield out
