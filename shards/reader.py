"""Streaming shard reader: tar shards -> int16 (or float16 feature) batches, exact under DDP x workers.

Design (see ARCHITECTURE.md, "Reader"):

* **One global sample sequence per epoch.** Training permutes the split's shards from ``(seed, epoch)`` and
  concatenates their samples into one sequence of length ``N`` (counts from the manifest, or from a scan of
  the ``.json`` members when fold filtering is on). Rank ``r`` of ``R`` takes the ``nb = ceil(ceil(N / R) /
  batch_size)`` batches that start at sample ``r * ceil(N / R)``, reading indices modulo ``N`` (wrap-around:
  nothing is lost and every batch is full). The rank's batches are split contiguously over the DataLoader
  workers, so each worker opens only the shards overlapping its range and skips the members before it. The
  per-rank batch count is a pure function of ``(N, R, batch_size)`` -- independent of the number of
  workers and of shard sizes -- so DDP never hangs, even with 1 shard and 2 ranks x 2 workers.
* **Reproducible randomness.** The crop offset of a sample is a hash of ``(seed, epoch, k)`` where ``k`` is
  its position in the epoch's (unwrapped) sequence; the shuffle buffer of a worker is seeded from ``(seed,
  epoch, start of its range)``. Same ``(seed, epoch, world size, workers)`` -> same batches, whatever ran
  before (resume at an epoch boundary with ``set_epoch``); the crops a rank sees (track and offset) do not
  even depend on the number of workers, only their grouping into batches does.
* **Evaluation** scans the split once (``.json`` members only; ``.pcm`` data is skipped with a seek) to learn
  each track's length, cuts every track into windows of ``segment_samples`` with hop ``hop_samples`` (last
  partial window zero-padded, short tracks zero-padded to one window), splits the window sequence over ranks
  by contiguous track ranges (floor split: every track on exactly one rank) and over workers by batches.
  Rows that only fill a batch (or equalise the batch count across ranks) have ``valid=False``, ``track=-1``.
* **Speed.** A minimal tar parser reads member bytes straight into a reused buffer and ``np.frombuffer``
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
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import format as fmt
from .windows import fit_length, window_starts

log = logging.getLogger(__name__)

__all__ = ["ShardStream", "ShardReadError", "default_num_workers", "make_loader"]

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_M64 = (1 << 64) - 1


class ShardReadError(Exception):
    """A shard could not be read (``url``: which one, ``reason``: why)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


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


# ------------------------------------------------------------------------------------------ tar stream


def _parse_number(field_: bytes) -> int:
    """Octal tar number field, or GNU base-256 (high bit set) for sizes >= 8 GiB."""
    if field_ and field_[0] & 0x80:
        n = int.from_bytes(field_[1:], "big")
        return n
    s = field_.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def _parse_pax(data: bytes) -> dict[str, str]:
    """``"<len> key=value\\n"`` records of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _TarStream:
    """Sequential reader of one tar shard: a local file (seekable), a ``pipe:CMD`` URL or any URL that
    ``webdataset.gopen`` opens (``http://``, ``s3://`` via ``pipe:``, ...).

    Data of the member returned by :meth:`next_member` must be consumed with exactly one of
    :meth:`skip`, :meth:`read_bytes` or :meth:`read_range` before the next call. :meth:`read_range` returns a
    view on a buffer that is reused by the next read: copy what you keep.
    """

    def __init__(self, url: str):
        self.url = url
        self.proc: subprocess.Popen[bytes] | None = None
        self.seekable = False
        self.pos = 0  # byte offset of the stream, for error messages
        self._buf = bytearray(1 << 20)
        self._scratch: bytearray | None = None
        try:
            if url.startswith("pipe:"):
                # Own Popen (not webdataset's Pipe) so an early stop can kill the command instead of
                # reading the rest of a remote shard, and a failing command is reported with its status.
                self.proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, bufsize=1 << 20)
                self.f: Any = self.proc.stdout
            elif "://" in url and not url.startswith("file://"):
                import webdataset.gopen as wds_gopen

                self.f = wds_gopen.gopen(url, "rb")
            else:
                path = url[len("file://") :] if url.startswith("file://") else url
                self.f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
                self.seekable = True
        except OSError as e:
            raise ShardReadError(url, f"cannot open: {e.strerror or e}") from e

    # -- low level
    def _readinto(self, view: memoryview) -> int:
        got = 0
        n = len(view)
        while got < n:
            k = self.f.readinto(view[got:])
            if not k:
                break
            got += k
        self.pos += got
        return got

    def _read_exact(self, n: int, what: str) -> memoryview:
        if n > len(self._buf):
            self._buf = bytearray(max(n, 2 * len(self._buf)))
        view = memoryview(self._buf)[:n]
        if self._readinto(view) != n:
            raise ShardReadError(self.url, f"truncated {what} at byte {self.pos}")
        return view

    def _discard(self, n: int) -> None:
        if n <= 0:
            return
        if self.seekable:
            self.f.seek(n, os.SEEK_CUR)
            self.pos += n
            return
        if self._scratch is None:
            self._scratch = bytearray(1 << 16)  # not the reused buffer: it may hold this sample's data
        scratch = memoryview(self._scratch)
        while n > 0:
            k = min(n, len(scratch))
            if self._readinto(scratch[:k]) != k:
                raise ShardReadError(self.url, f"truncated member data at byte {self.pos}")
            n -= k

    @staticmethod
    def _padded(size: int) -> int:
        return (size + _BLOCK - 1) // _BLOCK * _BLOCK

    def _check_end(self) -> None:
        if self.proc is not None:
            self.f.close()
            status = self.proc.wait()
            self.proc = None
            if status != 0:
                raise ShardReadError(self.url, f"command exited with status {status}")

    # -- members
    def next_member(self) -> tuple[str, int] | None:
        """Next regular file member ``(name, size in bytes)``, or None at the end of the archive."""
        longname: str | None = None
        pax: dict[str, str] = {}
        while True:
            hdr_view = memoryview(bytearray(_BLOCK))
            got = self._readinto(hdr_view)
            if got == 0:
                self._check_end()
                return None  # EOF at a member boundary (archive without end-of-archive blocks)
            if got != _BLOCK:
                raise ShardReadError(self.url, f"truncated tar header at byte {self.pos - got}")
            hdr = hdr_view.tobytes()
            if hdr == _ZERO_BLOCK:
                self._check_end()
                return None
            try:
                checksum = _parse_number(hdr[148:156])
                size = _parse_number(hdr[124:136])
            except ValueError:
                raise ShardReadError(self.url, f"corrupt tar header at byte {self.pos - _BLOCK}") from None
            if checksum != sum(hdr[:148]) + sum(hdr[156:]) + 8 * 32:
                raise ShardReadError(self.url, f"bad tar header checksum at byte {self.pos - _BLOCK}")
            typeflag = hdr[156:157]
            if typeflag == b"L":  # GNU long name of the next member
                longname = self.read_bytes(size).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                continue
            if typeflag == b"x":  # pax extended header of the next member
                pax = _parse_pax(self.read_bytes(size))
                continue
            if typeflag not in (b"0", b"\0", b"7"):  # directories, links, global pax headers, ...
                self._discard(self._padded(size))
                longname = None
                pax = {}
                continue
            if "path" in pax:
                name = pax["path"]
            elif longname is not None:
                name = longname
            else:
                name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if hdr[257:263] == b"ustar\x00" and hdr[345] != 0:  # POSIX ustar prefix field
                    prefix = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    name = f"{prefix}/{name}"
            if "size" in pax:
                size = int(pax["size"])
            return name, size

    def skip(self, size: int) -> None:
        self._discard(self._padded(size))

    def read_bytes(self, size: int) -> bytes:
        """Whole member as a new bytes object (small members: ``.json``)."""
        data = bytearray(size)  # not the reused buffer: it may hold this sample's PCM
        if self._readinto(memoryview(data)) != size:
            raise ShardReadError(self.url, f"truncated member data at byte {self.pos}")
        self._discard(self._padded(size) - size)
        return bytes(data)

    def read_range(self, size: int, start: int, count: int) -> memoryview:
        """Bytes ``[start, start + count)`` of the current member (view on the reused buffer); a seekable
        stream seeks over the rest, a pipe reads and discards it."""
        if self.seekable:
            self._discard(start)
            view = self._read_exact(count, "member data")
            self._discard(self._padded(size) - start - count)
            return view
        view = self._read_exact(size, "member data")
        self._discard(self._padded(size) - size)
        return view[start : start + count]

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:
            pass
        if self.proc is not None:
            # Early stop: the command may still be writing; kill it rather than drain a remote shard.
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@dataclass
class _Sample:
    ordinal: int  # index of the sample (key group) within its shard
    key: str
    meta: bytes | None = None
    data: np.ndarray | None = None  # int16 (n,) -- possibly a sub-range -- or float16 (N, D)
    length: int = 0  # full length of the track, samples (pcm) or frames (feats)
    start: int = 0  # offset of ``data`` within the track
    ext: str = ""
    error: str | None = None


#: ``range_fn(ordinal, length) -> (start, count)``: which samples of a ``.pcm`` member to read.
RangeFn = Callable[[int, int], tuple[int, int]]


def _iter_samples(url: str, wanted: Sequence[int], range_fn: RangeFn | None) -> Iterator[_Sample]:
    """Samples (key groups) of shard ``url`` whose ordinals are in ``wanted`` (increasing), in order.

    Members of unwanted samples are skipped without reading (seek) on local files. Stops -- and kills a
    pipe command -- as soon as the last wanted sample is complete. Raises :class:`ShardReadError`. The
    ``data`` of a yielded sample views a reused buffer: copy it before advancing the generator.
    """
    if not wanted:
        return
    tar = _TarStream(url)
    try:
        wi = 0
        last = wanted[-1]
        ordinal = -1
        cur_key: str | None = None
        group: _Sample | None = None
        while True:
            member = tar.next_member()
            if member is None:
                break
            name, size = member
            slash = name.rfind("/") + 1
            dot = name.find(".", slash)
            key, ext = (name[:dot], name[dot + 1 :]) if dot >= 0 else (name, "")
            if key != cur_key:
                if group is not None:
                    yield group
                    group = None
                    wi += 1
                    if wi == len(wanted):
                        return
                if ordinal >= last:
                    return
                cur_key = key
                ordinal += 1
                if ordinal == wanted[wi]:
                    group = _Sample(ordinal, key)
            if group is None:
                tar.skip(size)
            elif ext == fmt.META_EXT:
                group.meta = tar.read_bytes(size)
            elif ext == fmt.PCM_EXT:
                if size % 2:
                    group.error = f"{name}: odd byte count {size} for int16 PCM"
                    tar.skip(size)
                    continue
                n = size // 2
                start, count = range_fn(ordinal, n) if range_fn is not None else (0, n)
                group.data = np.frombuffer(tar.read_range(size, 2 * start, 2 * count), dtype="<i2")
                group.length, group.start, group.ext = n, start, ext
            elif ext == fmt.FEATS_EXT:
                try:
                    feats = fmt.decode_feats(tar.read_bytes(size))
                except ValueError as e:
                    group.error = f"{name}: bad .npy member ({e})"
                    continue
                if feats.ndim != 2:
                    group.error = f"{name}: features must be [N, D], got shape {feats.shape}"
                    continue
                group.data, group.length, group.start, group.ext = feats, feats.shape[0], 0, ext
            else:
                tar.skip(size)
        if group is not None:
            yield group
    finally:
        tar.close()


def _meta_fields(sample: _Sample) -> dict[str, Any] | None:
    """Parsed ``.json`` of a sample, or None after recording why in ``sample.error``."""
    if sample.error is not None:
        return None
    if sample.meta is None:
        sample.error = f"{sample.key}: no .json member"
        return None
    if sample.data is None:
        sample.error = f"{sample.key}: no .{fmt.PCM_EXT} or .{fmt.FEATS_EXT} member"
        return None
    try:
        meta = fmt.decode_meta(sample.meta)
        int(meta["label_index"])
    except (ValueError, KeyError, TypeError) as e:
        sample.error = f"{sample.key}: bad .json member ({e!r})"
        return None
    return meta


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
            for sample in _iter_samples(url, range(1 << 62), header_only):
                seen += 1
                meta = _meta_fields(sample)
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


# ------------------------------------------------------------------------------------------ crop utils




# ----------------------------------------------------------------------------------------------- stream


def _batch_array(shape: tuple[int, ...], dtype: Any, zero: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """A batch buffer as (numpy array, tensor sharing its memory). numpy allocation, not torch.zeros: a
    large torch fill runs on the intra-op thread pool, which costs ~17 ms per 4 MB on a loaded 2-core box."""
    x = np.zeros(shape, dtype=dtype) if zero else np.empty(shape, dtype=dtype)
    return x, torch.from_numpy(x)


class _TrainBatcher:
    """Shuffle buffer + batch assembly for training crops.

    Crops live in one preallocated slab ``(capacity, T[, D])`` -- no allocation per sample -- and are
    copied once into the batch array when drawn: one copy in, one copy out.
    """

    def __init__(self, capacity: int, batch_size: int, rng: random.Random):
        self.capacity, self.bs, self.rng = capacity, batch_size, rng
        self.slab: np.ndarray | None = None
        self.free = list(range(capacity - 1, -1, -1))
        self.used: list[tuple[int, int]] = []  # (slot, label)
        self.x: np.ndarray | None = None  # batch being filled (a view of self.xt)
        self.xt: torch.Tensor | None = None
        self.labels = np.zeros(batch_size, dtype=np.int64)
        self.row = 0
        self.last: tuple[np.ndarray, np.ndarray] | None = None  # last emitted batch (x, labels)

    def _batch(self, x: np.ndarray, label: int) -> dict[str, torch.Tensor] | None:
        if self.x is None:
            self.x, self.xt = _batch_array((self.bs, *x.shape), x.dtype)
            self.labels = np.empty(self.bs, dtype=np.int64)
        self.x[self.row] = x
        self.labels[self.row] = label
        self.row += 1
        if self.row < self.bs:
            return None
        xb, xt, lb = self.x, self.xt, self.labels
        self.last, self.x, self.row = (xb, lb), None, 0
        # (B, T) int16 waves, or (B, T_frames, D) float16 features
        return {("feats" if xb.ndim == 3 else "wave"): xt, "label": torch.from_numpy(lb)}

    def add(
        self, write: Callable[[np.ndarray], None], label: int, row_shape: tuple[int, ...], dtype: Any
    ) -> dict[str, torch.Tensor] | None:
        """Store a crop (``write(row)`` fills a slab row of ``row_shape``); returns a batch when one is
        complete. A full buffer first moves a random stored crop to the batch, then reuses its slot."""
        if self.slab is None:
            self.slab = np.empty((self.capacity, *row_shape), dtype=dtype)
        if self.free:
            slot = self.free.pop()
            write(self.slab[slot])
            self.used.append((slot, int(label)))
            return None
        j = self.rng.randrange(len(self.used))
        slot, old = self.used[j]
        out = self._batch(self.slab[slot], old)
        write(self.slab[slot])
        self.used[j] = (slot, int(label))
        return out

    def drain(self) -> Iterator[dict[str, torch.Tensor]]:
        assert self.slab is not None or not self.used
        self.rng.shuffle(self.used)
        for slot, label in self.used:
            out = self._batch(self.slab[slot], label)  # type: ignore[index]
            if out is not None:
                yield out
        self.used = []

    def can_refill(self) -> bool:
        return self.last is not None or self.row > 0

    def refill(self, n: int) -> Iterator[dict[str, torch.Tensor]]:
        """``n`` more rows re-using rows already read (keeps the planned batch count after read errors)."""
        if self.last is not None:
            pool_x, pool_l = self.last
        else:
            assert self.x is not None
            pool_x, pool_l = self.x[: self.row].copy(), self.labels[: self.row].copy()
        for _ in range(n):
            i = self.rng.randrange(len(pool_l))
            out = self._batch(pool_x[i], int(pool_l[i]))
            if out is not None:
                yield out


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
        pad_mode: training crops of tracks shorter than the segment: ``"loop"`` (tile from a random phase)
            or ``"zero"`` (zero-pad at the end). Evaluation windows are always zero-padded.
        partial_reads: in training, read only the crop's bytes of a ``.pcm`` member of a seekable local
            shard (10x less I/O for 3-s crops of 30-s tracks); pipes always read whole members.

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
        self.epoch = 0
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

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shard order, shuffle and crops the next iteration produces."""
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
        """Label indices (into the manifest's ``labels``) of the split's tracks, in track order."""
        idx = self._build_index()
        return [idx.labels[i] for i in self._selected or []]

    def num_windows(self) -> list[int]:
        """Evaluation windows per track, in track order."""
        idx = self._build_index()
        seg, hop = self.segment_samples, self.hop_samples
        return [len(window_starts(idx.lengths[i], seg, hop=hop)) for i in self._selected or []]

    # -- partition
    def _train_layout(self) -> tuple[int, int, int]:
        """``(N, samples per rank before rounding up, batches per rank)``."""
        n_total = sum(self._shard_counts())
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
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return wid * num_batches // nw, (wid + 1) * num_batches // nw

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
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

    def _iter_train(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, seed, seg, bs = self.epoch, self.seed, self.segment_samples, self.batch_size
        _, per_rank, num_batches = self._train_layout()
        b0, b1 = self._worker_batches(num_batches)
        if b1 <= b0:
            return
        a = self.rank * per_rank + b0 * bs
        planned = (b1 - b0) * bs
        rng = random.Random(_hash(seed, epoch, a, 0xB0F))
        batcher = _TrainBatcher(min(max(1, self.shuffle_buffer), planned), bs, rng)
        produced = 0
        kept = self._kept_by_shard
        partial = self.partial_reads

        for shard, lo, hi, k_lo in self._train_segments(epoch, a, a + planned):
            url = self.shards[shard][0]
            wanted: Sequence[int] = range(lo, hi) if kept is None else kept[shard][lo:hi]
            k_of = {o: k_lo + j for j, o in enumerate(wanted)}

            def crop_range(ordinal: int, n: int, k_of=k_of) -> tuple[int, int]:
                if n <= seg or not partial:
                    return 0, n
                return _hash(seed, epoch, k_of[ordinal]) % (n - seg + 1), seg

            got = 0
            try:
                for sample in _iter_samples(url, wanted, crop_range):
                    meta = _meta_fields(sample)
                    if meta is None:
                        log.error("%s: skipping sample %d: %s", url, sample.ordinal, sample.error)
                        continue
                    got += 1
                    h = _hash(seed, epoch, k_of[sample.ordinal])
                    x = sample.data
                    out = batcher.add(
                        lambda row, s=sample, h=h: self._train_crop(s, h, row),
                        meta["label_index"],
                        (seg, *x.shape[1:]),  # type: ignore[union-attr]
                        x.dtype,  # type: ignore[union-attr]
                    )
                    if out is not None:
                        yield out
            except ShardReadError as e:
                log.error("%s; skipping the rest of this shard", e)
            if got < len(wanted):
                log.error("%s: read %d of the %d samples expected", url, got, len(wanted))
            produced += got
        yield from batcher.drain()
        if produced < planned:
            log.error("rank %d: re-using samples to fill %d unreadable ones", self.rank, planned - produced)
            if not batcher.can_refill():
                raise RuntimeError(
                    f"rank {self.rank}: none of the {planned} training samples of this worker could be read "
                    "(see the errors above)"
                )
            yield from batcher.refill(planned - produced)

    def _train_crop(self, sample: _Sample, h: int, out: np.ndarray) -> None:
        """Write the ``segment_samples`` crop at the sample's hashed offset into ``out`` (looped/padded
        if the track is short)."""
        seg, n, x = self.segment_samples, sample.length, sample.data
        assert x is not None
        if n < seg:
            if n == 0:
                log.warning("%s: empty track, yielding silence", sample.key)
            out[:] = fit_length(x, seg, self.pad_mode, h % n if n else 0)
            return
        off = h % (n - seg + 1) - sample.start  # data may already be the crop (partial read)
        out[:] = x[off : off + seg]

    # -- evaluation
    def _iter_eval(self) -> Iterator[dict[str, torch.Tensor]]:
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
        rows = (b1 - b0) * bs
        dim = idx.feature_dim
        if dim is None and self.manifest is not None:
            dim = self.manifest.get("feature_dim")
        is_feats = self.kind == "features" or (self.kind is None and dim is not None)
        shape = (bs, seg, dim) if is_feats else (bs, seg)
        dtype = np.float16 if is_feats else np.int16
        name = "feats" if is_feats else "wave"

        state = {"row": 0}
        cur: dict[str, Any] = {}
        starts: dict[str, Any] = {}

        def new_batch() -> None:
            cur["x"], cur["xt"] = _batch_array(shape, dtype, zero=True)
            cur["track"] = np.full(bs, -1, dtype=np.int64)
            cur["label"] = np.zeros(bs, dtype=np.int64)
            cur["valid"] = np.zeros(bs, dtype=bool)
            state["row"] = 0

        def put(track: int, label: int, x: np.ndarray | None, w: int) -> dict[str, torch.Tensor] | None:
            """Window ``w`` of ``track`` (x: the whole track, None when unreadable) into the next row."""
            row = state["row"]
            if x is not None:
                if starts.get("track") != track:  # tracks arrive one after the other: cache one
                    starts["track"], starts["at"] = track, window_starts(idx.lengths[sel[track]], seg, hop=hop)
                start = int(starts["at"][w])  # the window policy classify uses
                piece = x[start : start + seg]
                cur["x"][row, : piece.shape[0]] = piece
                cur["track"][row], cur["label"][row], cur["valid"][row] = track, label, True
            state["row"] = row + 1
            if row + 1 < bs:
                return None
            out = {
                name: cur["xt"],
                "label": torch.from_numpy(cur["label"]),
                "track": torch.from_numpy(cur["track"]),
                "valid": torch.from_numpy(cur["valid"]),
            }
            new_batch()
            return out

        new_batch()
        emitted = 0
        if w_hi > w_lo:
            t_first = bisect.bisect_right(win_start, w_lo) - 1
            t_last = bisect.bisect_right(win_start, w_hi - 1) - 1
            # tracks grouped by shard (contiguous: tracks are in manifest order)
            groups: list[tuple[int, list[int]]] = []
            for t in range(t_first, t_last + 1):
                s = idx.shard[sel[t]]
                if not groups or groups[-1][0] != s:
                    groups.append((s, []))
                groups[-1][1].append(t)
            for s, tracks in groups:
                url = self.shards[s][0]
                by_ordinal = {idx.ordinal[sel[t]]: t for t in tracks}
                pending = iter(tracks)
                samples = _iter_samples(url, [idx.ordinal[sel[t]] for t in tracks], None)
                while True:
                    try:
                        sample = next(samples, None)
                    except ShardReadError as e:
                        log.error("%s; its remaining tracks are marked valid=False", e)
                        sample = None
                    got_t = by_ordinal[sample.ordinal] if sample is not None else None
                    # tracks before got_t (or all remaining at the end) were not read: invalid rows
                    for t in pending:
                        x = None
                        if t == got_t:
                            meta = _meta_fields(sample)  # type: ignore[arg-type]
                            if meta is None:
                                log.error("%s: track %d unreadable: %s", url, t, sample.error)  # type: ignore[union-attr]
                            else:
                                x = sample.data  # type: ignore[union-attr]
                        elif got_t is None or t < got_t:
                            log.error("%s: track %d (%s) missing", url, t, idx.keys[sel[t]])
                        w_a = max(w_lo, win_start[t]) - win_start[t]
                        w_b = min(w_hi, win_start[t + 1]) - win_start[t]
                        label = idx.labels[sel[t]]
                        for w in range(w_a, w_b):
                            out = put(t, label, x, w)
                            emitted += 1
                            if out is not None:
                                yield out
                        if t == got_t:
                            break
                    if sample is None:
                        break
        while emitted < rows:  # fill the last batch / equalise batches across ranks
            out = put(-1, 0, None, 0)
            emitted += 1
            if out is not None:
                yield out


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
