"""Streaming shard reader: tar shards -> int16 (or float16 feature) batches, exact under DDP x workers.

Stages, as WebDataset has them: :mod:`shards.tarstream` (tar shard -> samples of the wanted ordinals),
:mod:`shards.batching` (samples -> shuffled training batches / evaluation window batches) and this module,
which plans what each rank and DataLoader worker reads (:class:`ShardStream`) and builds the loader.

Design (see ARCHITECTURE.md, "Reader"):

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
* **Evaluation** scans the split once (``.json`` members only; ``.pcm`` data is skipped with a seek) to learn
  each track's length, cuts every track into windows of ``segment_samples`` with hop ``hop_samples`` (last
  the tail covered by a window aligned to the track's end, short tracks filled to one window as training
  fills a short crop: looped by default), splits the window sequence over ranks
  by contiguous track ranges (floor split: every track on exactly one rank) and over workers by batches.
  Rows that only fill a batch (or equalise the batch count across ranks) have ``valid=False``, ``track=-1``.
* **Speed.** A minimal tar parser (:mod:`shards.tarstream`) reads member bytes straight into a reused buffer and ``np.frombuffer``
  views it: no decoding, no float conversion, no torch ops per sample. In training, a seekable local shard
  reads only the crop's bytes of each ``.pcm`` member (``partial_reads=True``).

Errors: an unreadable or corrupt shard (missing file, bad tar header checksum, truncated member, a pipe
command that fails) is logged with its URL and reason and the rest of that shard is skipped; the worker then
fills its planned batch count (training: re-using samples it has read; evaluation: ``valid=False`` rows), so
a bad shard never desynchronises ranks.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import format as fmt
from .batching import EvalBatcher, TrainBatcher
from .tarstream import Sample, ShardReadError, iter_samples, sample_meta
from .windows import fit_length, window_starts

log = logging.getLogger(__name__)

__all__ = ["ShardStream", "ShardReadError", "default_num_workers", "make_loader"]

_M64 = (1 << 64) - 1

Batch = dict[str, torch.Tensor]


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


# ----------------------------------------------------------------------------------------- split index


@dataclass
class _Index:
    """What a scan of a split's ``.json`` members (and member headers) tells: one row per readable track,
    in manifest order. Lengths are samples (``.pcm``) or frames (``.feats.npy``)."""

    keys: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # source file of each track ("" when not recorded)
    labels: list[int] = field(default_factory=list)
    folds: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    shard: list[int] = field(default_factory=list)  # shard index (manifest order)
    ordinal: list[int] = field(default_factory=list)  # sample index within the shard
    feature_dim: int | None = None


def _scan_split(shards: Sequence[tuple[str, int]]) -> _Index:
    """Read every shard's ``.json`` members and member sizes (data is seeked over on local files)."""
    idx = _Index()

    def header_only(ordinal: int, n: int) -> tuple[int, int]:
        return 0, 0  # read no PCM bytes, the member size is the length

    for s, (url, expected) in enumerate(shards):
        n_before = len(idx.keys)
        seen = 0
        try:
            for sample in iter_samples(url, range(1 << 62), header_only):
                seen += 1
                meta = sample_meta(sample)
                if meta is None:
                    log.error("%s: skipping sample %d: %s", url, sample.ordinal, sample.error)
                    continue
                idx.keys.append(str(meta.get("key", sample.key)))
                idx.paths.append(str(meta.get("path") or ""))
                idx.labels.append(int(meta["label_index"]))
                idx.folds.append(int(meta.get("fold", -1) if meta.get("fold") is not None else -1))
                idx.lengths.append(sample.length)
                idx.shard.append(s)
                idx.ordinal.append(sample.ordinal)
                if sample.ext == fmt.FEATS_EXT and sample.data is not None:
                    idx.feature_dim = int(sample.data.shape[1])
        except ShardReadError as e:
            log.error("%s; skipping the rest of this shard (%d samples read)", e, seen)
        if seen != expected:
            log.warning("%s: holds %d samples, the manifest says %d", url, seen, expected)
        log.debug("%s: %d readable tracks", url, len(idx.keys) - n_before)
    return idx


# ----------------------------------------------------------------------------------------------- stream


def _resolve_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            r, ws = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            r, ws = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = r if rank is None else rank
        world_size = ws if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
    return rank, world_size


class ShardStream(IterableDataset):
    """Batches from a split of a shard set, partitioned over ranks and DataLoader workers.

    Args:
        shards: a shard-set directory (its ``manifest.json`` gives the split's shards and counts), or an
            explicit list of ``(url, num_samples)``; a url is a local path, ``file://...``, ``pipe:CMD``
            (e.g. ``pipe:aws s3 cp s3://b/train-000000.tar -``) or anything ``webdataset.gopen`` opens.
            Brace patterns must be expanded by the caller (``braceexpand``).
        split: ``"train"``, ``"valid"`` or ``"test"`` (used with a directory).
        train: random crops, shuffled; else every window of every track once, in order.
        segment_samples: crop / window length in samples at the shard set's sample rate (frames for feature
            shards).
        batch_size: rows per batch; every batch has exactly this many rows.
        hop_samples: evaluation window hop (default ``segment_samples``: non-overlapping).
        seed: base of every random choice (shard order, shuffle buffer, crop offsets).
        shuffle_buffer: samples held by each worker's shuffle buffer (<= 1: no sample shuffling).
        rank, world_size: this process's place in DDP; default from ``torch.distributed`` when
            initialised, else env ``RANK`` / ``WORLD_SIZE``, else 0 / 1.
        holdout_fold: with ``folds="exclude"`` drop tracks of this fold (cross-validation training), with
            ``folds="only"`` keep only them (cross-validation evaluation); -1 keeps every track.
        folds: ``"exclude"`` or ``"only"``.
        pad_mode: tracks shorter than the segment: ``"loop"`` (tile; training crops from a random phase,
            the one evaluation window from the start) or ``"zero"`` (zero-pad at the end).
        partial_reads: in training, read only the crop's bytes of a ``.pcm`` member of a seekable local
            shard (10x less I/O for 3-s crops of 30-s tracks); pipes always read whole members.
        crops_per_track: training crops drawn from each track per epoch (distinct, one from each of that
            many equal parts of the track); the track is read once and its crops all enter the shuffle
            buffer. An epoch is then ``crops_per_track x tracks`` crops. Evaluation ignores it.

    Yields dicts: training ``{"wave": int16 [B, T], "label": int64 [B]}``; evaluation adds ``"track":
    int64 [B]`` (index into :meth:`track_keys`, -1 for padding rows) and ``"valid": bool [B]`` (False for
    rows that only fill a batch). Feature shards give ``"feats": float16 [B, T_frames, D]`` instead of
    ``"wave"``.

    Fold filtering and evaluation need each track's fold / length, which the manifest's per-shard counts do
    not give: the stream then scans the split's ``.json`` members once at construction (local shards:
    headers and JSON only, PCM seeked over; pipes: the whole shard is read once). Training without folds
    needs no scan. The scan result travels with the object to DataLoader workers.

    Do not pass the DataLoader through ``accelerator.prepare``: the stream already shards by rank.
    """

    def __init__(
        self,
        shards: str | os.PathLike[str] | Sequence[tuple[str, int]],
        split: str,
        *,
        train: bool,
        segment_samples: int,
        batch_size: int,
        hop_samples: int | None = None,
        seed: int = 0,
        shuffle_buffer: int = 512,
        rank: int | None = None,
        world_size: int | None = None,
        holdout_fold: int = -1,
        folds: str = "exclude",
        pad_mode: str = "loop",
        partial_reads: bool = True,
        crops_per_track: int = 1,
    ):
        super().__init__()
        if segment_samples <= 0:
            raise ValueError(f"segment_samples must be > 0, got {segment_samples}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        hop = segment_samples if hop_samples is None else hop_samples
        if hop <= 0:
            raise ValueError(f"hop_samples must be > 0, got {hop_samples}")
        if folds not in ("exclude", "only"):
            raise ValueError(f"folds must be 'exclude' or 'only', got {folds!r}")
        if pad_mode not in ("loop", "zero"):
            raise ValueError(f"pad_mode must be 'loop' or 'zero', got {pad_mode!r}")
        if folds == "only" and holdout_fold < 0:
            raise ValueError("folds='only' needs holdout_fold >= 0")
        if crops_per_track < 1:
            raise ValueError(f"crops_per_track must be >= 1, got {crops_per_track}")

        self.manifest: dict[str, Any] | None = None
        if isinstance(shards, (str, os.PathLike)):
            self.manifest = fmt.load_manifest(shards)
            self.shards = fmt.split_shards(self.manifest, split, shards)
            self.kind: str | None = self.manifest.get("kind", "audio")
            if holdout_fold >= 0 and not self.manifest.get("folds"):
                raise ValueError(f"{shards}: holdout_fold={holdout_fold} but the shard set has no folds")
        else:
            self.shards = [(str(u), int(n)) for u, n in shards]
            self.kind = None
        if not self.shards:
            raise ValueError(
                f"split {split!r} of {shards if self.manifest else 'the url list'} has no shards"
            )
        self.split = split
        self.train = train
        self.segment_samples = int(segment_samples)
        self.hop_samples = int(hop)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.rank, self.world_size = _resolve_world(rank, world_size)
        self.holdout_fold = int(holdout_fold)
        self.folds = folds
        self.pad_mode = pad_mode
        self.partial_reads = partial_reads
        self.crops_per_track = int(crops_per_track) if train else 1
        self.epoch = 0
        self.start_batch = 0
        self._index: _Index | None = None
        self._selected: list[int] | None = None  # index rows of the split's tracks after fold filtering
        if self.holdout_fold >= 0 or not self.train:
            self._build_index()
        self._kept_by_shard = self._kept_ordinals()
        total = sum(self._shard_counts())
        if total == 0:
            raise ValueError(
                f"split {split!r}: no samples to read (after fold filtering: {self.holdout_fold})"
            )

    # -- metadata
    @property
    def sample_rate(self) -> int | None:
        return int(self.manifest["sample_rate"]) if self.manifest else None

    @property
    def labels(self) -> list[str] | None:
        return list(self.manifest["labels"]) if self.manifest else None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose shard order, shuffle and crops the next iteration produces.

        ``start_batch`` (training; a mid-epoch resume): the first ``start_batch`` items the stream yields (as
        seen through a DataLoader, whatever its number of workers) are empty dicts ``{}``, and the items
        after them are exactly batches ``start_batch, ...`` of a full pass: item ``i`` is always batch ``i``
        of the epoch. The data of the samples that only the skipped batches hold is not read (their
        ``.json`` and tar headers are). Placeholders rather than nothing because a DataLoader takes its
        workers' batches in turn starting from the first worker, so each worker yields its own share of the
        skipped positions.
        """
        if start_batch < 0 or (start_batch and not self.train):
            raise ValueError(f"start_batch must be >= 0 and is for training streams only, got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _build_index(self) -> _Index:
        if self._index is None:
            idx = _scan_split(self.shards)
            if self.holdout_fold >= 0:
                if all(f < 0 for f in idx.folds):
                    raise ValueError(f"holdout_fold={self.holdout_fold} but no track has a fold")
                keep = (lambda f: f != self.holdout_fold) if self.folds == "exclude" else None
                sel = [
                    i
                    for i, f in enumerate(idx.folds)
                    if (keep(f) if keep is not None else f == self.holdout_fold)
                ]
            else:
                sel = list(range(len(idx.keys)))
            self._index, self._selected = idx, sel
        return self._index

    def _kept_ordinals(self) -> list[list[int]] | None:
        """Per shard, the ordinals of the samples this stream reads (None: all, counts from the manifest)."""
        if self._index is None:
            return None
        kept: list[list[int]] = [[] for _ in self.shards]
        for i in self._selected or []:
            kept[self._index.shard[i]].append(self._index.ordinal[i])
        return kept

    def _shard_counts(self) -> list[int]:
        if self._kept_by_shard is None:
            return [n for _, n in self.shards]
        return [len(k) for k in self._kept_by_shard]

    def track_keys(self) -> list[str]:
        """Keys of the split's tracks (after fold filtering), in track order (manifest shard order)."""
        idx = self._build_index()
        return [idx.keys[i] for i in self._selected or []]

    def track_paths(self) -> list[str]:
        """Source file of each of the split's tracks (the ``path`` of its metadata, ``""`` when absent), in
        track order."""
        idx = self._build_index()
        return [idx.paths[i] for i in self._selected or []]

    def track_labels(self) -> list[int]:
        """Label indices (into the manifest's ``labels``) of the split's tracks, in track order."""
        idx = self._build_index()
        return [idx.labels[i] for i in self._selected or []]

    def track_lengths(self) -> list[int]:
        """Length of each of the split's tracks (after fold filtering), in track order: samples, or frames for
        feature shards. A training stream without folds scans the split for it (once)."""
        idx = self._build_index()
        return [idx.lengths[i] for i in self._selected or []]

    def track_folds(self) -> list[int]:
        """Fold of each of the split's tracks (after fold filtering; -1: none assigned), in track order."""
        idx = self._build_index()
        return [idx.folds[i] for i in self._selected or []]

    def num_windows(self) -> list[int]:
        """Evaluation windows per track, in track order."""
        idx = self._build_index()
        seg, hop = self.segment_samples, self.hop_samples
        return [len(window_starts(idx.lengths[i], seg, hop=hop)) for i in self._selected or []]

    # -- partition
    def _train_layout(self) -> tuple[int, int, int]:
        """``(N items (crops) per epoch, items per rank before rounding up, batches per rank)``."""
        n_total = sum(self._shard_counts()) * self.crops_per_track
        per_rank = -(-n_total // self.world_size)
        return n_total, per_rank, -(-per_rank // self.batch_size)

    def _eval_layout(self) -> tuple[list[int], list[int], int]:
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
        """Batches this rank yields per epoch (the same on every rank)."""
        return self._train_layout()[2] if self.train else self._eval_layout()[2]

    @staticmethod
    def _worker_batches(num_batches: int) -> tuple[int, int]:
        """This DataLoader worker's contiguous share ``[b0, b1)`` of the rank's batches."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return wid * num_batches // nw, (wid + 1) * num_batches // nw

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

    def __iter__(self) -> Iterator[Batch]:
        if self.train:
            return self._iter_train()
        return self._iter_eval()

    # -- training
    def _shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shards)))
        random.Random(_hash(self.seed, epoch, 0x5A4D)).shuffle(order)
        return order

    def _train_segments(self, epoch: int, a: int, b: int) -> list[tuple[int, int, int, int]]:
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

    def _iter_train(self) -> Iterator[Batch]:
        _, _, num_batches = self._train_layout()
        b0, b1 = self._worker_batches(num_batches)
        if b1 <= b0:
            return
        skip = self._worker_skip(num_batches)
        for _ in range(skip):  # this worker's share of the positions before start_batch: read nothing
            yield {}
        if skip:
            try:
                yield from self._train_pass(b0, b1, skip)
                return
            except _Diverged as e:
                log.warning("%s: reading the %d batches before the start batch in full", e, skip)
        for i, batch in enumerate(self._train_pass(b0, b1)):
            if i >= skip:
                yield batch

    def _items(self, p: int, a: int, b: int) -> range:
        """The items (crops) of the track at unwrapped position ``p`` of the epoch that lie in ``[a, b)``."""
        k = self.crops_per_track
        return range(max(a, p * k), min(b, (p + 1) * k))

    def _crop_start(self, n: int, item: int) -> int:
        """Start sample of crop ``item`` in a track of ``n`` samples (frames); for a track shorter than the
        segment, the phase of its loop.

        Crop ``c = item % crops_per_track`` of a track is drawn from the ``c``-th of ``crops_per_track`` equal
        parts of the possible starts (stratified), at a hashed ``(seed, epoch, item)`` position in it: the
        crops of a track are distinct whenever it has at least ``crops_per_track`` possible starts, and spread
        over it. One crop per track draws from all starts (``hash % (n - segment + 1)``).
        """
        seg, k = self.segment_samples, self.crops_per_track
        span = n - seg + 1 if n >= seg else n  # possible starts (or loop phases)
        if span <= 0:
            return 0
        c = item % k
        lo, hi = c * span // k, (c + 1) * span // k
        return lo + _hash(self.seed, self.epoch, item) % (hi - lo) if hi > lo else lo

    def _train_pass(self, b0: int, b1: int, skip: int = 0) -> Iterator[Batch]:
        """The rank's batches ``[b0, b1)`` (this worker's share), without the first ``skip`` of them.

        The epoch is a sequence of items, ``crops_per_track`` consecutive items per track: a track's data is
        read once and all its crops that fall in this worker's range enter the shuffle buffer.
        Which item lands in which batch is known before reading (:meth:`TrainBatcher.plan`), so the tracks
        whose crops are drawn only into the skipped batches are passed over with their ``.json`` and member
        headers: no PCM is read or cropped. Their readability is still checked: a read error before the first
        batch is yielded would have changed those batches, so it raises :class:`_Diverged` (the caller then
        reads the skipped part in full, as an uninterrupted epoch would have).
        """
        seg, bs, kc = self.segment_samples, self.batch_size, self.crops_per_track
        _, per_rank, _ = self._train_layout()
        a = self.rank * per_rank + b0 * bs  # first item (crop) of this worker, unwrapped
        b = a + (b1 - b0) * bs
        planned = b - a
        rng = random.Random(_hash(self.seed, self.epoch, a, 0xB0F))
        batcher = TrainBatcher(min(max(1, self.shuffle_buffer), planned), bs, rng, skip=skip)
        batch_of = batcher.plan(planned) if skip else None  # by item - a
        strict = skip > 0  # until the first batch is out: any read error diverges from the full pass
        produced = 0  # items added
        kept = self._kept_by_shard
        partial = self.partial_reads

        for shard, lo, hi, p_lo in self._train_segments(self.epoch, a // kc, -(-b // kc)):
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
                if n <= seg or not partial:
                    return 0, n
                starts = [self._crop_start(n, i) for i in needed[ordinal]]  # the crops read: one span
                return min(starts), max(starts) + seg - min(starts)

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
                    x = sample.data
                    for i in items[sample.ordinal]:
                        produced += 1
                        if batch_of is not None and batch_of[i - a] < skip:
                            out = batcher.add(None, meta["label_index"])  # drawn into a skipped batch
                        else:
                            start = self._crop_start(sample.length, i)
                            out = batcher.add(
                                lambda row, s=sample, start=start: self._train_crop(s, start, row),
                                meta["label_index"],
                                (seg, *x.shape[1:]),  # type: ignore[union-attr]
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

    def _train_crop(self, sample: Sample, start: int, out: np.ndarray) -> None:
        """Write the ``segment_samples`` crop at ``start`` of the track (:meth:`_crop_start`) into ``out``
        (looped from phase ``start`` / zero-padded if the track is short)."""
        seg, n, x = self.segment_samples, sample.length, sample.data
        assert x is not None
        if n < seg:
            if n == 0:
                log.warning("%s: empty track, yielding silence", sample.key)
            out[:] = fit_length(x, seg, self.pad_mode, start)
            return
        off = start - sample.start  # data may hold only the crops' span (partial read)
        out[:] = x[off : off + seg]

    # -- evaluation
    def _iter_eval(self) -> Iterator[Batch]:
        idx = self._build_index()
        sel = self._selected or []
        seg, hop, bs = self.segment_samples, self.hop_samples, self.batch_size
        win_start, rank_tracks, num_batches = self._eval_layout()
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
            bs, (seg, dim) if is_feats else (seg,), np.float16 if is_feats else np.int16, pad=self.pad_mode
        )
        for t, x in self._eval_tracks(w_lo, w_hi, win_start):
            starts = window_starts(idx.lengths[sel[t]], seg, hop=hop)  # the window policy classify uses
            w_a = max(w_lo, win_start[t]) - win_start[t]  # this worker's windows of the track
            w_b = min(w_hi, win_start[t + 1]) - win_start[t]
            yield from batcher.add_track(t, idx.labels[sel[t]], x, starts[w_a:w_b])
        yield from batcher.pad_to((b1 - b0) * bs)  # fill the last batch / equalise batches across ranks

    def _eval_tracks(
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


# ----------------------------------------------------------------------------------------------- loader


def default_num_workers(processes: int = 1, *, decode: bool = False) -> int:
    """DataLoader workers per process for this machine: the one worker policy of every job.

    Reading shards (``decode=False``; training, evaluation), from ``benchmarks/bench_loader.py``. Measured on
    2 cores (3-s crops of 30-s tracks, batch 32): in-process reading is 2-4x faster than 1 or
    2 workers: fork start-up of ~0.3 s per epoch, the hand-over of each 4.2 MB batch from a worker (~12 ms
    even for a bare DataLoader, i.e. a ceiling of ~2,600 crops/s per worker) and the worker competing with
    the main process for the same cores. So <= 2 cores -> 0. With more cores a worker
    overlaps reading with the training step; one worker already streams thousands of crops/s, so use one
    per 4 cores, at most 4 (each holds a shuffle slab of ``shuffle_buffer`` crops, e.g. 68 MB).

    Decoding audio files (``decode=True``; ``engine classify``): decoding and resampling a file costs far
    more than handing its windows over, so one worker per core of this process's share of the cores
    (``processes`` on the machine), at least 1 and at most 8.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if decode:
        return max(1, min(8, cores // max(1, processes)))
    if cores <= 2:
        return 0
    return min(4, max(1, cores // 4))


def make_loader(
    stream: ShardStream,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int = 4,
) -> DataLoader:
    """``DataLoader(stream, batch_size=None)``: batches are formed by the stream, one per item.

    ``num_workers`` defaults to :func:`default_num_workers`; ``pin_memory`` to ``torch.cuda.is_available()``.
    Workers are not persistent so each epoch re-forks them with the stream's current epoch
    (call ``stream.set_epoch(e)`` before iterating). ``len(loader) == len(stream)``.
    """
    if num_workers is None:
        num_workers = default_num_workers()
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        **kwargs,
    )
