"""Streaming shard reader: tar shards -> int16 (or float16 feature) batches, exact under DDP x workers.

Stages, as WebDataset has them: :mod:`shards.tarstream` (tar shard -> samples of the wanted ordinals),
:mod:`shards.batching` (samples -> shuffled training batches / evaluation window batches) and the two passes
over a split, which plan what each rank and DataLoader worker reads:

* :class:`shards.crop_stream.CropStream` (training): random crops of every track, shuffled, the same batch
  count on every rank, resumable mid-epoch (``set_epoch(epoch, start_batch)``) without decoding the batches
  before the start.
* :class:`shards.window_stream.WindowStream` (evaluation): every window of every track once, in order, with
  each row's ``track`` and ``valid``.

This module holds what both share -- :class:`SplitStream`: the split's shards (from ``manifest.json`` or a url
list), this process's rank / world size, fold filtering, the per-track index (keys, paths, labels, lengths)
from one scan of the split's ``.json`` members, the contiguous split of a rank's batches over DataLoader
workers -- and builds the loader (:func:`make_loader`, :func:`default_num_workers`). See ARCHITECTURE.md,
"Reader".

Errors: an unreadable or corrupt shard (missing file, bad tar header checksum, truncated member, a pipe
command that fails) is logged with its URL and reason and the rest of that shard is skipped; the worker then
fills its planned batch count (training: re-using samples it has read; evaluation: ``valid=False`` rows), so
a bad shard never desynchronises ranks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import format as fmt
from .batching import Batch
from .tarstream import ShardReadError, iter_samples, sample_meta

log = logging.getLogger(__name__)

__all__ = ["ShardReadError", "SplitStream", "default_num_workers", "make_loader"]


# ----------------------------------------------------------------------------------------- split index


@dataclass
class _Index:
    """What a scan of a split's ``.json`` members (and member headers) tells: one row per readable track,
    in manifest order. Lengths are samples (``.pcm``) or frames (``.feats.npy``)."""

    keys: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # source file of each track ("" when not recorded)
    labels: list[int] = field(default_factory=list)  # label_index (-1 on a multi-label set)
    label_sets: list[tuple[int, ...]] = field(default_factory=list)  # label_indices (() on single-label sets)
    folds: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    shard: list[int] = field(default_factory=list)  # shard index (manifest order)
    ordinal: list[int] = field(default_factory=list)  # sample index within the shard
    feature_dim: int | None = None


_SCANS: dict[tuple[Any, ...], _Index] = {}
_SCANS_KEPT = 8


def _scan_split(shards: Sequence[tuple[str, int]]) -> _Index:
    """The index of a split: read once per process for local shard files that have not changed since (each
    file's size and modification time are part of the key; a cross-validation builds some 25 streams over the
    same split). Treat the result as read-only: it is shared."""
    key = _scan_key(shards)
    if key is not None and key in _SCANS:
        return _SCANS[key]
    idx = _read_index(shards)
    if key is not None:
        if len(_SCANS) >= _SCANS_KEPT:
            _SCANS.pop(next(iter(_SCANS)))  # the oldest
        _SCANS[key] = idx
    return idx


def _scan_key(shards: Sequence[tuple[str, int]]) -> tuple[Any, ...] | None:
    """``(url, expected, size, mtime_ns)`` per shard, or None when one is not a local file (pipe:, http)."""
    key = []
    for url, expected in shards:
        try:
            st = os.stat(url)
        except (OSError, ValueError):
            return None
        key.append((url, expected, st.st_size, st.st_mtime_ns))
    return tuple(key)


def _read_index(shards: Sequence[tuple[str, int]]) -> _Index:
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
                idx.label_sets.append(tuple(int(i) for i in meta.get("label_indices") or ()))
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


class SplitStream(IterableDataset):
    """One pass over a split of a shard set, partitioned over ranks and DataLoader workers: what the training
    pass (:class:`~shards.crop_stream.CropStream`) and the evaluation pass
    (:class:`~shards.window_stream.WindowStream`) share. Not iterated itself.

    Args:
        shards: a shard-set directory (its ``manifest.json`` gives the split's shards and counts), or an
            explicit list of ``(url, num_samples)``; a url is a local path, ``file://...``, ``pipe:CMD``
            (e.g. ``pipe:aws s3 cp s3://b/train-000000.tar -``) or anything ``webdataset.gopen`` opens.
            Brace patterns must be expanded by the caller (``braceexpand``).
        split: ``"train"``, ``"valid"`` or ``"test"`` (used with a directory).
        batch_size: rows per batch; every batch has exactly this many rows.
        rank, world_size: this process's place in DDP; default from ``torch.distributed`` when
            initialised, else env ``RANK`` / ``WORLD_SIZE``, else 0 / 1.
        holdout_fold: with ``folds="exclude"`` drop tracks of this fold (cross-validation training), with
            ``folds="only"`` keep only them (cross-validation evaluation); -1 keeps every track.
        folds: ``"exclude"`` or ``"only"``.
        pad_mode: tracks shorter than a crop / window: ``"loop"`` (tile; training crops from a random phase,
            the one evaluation window from the start) or ``"zero"`` (zero-pad at the end).

    Fold filtering (and a pass with ``scans_split``) needs each track's fold / length, which the manifest's
    per-shard counts do not give: the stream then scans the split's ``.json`` members once at construction
    (local shards: headers and JSON only, PCM seeked over; pipes: the whole shard is read once). The scan
    result travels with the object to DataLoader workers.

    Do not pass the DataLoader through ``accelerator.prepare``: the stream already shards by rank.
    """

    #: the pass needs every track's length before reading (evaluation): scan the split at construction
    scans_split: bool = False

    def __init__(
        self,
        shards: str | os.PathLike[str] | Sequence[tuple[str, int]],
        split: str,
        *,
        batch_size: int,
        rank: int | None = None,
        world_size: int | None = None,
        holdout_fold: int = -1,
        folds: str = "exclude",
        pad_mode: str = "loop",
    ):
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if folds not in ("exclude", "only"):
            raise ValueError(f"folds must be 'exclude' or 'only', got {folds!r}")
        if pad_mode not in ("loop", "zero"):
            raise ValueError(f"pad_mode must be 'loop' or 'zero', got {pad_mode!r}")
        if folds == "only" and holdout_fold < 0:
            raise ValueError("folds='only' needs holdout_fold >= 0")

        self.manifest: dict[str, Any] | None = None
        self.task = fmt.TASK_SINGLE  # "singlelabel" | "multilabel" (a url list: single-label)
        if isinstance(shards, (str, os.PathLike)):
            self.manifest = fmt.load_manifest(shards)
            self.task = fmt.manifest_task(self.manifest)
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
        self.batch_size = int(batch_size)
        self.rank, self.world_size = _resolve_world(rank, world_size)
        self.holdout_fold = int(holdout_fold)
        self.folds = folds
        self.pad_mode = pad_mode
        self.epoch = 0
        self._index: _Index | None = None
        self._selected: list[int] | None = None  # index rows of the split's tracks after fold filtering
        if self.holdout_fold >= 0 or self.scans_split:
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

    @property
    def num_targets(self) -> int | None:
        """K, the tag vocabulary's size, on a multi-label set (batches carry ``"targets"`` ``[B, K]``); None on a
        single-label set (batches carry ``"label"``)."""
        if self.task != fmt.TASK_MULTI or self.manifest is None:
            return None
        return len(self.manifest["labels"])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration reads (before iterating; each epoch re-forks the workers)."""
        self.epoch = int(epoch)

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
        """Label indices (into the manifest's ``labels``) of the split's tracks, in track order (-1 on a
        multi-label set: see :meth:`track_targets`)."""
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

    def track_targets(self) -> np.ndarray:
        """Multi-hot tags of the split's tracks: uint8 ``[N, K]`` in track order (:meth:`track_keys`), K =
        ``len(manifest["labels"])``. Multi-label sets only."""
        k = self.num_targets
        if k is None:
            raise ValueError(
                "track_targets() is for multi-label shard sets (manifest task 'multilabel'); "
                "this one is single-label: use track_labels()"
            )
        idx = self._build_index()
        sel = self._selected or []
        out = np.zeros((len(sel), k), dtype=np.uint8)
        for row, i in enumerate(sel):
            out[row, list(idx.label_sets[i])] = 1
        return out

    def _track_target(self, meta: dict[str, Any]) -> int | tuple[int, ...]:
        """What a batcher takes for one track: its class index, or (multi-label) its tag indices."""
        if self.num_targets is None:
            return int(meta["label_index"])
        return tuple(int(i) for i in meta.get("label_indices") or ())

    # -- partition
    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        raise NotImplementedError

    @staticmethod
    def _worker_batches(num_batches: int) -> tuple[int, int]:
        """This DataLoader worker's contiguous share ``[b0, b1)`` of the rank's batches."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return wid * num_batches // nw, (wid + 1) * num_batches // nw


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
    stream: SplitStream,
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
