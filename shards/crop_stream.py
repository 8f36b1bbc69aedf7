"""The training pass over a split: random crops of every track, shuffled, exact under DDP x workers.

Design (see ARCHITECTURE.md, "Reader"; the shared index and worker split are :class:`shards.reader.SplitStream`):

* **One global item sequence per epoch.** Training permutes the split's shards from ``(seed, epoch)`` and
  concatenates their samples into one sequence of tracks (counts from the manifest, or from a scan of the
  ``.json`` members when fold filtering is on); each track stands for ``crops_per_track`` consecutive items
  (its crops), ``N`` items in all. Rank ``r`` of ``R`` takes the ``nb = ceil(ceil(N / R) / batch_size)``
  batches that start at item ``r * ceil(N / R)``, reading indices modulo ``N`` (wrap-around: nothing is
  lost and every batch is full); a track whose crops straddle two ranks (or workers) is read by both, each
  adding its own crops. The rank's batches are split contiguously over the DataLoader workers, so each
  worker opens only the shards overlapping its range and skips the members before it. The per-rank batch
  count is a pure function of ``(N, R, batch_size)`` -- independent of the number of workers and of shard
  sizes -- so DDP never hangs, even with 1 shard and 2 ranks x 2 workers.
* **Reproducible randomness.** The crop offset of an item is a hash of ``(seed, epoch, k)`` where ``k`` is
  its position in the epoch's (unwrapped) sequence (with several crops per track, stratified: crop ``c``
  from the ``c``-th equal part of the track's possible starts, so a track's crops are distinct); the
  shuffle buffer of a worker is seeded from ``(seed, epoch, start of its range)``. Same ``(seed, epoch,
  world size, workers)`` -> same batches, whatever ran before (resume at an epoch boundary with
  ``set_epoch``); the crops a rank sees (track and offset) do not even depend on the number of workers,
  only their grouping into batches does.
* **Mid-epoch start.** Which sample lands in which batch depends only on the sample order and the shuffle
  RNG, not on the data, so ``set_epoch(epoch, start_batch=k)`` passes over the samples that only batches
  ``< k`` hold without reading their PCM (headers and ``.json`` only) and yields batches ``k, ...`` exactly
  as a full pass does (after ``k`` empty placeholders, so loader position ``i`` stays batch ``i``).
* **Speed.** A minimal tar parser (:mod:`shards.tarstream`) reads member bytes straight into a reused buffer
  and ``np.frombuffer`` views it: no decoding, no float conversion, no torch ops per sample. A seekable local
  shard reads only the crops' bytes of each ``.pcm`` member (``partial_reads=True``).

Errors: an unreadable shard or sample is logged and skipped; the worker then fills its planned batch count by
re-using samples it has read, so a bad shard never desynchronises ranks.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import get_worker_info

from .batching import Batch, TrainBatcher
from .reader import SplitStream
from .tarstream import Sample, ShardReadError, iter_samples, sample_meta
from .windows import fit_length, window_starts

log = logging.getLogger(__name__)

__all__ = ["CropStream"]

_M64 = (1 << 64) - 1


class _Diverged(Exception):
    """A read error while passing over the batches before a start batch: they would not be the same."""


# --------------------------------------------------------------------------------------------- hashing


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _hash(*values: int) -> int:
    """Stateless 64-bit hash of a tuple of ints (a counter-based RNG: one draw per sample, ~1 us)."""
    h = 0x6A09E667F3BCC908
    for v in values:
        h = _splitmix64(h ^ (v & _M64))
    return h


# ----------------------------------------------------------------------------------------------- stream


class CropStream(SplitStream):
    """Training batches of a split: random crops of every track, shuffled, partitioned over ranks and workers.

    Args (besides those of :class:`~shards.reader.SplitStream`: ``shards``, ``split``, ``batch_size``,
    ``rank``, ``world_size``, ``holdout_fold``, ``folds``, ``pad_mode``):
        crop_samples: crop length in samples at the shard set's sample rate (frames for feature shards).
        seed: base of every random choice (shard order, shuffle buffer, crop offsets).
        shuffle_buffer: samples held by each worker's shuffle buffer (<= 1: no sample shuffling).
        partial_reads: read only the crop's bytes of a ``.pcm`` member of a seekable local shard (10x less
            I/O for 3-s crops of 30-s tracks); pipes always read whole members.
        crops_per_track: crops drawn from each track per epoch (distinct, one from each of that many equal
            parts of the track); the track is read once and its crops all enter the shuffle buffer. An
            epoch is then ``crops_per_track x tracks`` crops.
        grid_hop: > 0: each drawn start is snapped down to the window grid of this hop
            (:func:`shards.windows.window_starts` of the crop length: the windows evaluation scores), so
            crops repeat across epochs and equal evaluation windows (what a cache of a frozen prefix needs);
            0: crops start anywhere.

    Yields dicts ``{"wave": int16 [B, T], "label": int64 [B]}`` (feature shards: ``"feats": float16
    [B, T_frames, D]`` instead of ``"wave"``; multi-label sets, :attr:`task` ``"multilabel"``: ``"targets":
    float32 [B, K]`` multi-hot instead of ``"label"``). Without fold filtering no scan of the split is needed.
    """

    def __init__(
        self,
        shards: str | os.PathLike[str] | Sequence[tuple[str, int]],
        split: str,
        *,
        crop_samples: int,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 512,
        rank: int | None = None,
        world_size: int | None = None,
        holdout_fold: int = -1,
        folds: str = "exclude",
        pad_mode: str = "loop",
        partial_reads: bool = True,
        crops_per_track: int = 1,
        grid_hop: int = 0,
    ):
        if crop_samples <= 0:
            raise ValueError(f"crop_samples must be > 0, got {crop_samples}")
        if crops_per_track < 1:
            raise ValueError(f"crops_per_track must be >= 1, got {crops_per_track}")
        super().__init__(
            shards, split, batch_size=batch_size, rank=rank, world_size=world_size,
            holdout_fold=holdout_fold, folds=folds, pad_mode=pad_mode,
        )  # fmt: skip
        self.crop_samples = int(crop_samples)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.partial_reads = partial_reads
        self.crops_per_track = int(crops_per_track)
        if grid_hop < 0:
            raise ValueError(f"grid_hop must be >= 0, got {grid_hop}")
        self.grid_hop = int(grid_hop)
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose shard order, shuffle and crops the next iteration produces.

        ``start_batch`` (a mid-epoch resume): the first ``start_batch`` items the stream yields (as
        seen through a DataLoader, whatever its number of workers) are empty dicts ``{}``, and the items
        after them are exactly batches ``start_batch, ...`` of a full pass: item ``i`` is always batch ``i``
        of the epoch. The data of the samples that only the skipped batches hold is not read (their
        ``.json`` and tar headers are). Placeholders rather than nothing because a DataLoader takes its
        workers' batches in turn starting from the first worker, so each worker yields its own share of the
        skipped positions.
        """
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        super().set_epoch(epoch)
        self.start_batch = int(start_batch)

    # -- partition
    def _layout(self) -> tuple[int, int, int]:
        """``(N items (crops) per epoch, items per rank before rounding up, batches per rank)``."""
        n_total = sum(self._shard_counts()) * self.crops_per_track
        per_rank = -(-n_total // self.world_size)
        return n_total, per_rank, -(-per_rank // self.batch_size)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return self._layout()[2]

    def _worker_skip(self, num_batches: int) -> int:
        """How many of this worker's batches come before ``start_batch`` of the loader: a DataLoader takes
        one batch from each worker in turn, passing over the workers that are done."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        counts = [(w + 1) * num_batches // nw - w * num_batches // nw for w in range(nw)]
        taken = [0] * nw
        left = min(self.start_batch, num_batches)
        turn = 0
        while left:
            for w in range(nw):
                if left and counts[w] > turn:
                    taken[w] += 1
                    left -= 1
            turn += 1
        return taken[wid]

    # -- reading
    def _shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shards)))
        random.Random(_hash(self.seed, epoch, 0x5A4D)).shuffle(order)
        return order

    def _shard_ranges(self, epoch: int, a: int, b: int) -> list[tuple[int, int, int, int]]:
        """Virtual indices ``[a, b)`` of the epoch's sequence -> ``[(shard, lo, hi, k_lo)]``: samples
        ``[lo, hi)`` (in the shard's kept-sample numbering) that carry indices ``k_lo, k_lo + 1, ...``."""
        order = self._shard_order(epoch)
        counts = self._shard_counts()
        cum = [0]
        for s in order:
            cum.append(cum[-1] + counts[s])
        n_total = cum[-1]
        out = []
        k = a
        while k < b:
            p = k % n_total
            i = bisect.bisect_right(cum, p) - 1
            lo = p - cum[i]
            take = min(counts[order[i]] - lo, b - k)
            out.append((order[i], lo, lo + take, k))
            k += take
        return out

    def __iter__(self) -> Iterator[Batch]:
        _, _, num_batches = self._layout()
        b0, b1 = self._worker_batches(num_batches)
        if b1 <= b0:
            return
        skip = self._worker_skip(num_batches)
        for _ in range(skip):  # this worker's share of the positions before start_batch: read nothing
            yield {}
        if skip:
            try:
                yield from self._read_batches(b0, b1, skip)
                return
            except _Diverged as e:
                log.warning("%s: reading the %d batches before the start batch in full", e, skip)
        for i, batch in enumerate(self._read_batches(b0, b1)):
            if i >= skip:
                yield batch

    def _items(self, p: int, a: int, b: int) -> range:
        """The items (crops) of the track at unwrapped position ``p`` of the epoch that lie in ``[a, b)``."""
        k = self.crops_per_track
        return range(max(a, p * k), min(b, (p + 1) * k))

    def _crop_start(self, n: int, item: int) -> int:
        """Start sample of crop ``item`` in a track of ``n`` samples (frames); for a track shorter than the
        crop, the phase of its loop.

        Crop ``c = item % crops_per_track`` of a track is drawn from the ``c``-th of ``crops_per_track`` equal
        parts of the possible starts (stratified), at a hashed ``(seed, epoch, item)`` position in it: the
        crops of a track are distinct whenever it has at least ``crops_per_track`` possible starts, and spread
        over it. One crop per track draws from all starts (``hash % (n - crop_samples + 1)``). With
        ``grid_hop``, the start is then snapped down to the evaluation window grid (a short track: phase 0).
        """
        crop, k = self.crop_samples, self.crops_per_track
        span = n - crop + 1 if n >= crop else n  # possible starts (or loop phases)
        if span <= 0:
            return 0
        c = item % k
        lo, hi = c * span // k, (c + 1) * span // k
        start = lo + _hash(self.seed, self.epoch, item) % (hi - lo) if hi > lo else lo
        if self.grid_hop:  # a track no longer than the crop has one window, at 0
            grid = window_starts(n, crop, hop=self.grid_hop) if n > crop else [0]  # ascending, grid[0] = 0
            start = int(grid[bisect.bisect_right(grid, start) - 1])
        return start

    def _read_batches(self, b0: int, b1: int, skip: int = 0) -> Iterator[Batch]:
        """The rank's batches ``[b0, b1)`` (this worker's share), without the first ``skip`` of them.

        The epoch is a sequence of items, ``crops_per_track`` consecutive items per track: a track's data is
        read once and all its crops that fall in this worker's range enter the shuffle buffer.
        Which item lands in which batch is known before reading (:meth:`TrainBatcher.plan`), so the tracks
        whose crops are drawn only into the skipped batches are passed over with their ``.json`` and member
        headers: no PCM is read or cropped. Their readability is still checked: a read error before the first
        batch is yielded would have changed those batches, so it raises :class:`_Diverged` (the caller then
        reads the skipped part in full, as an uninterrupted epoch would have).
        """
        crop, bs, kc = self.crop_samples, self.batch_size, self.crops_per_track
        _, per_rank, _ = self._layout()
        a = self.rank * per_rank + b0 * bs  # first item (crop) of this worker, unwrapped
        b = a + (b1 - b0) * bs
        planned = b - a
        rng = random.Random(_hash(self.seed, self.epoch, a, 0xB0F))
        batcher = TrainBatcher(
            min(max(1, self.shuffle_buffer), planned), bs, rng, skip=skip, num_targets=self.num_targets
        )
        batch_of = batcher.plan(planned) if skip else None  # by item - a
        strict = skip > 0  # until the first batch is out: any read error diverges from the full pass
        produced = 0  # items added
        kept = self._kept_by_shard
        partial = self.partial_reads

        for shard, lo, hi, p_lo in self._shard_ranges(self.epoch, a // kc, -(-b // kc)):
            url = self.shards[shard][0]
            wanted: Sequence[int] = range(lo, hi) if kept is None else kept[shard][lo:hi]
            # ordinal -> its items in this worker's range
            items = {o: self._items(p_lo + j, a, b) for j, o in enumerate(wanted)}
            if batch_of is None:
                needed, unread = items, set()
            else:
                needed = {o: [i for i in its if batch_of[i - a] >= skip] for o, its in items.items()}
                unread = {o for o, its in needed.items() if not its}

            def crop_range(ordinal: int, n: int, needed=needed) -> tuple[int, int]:
                if n <= crop or not partial:
                    return 0, n
                starts = [self._crop_start(n, i) for i in needed[ordinal]]  # the crops read: one span
                return min(starts), max(starts) + crop - min(starts)

            got = 0
            try:
                for sample in iter_samples(url, wanted, crop_range, unread):
                    meta = sample_meta(sample)
                    if meta is None:
                        log.error("%s: skipping sample %d: %s", url, sample.ordinal, sample.error)
                        if strict:
                            raise _Diverged(f"{url}: sample {sample.ordinal} unreadable")
                        continue
                    got += 1
                    x, target = sample.data, self._track_target(meta)
                    for i in items[sample.ordinal]:
                        produced += 1
                        if batch_of is not None and batch_of[i - a] < skip:
                            out = batcher.add(None, target)  # drawn into a skipped batch
                        else:
                            start = self._crop_start(sample.length, i)
                            out = batcher.add(
                                lambda row, s=sample, start=start: self._write_crop(s, start, row),
                                target,
                                (crop, *x.shape[1:]),  # type: ignore[union-attr]
                                x.dtype,  # type: ignore[union-attr]
                            )
                        if out is not None:
                            strict = False
                            yield out
            except ShardReadError as e:
                log.error("%s; skipping the rest of this shard", e)
                if strict:
                    raise _Diverged(str(e)) from e
            if got < len(wanted):
                log.error("%s: read %d of the %d samples expected", url, got, len(wanted))
                if strict:
                    raise _Diverged(f"{url}: {len(wanted) - got} samples unreadable")
        yield from batcher.drain()
        if produced < planned:
            log.error("rank %d: re-using samples to fill %d unreadable ones", self.rank, planned - produced)
            if not batcher.can_refill():
                raise RuntimeError(
                    f"rank {self.rank}: none of the {planned} training samples of this worker could be read "
                    "(see the errors above)"
                )
            yield from batcher.refill(planned - produced)

    def _write_crop(self, sample: Sample, start: int, out: np.ndarray) -> None:
        """Write the ``crop_samples`` crop at ``start`` of the track (:meth:`_crop_start`) into ``out``
        (looped from phase ``start`` / zero-padded if the track is short)."""
        crop, n, x = self.crop_samples, sample.length, sample.data
        assert x is not None
        if n < crop:
            if n == 0:
                log.warning("%s: empty track, yielding silence", sample.key)
            out[:] = fit_length(x, crop, self.pad_mode, start)
            return
        off = start - sample.start  # data may hold only the crops' span (partial read)
        out[:] = x[off : off + crop]

