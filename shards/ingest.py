"""Music collection -> WebDataset tar shards (``tools/make_shards.py``).

The job runs in three phases, each deterministic given the arguments and the source files:

1. **scan** -- the layout (:mod:`shards.layouts`) lists candidate tracks (files whose name or content says
   audio) and counts every other file it walks past (``ignored`` in the manifest, by extension); exact
   duplicates (same realpath, or same bytes: only files of equal size are hashed) are dropped and reported.
2. **plan** -- every track is probed (header only, in parallel); labels, keys, split/fold assignment
   (:mod:`shards.splits`) and the partition into shards are fixed and saved to ``DIR/.ingest/plan.json``.
   Sample order within a split: sorted by key, then shuffled with a generator seeded by ``(seed, split)``,
   so a shard is a label mix (good for streaming shuffles) and reruns give the same order. With
   ``--offline-augment`` the training split also gets time-stretched / pitch-shifted copies of its tracks
   (:mod:`shards.offline_augment`), marked in their JSON; valid and test never do.
3. **write** -- tracks are decoded by a process pool (``imap``, order kept) and written shard by shard;
   each shard goes to ``<name>.tmp``, is fsync'ed and renamed, then ``DIR/.ingest/done/<name>.json``
   records its size, sha256, samples and decode skips.

A rerun with the same arguments on the same source reuses the saved plan, skips shards whose record
matches the file on disk (size and sha256) and writes the rest: an interrupted job finishes with exactly
the bytes an uninterrupted one writes. A rerun with different arguments into a non-empty DIR is an error
unless ``overwrite`` (start over).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import random
import re
import shlex
import shutil
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from shards import audio
from shards.format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    META_EXT,
    PCM_EXT,
    SPLITS,
    add_shard_record,
    decode_meta,
    encode_meta,
    encode_pcm,
    shard_name,
)
from shards.layouts import (
    FMA_SUBSETS,
    LAYOUTS,
    DecodeSettings,
    Layout,
    LayoutError,
    LayoutOptions,
    Skipped,
    Track,
    detect_layout,
    gtzan_list_name,
    scan_source,
)
from shards.offline_augment import OfflineAugment
from shards.procs import POLL_S, crash_reason, run_alone, worker_death
from shards.splits import gtzan_filtered_lists, kfold, parse_ratios, stratified_splits
from shards.writer import ShardWriter, shard_matches

log = logging.getLogger(__name__)

STATE_DIR = ".ingest"
PLAN_VERSION = 1
SPLIT_METHODS = ("stratified", "official", "gtzan-filtered")
_TAR_BLOCK = 512
_MAX_KEY = 90  # ustar member names are <= 100 bytes: key + ".json"


class IngestError(Exception):
    """A configuration or input problem that stops the job (clear message, non-zero exit)."""


@dataclass
class IngestConfig:
    source: Path
    out: Path
    layout: str = "auto"
    subset: str = "small"  # fma only
    labels: Path | None = None  # msd only: genre annotation file (TRACK_ID<TAB>genre)
    sample_rate: int = 22050  # Hz of the stored audio
    max_seconds: float | None = None  # keep at most this many seconds from the start of each track
    peak_normalize: bool = False
    trim_silence: float | None = None  # dB below peak; None = no trimming
    split: str | None = None  # None: "official" for fma (or a csv with a split column), else "stratified"
    split_ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    folds: int = 0
    group_by: str = "auto"  # "auto" (artist when artists are known) | "artist" | "none"
    shard_size: str = "256MB"  # "<n>MB" / "<n>GB" / "<n>KB" by size, a bare integer by sample count
    offline_augment: tuple[OfflineAugment, ...] = ()  # one extra copy of every training track per variant
    workers: int | None = None  # None: os.cpu_count()
    overwrite: bool = False
    progress: bool | None = None  # None: tqdm decides (bars on a terminal only)
    command: str = ""


@dataclass
class IngestResult:
    manifest: dict[str, Any]
    out: Path
    layout: str
    resumed_shards: int = 0
    written_shards: int = 0
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- helpers
def parse_shard_size(text: str) -> tuple[str, int]:
    """``"256MB"`` -> ``("bytes", 256_000_000)``; ``"1000"`` -> ``("count", 1000)``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise IngestError(f"--shard-size {text!r}: expected a sample count like 1000 or a size like 256MB")
    num, unit = float(m.group(1)), (m.group(2) or "").upper()
    if not unit:
        if num != int(num):
            raise IngestError(f"--shard-size {text!r}: a sample count must be an integer")
        return "count", int(num)
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return "bytes", int(num * mult)


def _sanitize_key(text: str) -> str:
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "track"
    return key


def _member_bytes(n: int) -> int:
    return _TAR_BLOCK + ((n + _TAR_BLOCK - 1) // _TAR_BLOCK) * _TAR_BLOCK


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- workers
# Tasks run in the pool's worker processes. What they need besides the path comes as an argument (bound with
# functools.partial, pickled with each chunk of tasks): the layout name, or the frozen DecodeSettings.


class _Info(NamedTuple):
    """What the probe learnt of a file: ``(rate, channels, frames)`` (audio: Hz, source channels, frames at
    that rate; feature layouts: nominal frame rate, feature dimension, frames)."""

    rate: int
    channels: int
    frames: int


def _feature_layout(name: str) -> type[Layout] | None:
    """The layout class when it is not an audio layout (it then probes and decodes its files itself)."""
    cls = LAYOUTS.get(name)
    return cls if cls.kind != "audio" else None


def _probe_task(layout: str, path: str) -> tuple | str:
    """``(orig_sr, channels, frames[, {track field: value}])`` or the reason the file cannot be decoded."""
    try:
        cls = _feature_layout(layout)
        if cls is not None:
            return tuple(cls.probe_file(path))
        info = audio.probe(path)
    except audio.AudioError as err:
        return err.reason
    except Exception as err:  # never let one file kill the job
        return f"probe failed ({type(err).__name__}: {err})"
    return info.orig_sample_rate, info.channels, info.frames


def _sample_hash_task(path: str) -> str | None:
    """Hash of the first, middle and last 64 KiB: equal-size files that differ almost always differ here, so
    only files that also collide on this sample are read in full (dedupe then costs ~0 instead of a full read)."""
    h = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            for off in sorted({0, max(0, size // 2 - (1 << 15)), max(0, size - (1 << 16))}):
                fh.seek(off)
                h.update(fh.read(1 << 16))
    except OSError:
        return None
    return h.hexdigest()


def _hash_task(path: str) -> str | None:
    h = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _decode_task(
    settings: DecodeSettings, task: tuple[str, OfflineAugment | None]
) -> tuple[dict[str, bytes], int, float] | str:
    """Decode one track ``(path, offline augmentation or None)`` -> ``({ext: bytes}, samples, seconds)`` or a
    skip reason.

    Audio: ``{"pcm": int16 LE bytes}`` at ``settings.sample_rate`` Hz (an augmented copy is stretched /
    shifted after trimming, before peak normalisation); other kinds: the layout's ``decode_file``.
    """
    path, augment = task
    try:
        cls = _feature_layout(settings.layout)
        if cls is not None:
            return cls.decode_file(path, settings)
        wave, _info = audio.load_audio(path, settings.sample_rate, max_seconds=settings.max_seconds)
        if settings.trim_silence is not None:
            wave = audio.trim_silence(wave, settings.trim_silence)
            if wave.size == 0:
                return f"silent: nothing left after trimming at -{settings.trim_silence} dB"
        if augment is not None:
            wave = augment.apply(wave, settings.sample_rate)
        if settings.peak_normalize:
            wave = audio.peak_normalize(wave)
        if wave.size == 0:
            return "no audio samples after decoding"
        return {PCM_EXT: encode_pcm(wave)}, int(wave.size), wave.size / settings.sample_rate
    except audio.AudioError as err:
        return err.reason
    except MemoryError:
        return "decode failed (out of memory)"
    except Exception as err:
        return f"decode failed ({type(err).__name__}: {err})"


def _map_chunk(fn: Callable, chunk: list) -> list:  # one pool task: a chunk of items
    return [fn(x) for x in chunk]


class _WorkerDied(Exception):
    def __init__(self, exitcode: int | None) -> None:
        super().__init__(worker_death(exitcode))
        self.exitcode = exitcode


class _Mapper:
    """``imap`` over a process pool (order kept), or in-process when ``workers <= 1``.

    A worker process that dies (the OOM killer, a crash inside a native decoder) would leave
    ``multiprocessing.Pool`` waiting forever for its task. The mapper watches its workers instead: on a
    death it starts a fresh pool and runs the tasks that were in flight one at a time, each in a process
    of its own, so the one that takes its process down gets ``on_crash(exitcode)`` as its result (a skip
    reason) and every other task its normal result -- the job neither hangs nor stops.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.ctx = mp.get_context()
        self.pool = None
        self.procs: list[Any] = []
        self._stop = threading.Event()
        if workers > 1:
            self._new_pool()

    def _new_pool(self) -> None:
        before = set(mp.active_children())
        self.pool = self.ctx.Pool(self.workers)
        self.procs = [p for p in mp.active_children() if p not in before]  # this pool's worker processes
        self._stop = threading.Event()

    def imap(
        self, fn: Callable, items: Sequence, chunksize: int = 1, window: int | None = None,
        on_crash: Callable[[int | None], Any] = lambda _code: None,
    ) -> Iterator:  # fmt: skip
        """Ordered ``fn`` over ``items``. ``window`` bounds the tasks in flight: ``Pool.imap`` reads its input
        eagerly, so without it a slow consumer (a slow disk) lets decoded results pile up in memory.
        ``on_crash(exitcode)`` is the result of a task whose process died even when it ran alone."""
        if self.pool is None:
            return map(fn, items)
        return self._guarded(fn, list(items), max(1, chunksize), window, on_crash)

    def _guarded(
        self, fn: Callable, items: list, chunksize: int, window: int | None, on_crash: Callable[[int | None], Any]
    ) -> Iterator:
        k = 0  # index of the next result to hand out
        while k < len(items):
            try:
                for r in self._pool_imap(fn, items[k:], chunksize, window):
                    yield r
                    k += 1
                return
            except _WorkerDied as died:
                # the lost task lies in the chunks in flight from k on: run those alone, then the pool again
                suspects = items[k : k + chunksize * self.workers]
                log.warning(
                    "a worker process %s; running the %d task(s) in flight one at a time", died, len(suspects)
                )
                self._stop.set()
                self.pool.terminate()
                self.pool.join()
                self._new_pool()
                for item in suspects:
                    yield run_alone(fn, item, on_crash)
                    k += 1

    def _pool_imap(self, fn: Callable, items: list, chunksize: int, window: int | None) -> Iterator:
        # chunks are made here, not by Pool.imap (whose chunked form is a plain generator that cannot wait
        # with a timeout): one pool task per chunk, its results a list
        chunks: Iterator[list] = (items[i : i + chunksize] for i in range(0, len(items), chunksize))
        sem, stop = None, self._stop
        if window is not None:
            sem = threading.BoundedSemaphore(max(window, 2 * chunksize * self.workers))

            def throttled(chunks: Iterator[list] = chunks) -> Iterator[list]:
                for chunk in chunks:  # runs in the pool's task-feeding thread
                    for _ in chunk:
                        while not sem.acquire(timeout=0.2):
                            if stop.is_set():
                                return
                    yield chunk

            chunks = throttled()
        results = self.pool.imap(partial(_map_chunk, fn), chunks)
        for _ in range(math.ceil(len(items) / chunksize)):
            while True:
                try:
                    rs = results.next(timeout=POLL_S)
                    break
                except mp.TimeoutError:
                    dead = [p for p in self.procs if p.exitcode is not None]
                    if dead:
                        raise _WorkerDied(dead[0].exitcode) from None
            for r in rs:
                if sem is not None:
                    sem.release()
                yield r

    def close(self) -> None:
        self._stop.set()
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def _chunksize(n: int, workers: int, cap: int) -> int:
    # ~8 chunks per worker keeps the pool busy to the end; the cap bounds result latency/memory
    return max(1, min(cap, n // max(1, workers * 8)))


def _bar(total: int, desc: str, enabled: bool | None) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit="file",
        disable=None if enabled is None else not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )


# --------------------------------------------------------------------------------------------- plan
def _settings(cfg: IngestConfig, layout: str) -> dict[str, Any]:
    """Everything that changes the output bytes (the resume fingerprint)."""
    return {
        "source": str(Path(cfg.source).resolve()),
        "layout": layout,
        "subset": cfg.subset if layout == "fma" else None,
        "labels": str(Path(cfg.labels).resolve()) if cfg.labels else None,
        "sample_rate": cfg.sample_rate,
        "max_seconds": cfg.max_seconds,
        "peak_normalize": cfg.peak_normalize,
        "trim_silence": cfg.trim_silence,
        "split": cfg.split,
        "split_ratios": list(cfg.split_ratios),
        "seed": cfg.seed,
        "folds": cfg.folds,
        "group_by": cfg.group_by,
        "shard_size": list(parse_shard_size(cfg.shard_size)),
        # only when used: shard sets made without it keep the fingerprint they were made with (resume)
        **({"offline_augment": [a.to_dict() for a in cfg.offline_augment]} if cfg.offline_augment else {}),
    }


def _decode_settings(cfg: IngestConfig, layout: str) -> DecodeSettings:
    return DecodeSettings(
        layout=layout,
        sample_rate=cfg.sample_rate,
        max_seconds=cfg.max_seconds,
        trim_silence=cfg.trim_silence,
        peak_normalize=cfg.peak_normalize,
    )


def _scan_digest(tracks: Iterable[Track], skipped: Iterable[Skipped]) -> str:
    h = hashlib.sha256()
    for t in tracks:
        try:
            st = t.path.stat()
            sig = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            sig = "missing"
        h.update(f"T{t.rel}\0{t.label}\0{t.split}\0{t.artist}\0{sig}\n".encode())
    for s in skipped:
        h.update(f"S{s.path}\0{s.reason}\n".encode())
    return h.hexdigest()


def _dedupe(tracks: list[Track], mapper: _Mapper, progress: bool | None) -> tuple[list[Track], list[Skipped]]:
    """Drop exact duplicates (same realpath, or same bytes); the first in rel-path order is kept."""
    keep: list[Track] = []
    skipped: list[Skipped] = []
    by_real: dict[str, Track] = {}
    for t in sorted(tracks, key=lambda t: t.rel):
        real = os.path.realpath(t.path)
        if real in by_real:
            skipped.append(Skipped(t.rel, f"duplicate of {by_real[real].rel} (same file)"))
            continue
        by_real[real] = t
        keep.append(t)
    by_size: dict[int, list[Track]] = defaultdict(list)
    for t in keep:
        try:
            by_size[t.path.stat().st_size].append(t)
        except OSError:
            pass  # missing: reported by the probe
    # only files that share their size with another can be byte-identical; empty files are the probe's
    candidates = [t for sz, group in by_size.items() if len(group) > 1 and sz > 0 for t in group]
    if candidates:  # narrow to files whose (size, sampled bytes) collide before reading any in full
        chunk = _chunksize(len(candidates), mapper.workers, 64)
        samples = list(mapper.imap(_sample_hash_task, [str(t.path) for t in candidates], chunk))
        by_sample: dict[tuple[int, str], list[Track]] = defaultdict(list)
        for t, d in zip(candidates, samples):
            if d is not None:
                by_sample[(t.path.stat().st_size, d)].append(t)
        candidates = [t for group in by_sample.values() if len(group) > 1 for t in group]
    if not candidates:
        return keep, skipped
    digests = list(
        tqdm(
            mapper.imap(
                _hash_task, [str(t.path) for t in candidates], _chunksize(len(candidates), mapper.workers, 16)
            ),
            total=len(candidates),
            desc="dedupe",
            unit="file",
            disable=None if progress is None else not progress,
        )
    )
    first: dict[str, Track] = {}
    dup: set[int] = set()
    for t, d in sorted(zip(candidates, digests), key=lambda td: td[0].rel):
        if d is None:
            continue
        if d in first:
            skipped.append(Skipped(t.rel, f"duplicate of {first[d].rel} (same content)"))
            dup.add(id(t))
        else:
            first[d] = t
    return [t for t in keep if id(t) not in dup], skipped


def _make_keys(tracks: list[Track]) -> list[str]:
    keys: list[str] = []
    used: set[str] = set()
    for t in tracks:  # tracks are in a deterministic (sorted) order here
        key = _sanitize_key(t.key_hint)
        if len(key) > _MAX_KEY:
            key = key[: _MAX_KEY - 9]
        if key in used:
            key = f"{key[: _MAX_KEY - 9]}_{hashlib.sha1(t.rel.encode()).hexdigest()[:8]}"
        n = 1
        base = key
        while key in used:  # pathological: hash prefix collided too
            key = f"{base}_{n}"
            n += 1
        used.add(key)
        keys.append(key)
    return keys


def build_plan(
    cfg: IngestConfig, layout: str, tracks: list[Track], skipped: list[Skipped], mapper: _Mapper
) -> tuple[dict[str, Any], list[str]]:
    """Dedupe, probe, assign splits/folds, order and partition into shards. Returns ``(plan, warnings)``.

    Every file that does not make it into the plan is added to the plan's ``skipped`` with the reason.
    """
    warnings: list[str] = []
    tracks, dup_skips = _dedupe(tracks, mapper, cfg.progress)
    skipped = skipped + dup_skips
    scanned_labels = sorted({t.label for t in tracks})
    tracks, infos = _probe(tracks, layout, mapper, skipped, cfg.progress)
    method = _split_method(cfg.split, layout, tracks)
    tracks, infos = _apply_split_method(method, tracks, infos, skipped)
    if not tracks:
        reasons = Counter(s.reason for s in skipped)
        detail = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(5)) or "no audio files found"
        raise IngestError(f"{cfg.source}: zero decodable tracks ({detail})")

    labels = sorted({t.label for t in tracks})
    for lab in scanned_labels:
        if lab not in labels:
            warnings.append(
                f"label {lab!r} has no decodable audio: it is not a class (its files are in skipped)"
            )
    keys = _make_keys(tracks)
    group_by, groups = _grouping(cfg.group_by, tracks, warnings)
    splits = _assign_splits(cfg, method, group_by, tracks, keys, groups, warnings)
    folds = _assign_folds(cfg, tracks, keys, groups)
    plan_tracks, plan_shards = _partition(cfg, layout, tracks, infos, keys, splits, folds)
    plan = {
        "plan_version": PLAN_VERSION,
        "settings": _settings(cfg, layout),
        "split_method": method,
        "group_by": group_by,
        "labels": labels,
        "tracks": plan_tracks,
        "shards": plan_shards,
        "skipped": sorted(
            ({"path": s.path, "reason": s.reason} for s in skipped), key=lambda s: (s["path"], s["reason"])
        ),
        "warnings": warnings,
    }
    return plan, warnings


def _probe(
    tracks: list[Track], layout: str, mapper: _Mapper, skipped: list[Skipped], progress: bool | None
) -> tuple[list[Track], list[_Info]]:
    """Probe every track (header only, in rel-path order): the decodable ones with their :class:`_Info`;
    the others go to ``skipped`` with the reason."""
    tracks = sorted(tracks, key=lambda t: t.rel)
    paths = [str(t.path) for t in tracks]
    bar = _bar(len(paths), "probe", progress)
    infos: list[_Info] = []
    ok: list[Track] = []
    results = mapper.imap(
        partial(_probe_task, layout), paths, _chunksize(len(paths), mapper.workers, 64), on_crash=crash_reason
    )
    for t, res in zip(tracks, results):
        bar.update()
        if isinstance(res, str):
            skipped.append(Skipped(t.rel, res))
            continue
        if len(res) > 3:  # a non-audio layout learnt track fields from the file (MSD: artist id)
            for k, v in res[3].items():
                if getattr(t, k) is None:
                    setattr(t, k, v)
        ok.append(t)
        infos.append(_Info(*res[:3]))
    bar.close()
    return ok, infos


def _split_method(requested: str | None, layout: str, tracks: list[Track]) -> str:
    """``--split``, or by default ``official`` for FMA or when every track has an official split."""
    method = requested
    if method is None:
        method = "official" if tracks and (layout == "fma" or all(t.split for t in tracks)) else "stratified"
    if method not in SPLIT_METHODS:
        raise IngestError(f"--split {method!r}: valid are {', '.join(SPLIT_METHODS)}")
    return method


def _apply_split_method(
    method: str, tracks: list[Track], infos: list[_Info], skipped: list[Skipped]
) -> tuple[list[Track], list[_Info]]:
    """Keep the tracks the split method can place: ``official`` needs a track's own split,
    ``gtzan-filtered`` its entry in the fault-filtered lists (which also sets ``Track.split``)."""
    if method == "stratified":
        return tracks, infos
    keep_idx: list[int] = []
    if method == "official":
        for i, t in enumerate(tracks):
            if t.split in SPLITS:
                keep_idx.append(i)
            else:
                skipped.append(Skipped(t.rel, "no official split for this track"))
    elif method == "gtzan-filtered":
        lists = gtzan_filtered_lists()
        present: set[str] = set()
        for i, t in enumerate(tracks):
            name = gtzan_list_name(t)
            if name in lists:
                keep_idx.append(i)
                present.add(name)
                t.split = lists[name]
            else:
                skipped.append(Skipped(t.rel, "not in gtzan-filtered split"))
        bad = {s.path.rsplit("/", 2)[-2] + "/" + s.path.rsplit("/", 1)[-1] for s in skipped if "/" in s.path}
        for name in sorted(set(lists) - present):
            if name not in bad:
                skipped.append(
                    Skipped(name, f"listed in gtzan-filtered {lists[name]} split but missing from SOURCE")
                )
    return [tracks[i] for i in keep_idx], [infos[i] for i in keep_idx]


def _grouping(requested: str, tracks: list[Track], warnings: list[str]) -> tuple[str, list[str | None]]:
    """``(group_by, group of each track)``: ``auto`` groups by artist when any artist is known."""
    group_by = requested
    has_artists = any(t.artist for t in tracks)
    if group_by == "auto":
        group_by = "artist" if has_artists else "none"
    if group_by == "artist" and not has_artists:
        warnings.append("--group-by artist: no artist is known for any track; splits are not grouped")
    if group_by not in ("artist", "none"):
        raise IngestError(f"--group-by {group_by!r}: valid are auto, artist, none")
    return group_by, [t.artist if group_by == "artist" else None for t in tracks]


def _assign_splits(
    cfg: IngestConfig,
    method: str,
    group_by: str,
    tracks: list[Track],
    keys: list[str],
    groups: list[str | None],
    warnings: list[str],
) -> list[str]:
    """The split of each track: stratified by label (and grouped), or the official / listed one."""
    if method == "stratified":
        return stratified_splits(keys, [t.label for t in tracks], cfg.split_ratios, cfg.seed, groups)
    splits = [t.split for t in tracks]
    if group_by == "artist":
        crossing = _artists_across(tracks, splits)
        if crossing:
            warnings.append(
                f"{method} split puts {crossing} artist(s) in more than one split (kept: it is the official split)"
            )
    return splits


def _assign_folds(cfg: IngestConfig, tracks: list[Track], keys: list[str], groups: list[str | None]) -> list[int]:
    """The fold of each track (the collection's own when every track has one), or -1 without ``--folds``."""
    if not cfg.folds:
        return [-1] * len(tracks)
    if all(t.fold is not None for t in tracks):
        return [int(t.fold) for t in tracks]
    return kfold(keys, [t.label for t in tracks], cfg.folds, cfg.seed, groups)


def _estimated_bytes(
    cfg: IngestConfig, info: _Info, feature_layout: bool, augment: OfflineAugment | None = None
) -> int:
    """Bytes a track (or an augmented copy) will take in its shard (tar headers and padding included)."""
    used = info.frames if cfg.max_seconds is None else min(info.frames, int(round(cfg.max_seconds * info.rate)))
    if feature_layout:  # float16 [frames, dim] .npy + a larger JSON
        return _member_bytes(2 * used * info.channels + 128) + _member_bytes(800)
    samples = int(math.ceil(used * cfg.sample_rate / info.rate))  # int16 PCM at the stored rate
    if augment is not None:
        samples = int(math.ceil(samples / augment.rate))
    return _member_bytes(2 * samples) + _member_bytes(400)


class _Item(NamedTuple):
    """One sample of the plan: a track, or an offline-augmented copy of a training track."""

    index: int  # into the plan's tracks
    key: str
    augment: OfflineAugment | None = None


def _items(cfg: IngestConfig, keys: list[str], splits: list[str]) -> list[_Item]:
    """Every track once, plus one copy of every training track per ``--offline-augment`` variant (key
    ``<key>_aug<j>``, kept unique and within the ustar name limit)."""
    items = [_Item(i, k) for i, k in enumerate(keys)]
    used = set(keys)
    for i, key in enumerate(keys):
        if splits[i] != "train":
            continue
        for j, aug in enumerate(cfg.offline_augment, start=1):
            base = f"{key[: _MAX_KEY - 8]}_aug{j}"
            cand, n = base, 1
            while cand in used:  # an original key that happens to end in _aug<j>
                cand, n = f"{base[: _MAX_KEY - 6]}_{n}", n + 1
            used.add(cand)
            items.append(_Item(i, cand, aug))
    return items


def _partition(
    cfg: IngestConfig,
    layout: str,
    tracks: list[Track],
    infos: list[_Info],
    keys: list[str],
    splits: list[str],
    folds: list[int],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Order each split (sorted by key, shuffled by ``(seed, split)``) and cut it into shards of
    ``--shard-size``: ``(plan tracks, plan shards)``, a shard being the range ``[start, stop)`` of tracks.
    Offline-augmented copies of training tracks are samples of their own, shuffled in with the rest."""
    kind, size = parse_shard_size(cfg.shard_size)
    feature_layout = LAYOUTS.get(layout).kind != "audio"
    items = _items(cfg, keys, splits)
    plan_tracks: list[dict[str, Any]] = []
    plan_shards: list[dict[str, Any]] = []
    for split in SPLITS:
        order = sorted((it for it in items if splits[it.index] == split), key=lambda it: it.key)
        random.Random(f"{cfg.seed}:{split}").shuffle(order)
        shard_i, cur_n, cur_bytes, start = 0, 0, 0, len(plan_tracks)
        for it in order:
            i = it.index
            t, info = tracks[i], infos[i]
            est_bytes = _estimated_bytes(cfg, info, feature_layout, it.augment)
            full = cur_n >= size if kind == "count" else (cur_n > 0 and cur_bytes + est_bytes > size)
            if full:
                plan_shards.append(
                    {"name": shard_name(split, shard_i), "split": split, "start": start, "stop": len(plan_tracks)}
                )
                shard_i, cur_n, cur_bytes, start = shard_i + 1, 0, 0, len(plan_tracks)
            entry = {
                "key": it.key,
                "rel": t.rel,
                "path": str(t.path),
                "label": t.label,
                "track_id": t.track_id,
                "artist": t.artist,
                "split": split,
                "fold": folds[i],
                "orig_sample_rate": info.rate,
                "channels": info.channels,
            }
            if it.augment is not None:
                entry.update(augment=it.augment.to_dict(), augment_of=keys[i])
            plan_tracks.append(entry)
            cur_n += 1
            cur_bytes += est_bytes
        if cur_n:
            plan_shards.append(
                {"name": shard_name(split, shard_i), "split": split, "start": start, "stop": len(plan_tracks)}
            )
    return plan_tracks, plan_shards


def _artists_across(tracks: list[Track], splits: list[str]) -> int:
    seen: dict[str, set[str]] = defaultdict(set)
    for t, s in zip(tracks, splits):
        if t.artist:
            seen[t.artist].add(s)
    return sum(1 for v in seen.values() if len(v) > 1)


# --------------------------------------------------------------------------------------------- out dir
def _our_files(out: Path) -> list[Path]:
    pat = re.compile(r"^(train|valid|test)-\d{6}\.tar(\.tmp)?$")
    return [p for p in out.iterdir() if p.name in (MANIFEST_NAME, STATE_DIR) or pat.match(p.name)]


def _clear_out(out: Path) -> None:
    for p in _our_files(out):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    (out / (MANIFEST_NAME + ".tmp")).unlink(missing_ok=True)


def _settings_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# --------------------------------------------------------------------------------------------- run
def run_ingest(cfg: IngestConfig) -> IngestResult:
    """Scan, plan, decode and write a shard set (resuming a matching interrupted run). See module doc."""
    source, out = Path(cfg.source), Path(cfg.out)
    if not source.exists():
        raise IngestError(f"SOURCE {source} does not exist")
    if source.is_dir() and not any(p for p in source.iterdir() if not p.name.startswith(".")):
        raise IngestError(f"SOURCE {source} is empty")
    if cfg.sample_rate <= 0:
        raise IngestError(f"--sample-rate {cfg.sample_rate}: must be positive")
    if cfg.max_seconds is not None and cfg.max_seconds <= 0:
        raise IngestError(f"--max-seconds {cfg.max_seconds}: must be positive")
    if cfg.folds < 0 or cfg.folds == 1:
        raise IngestError(f"--folds {cfg.folds}: use 0 (no folds) or K >= 2")
    if cfg.subset not in FMA_SUBSETS:
        raise IngestError(f"--subset {cfg.subset!r}: valid are {', '.join(FMA_SUBSETS)}")
    if cfg.split is not None and cfg.split not in SPLIT_METHODS:
        raise IngestError(f"--split {cfg.split!r}: valid are {', '.join(SPLIT_METHODS)}")
    parse_shard_size(cfg.shard_size)
    if cfg.offline_augment and cfg.folds:
        raise IngestError(
            "--offline-augment with --folds: cross-validation tests on folds of the training split, where the "
            "augmented copies are; make a shard set for cross-validation without --offline-augment"
        )
    if len(set(cfg.offline_augment)) != len(cfg.offline_augment):
        raise IngestError("--offline-augment lists the same RATE:SEMITONES twice")
    if cfg.layout != "auto" and cfg.layout not in LAYOUTS:
        raise IngestError(f"unknown layout {cfg.layout!r}; valid: auto, {', '.join(LAYOUTS.names())}")

    try:
        layout = detect_layout(source) if cfg.layout == "auto" else cfg.layout
    except LayoutError as err:
        raise IngestError(str(err)) from None
    if cfg.layout == "auto":
        log.debug("layout auto -> %s", layout)
    if cfg.labels is not None and layout != "msd":
        raise IngestError(f"--labels is for the msd layout (a genre annotation file); layout is {layout!r}")
    if cfg.offline_augment and LAYOUTS.get(layout).kind != "audio":
        raise IngestError(f"--offline-augment stretches audio; layout {layout!r} stores {LAYOUTS.get(layout).kind}")
    settings = _settings(cfg, layout)

    # ---- output directory: fresh, resumable, or a conflict
    state = out / STATE_DIR
    plan_path = state / "plan.json"
    saved_plan: dict[str, Any] | None = None
    if out.exists() and not out.is_dir():
        raise IngestError(f"--out {out} exists and is not a directory")
    clear_first = False  # --overwrite clears only once the new plan stands (a failed scan loses nothing)
    if out.is_dir() and any(out.iterdir()):
        if cfg.overwrite:
            clear_first = True
        elif plan_path.is_file():
            saved_plan = json.loads(plan_path.read_text(encoding="utf-8"))
            diff = _settings_diff(saved_plan.get("settings", {}), settings)
            if diff or saved_plan.get("plan_version") != PLAN_VERSION:
                raise IngestError(
                    f"--out {out} holds a shard set made with different arguments (differs in: "
                    f"{', '.join(diff) or 'plan version'}); pass --overwrite to start over, or use another --out"
                )
        else:
            raise IngestError(
                f"--out {out} is not empty and holds no resumable ingest; pass --overwrite to start over "
                "(removes shards and manifest there), or use another --out"
            )
    try:
        scan = scan_source(source, layout, LayoutOptions(subset=cfg.subset, labels=cfg.labels))
    except LayoutError as err:
        raise IngestError(str(err)) from None
    if not scan.tracks and not scan.skipped:
        raise IngestError(
            f"SOURCE {source}: no audio files found for layout {layout!r} ({audio.ignored_summary(scan.ignored)})"
        )
    warnings = list(scan.warnings)
    digest = _scan_digest(scan.tracks, scan.skipped)

    workers = max(1, cfg.workers if cfg.workers is not None else (os.cpu_count() or 1))
    mapper = _Mapper(workers)
    try:
        if saved_plan is not None:
            if saved_plan.get("scan_digest") != digest:
                raise IngestError(
                    f"--out {out}: the source changed since the interrupted run (files added, removed or "
                    "modified); pass --overwrite to start over"
                )
            plan = saved_plan
            warnings.extend(plan.get("warnings", []))
            log.info("resuming the ingest planned in %s", plan_path)
        else:
            plan, plan_warnings = build_plan(cfg, layout, scan.tracks, scan.skipped, mapper)
            plan["scan_digest"] = digest
            warnings.extend(plan_warnings)
            if clear_first:
                _clear_out(out)
            (state / "done").mkdir(parents=True, exist_ok=True)
            _atomic_write_json(plan_path, plan)
        for w in warnings:
            log.warning("%s", w)
        resumed, written = _write_shards(cfg, _decode_settings(cfg, layout), out, plan, mapper)
    finally:
        mapper.close()

    manifest = _build_manifest(cfg, out, plan, layout, scan.ignored)
    if sum(manifest["splits"][s]["tracks"] for s in SPLITS) == 0:
        _atomic_write_json(out / MANIFEST_NAME, manifest)
        raise IngestError(
            f"{source}: zero decodable tracks (every file failed to decode; see {out / MANIFEST_NAME})"
        )
    _atomic_write_json(out / MANIFEST_NAME, manifest)
    return IngestResult(manifest, out, layout, resumed, written, warnings)


def _done_record(out: Path, name: str) -> dict[str, Any] | None:
    """The completion record of shard ``name`` if the shard on disk matches it, else None."""
    rec_path = out / STATE_DIR / "done" / f"{name}.json"
    if not rec_path.is_file():
        return None
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    info = rec.get("shard")
    if info is None:  # every track of the shard failed: complete, no file
        return rec
    if shard_matches(out / name, info["bytes"], info["sha256"]):
        return rec
    log.warning("shard %s does not match its record (size/sha256): rewriting it", name)
    return None


def _write_shards(
    cfg: IngestConfig, settings: DecodeSettings, out: Path, plan: dict[str, Any], mapper: _Mapper
) -> tuple[int, int]:
    tracks = plan["tracks"]
    labels = plan["labels"]
    label_index = {lab: i for i, lab in enumerate(labels)}
    pending = [s for s in plan["shards"] if _done_record(out, s["name"]) is None]
    resumed = len(plan["shards"]) - len(pending)
    if resumed:
        log.info("%d of %d shards already complete", resumed, len(plan["shards"]))
    todo = [tracks[i] for s in pending for i in range(s["start"], s["stop"])]
    chunk = _chunksize(len(todo), mapper.workers, 4)
    # at most ~64 decoded tracks (~85 MB of 30-s clips) wait for the writer
    results = mapper.imap(
        partial(_decode_task, settings),
        [(t["path"], OfflineAugment(**t["augment"]) if "augment" in t else None) for t in todo],
        chunk,
        window=max(64, 4 * chunk * mapper.workers),
        on_crash=crash_reason,
    )
    bar = _bar(len(todo), "decode", cfg.progress)
    try:
        for shard in pending:
            name = shard["name"]
            skipped: list[dict[str, str]] = []
            per_label: Counter = Counter()
            seconds = 0.0
            with ShardWriter(out / name) as writer:
                for i in range(shard["start"], shard["stop"]):
                    t = tracks[i]
                    res = next(results)
                    bar.update()
                    if isinstance(res, str):
                        skipped.append({"path": t["rel"], "reason": res})
                        continue
                    members, n, duration = res
                    # a non-audio layout may add fields to the JSON (MSD: tempo, artist id...)
                    extra = decode_meta(members.pop(META_EXT)) if META_EXT in members else {}
                    meta = {
                        **extra,
                        "key": t["key"],
                        "label": t["label"],
                        "label_index": label_index[t["label"]],
                        "path": t["rel"],
                        "orig_sample_rate": t["orig_sample_rate"],
                        "channels": t["channels"],
                        "duration": duration,
                        "num_samples": n,
                        "track_id": t["track_id"],
                        "artist": t["artist"],
                        "split": t["split"],
                        "fold": t["fold"],
                    }
                    if "augment" in t:  # an offline-augmented copy of the training track augment_of
                        meta.update(augment=t["augment"], augment_of=t["augment_of"])
                    writer.add(t["key"], {**members, META_EXT: encode_meta(meta)})
                    per_label[t["label"]] += 1
                    seconds += duration
                info = writer.close()
            if info.samples == 0:
                (out / name).unlink()
                shard_rec = None
            else:
                shard_rec = info.to_dict()
            _atomic_write_json(
                out / STATE_DIR / "done" / f"{name}.json",
                {"shard": shard_rec, "skipped": skipped, "per_label": dict(per_label), "seconds": seconds},
            )
    finally:
        bar.close()
    return resumed, len(pending)


def _build_manifest(
    cfg: IngestConfig, out: Path, plan: dict[str, Any], layout: str, ignored: dict[str, int]
) -> dict[str, Any]:
    """The manifest from the plan and the shards' completion records; ``ignored``: this run's scan's count
    of the non-audio files under SOURCE (recounted on a resume, not carried over)."""
    labels = plan["labels"]
    splits: dict[str, Any] = {
        s: {"tracks": 0, "seconds": 0.0, "per_label": dict.fromkeys(labels, 0), "shards": []} for s in SPLITS
    }
    skipped = list(plan["skipped"])
    for shard in plan["shards"]:
        rec = json.loads((out / STATE_DIR / "done" / f"{shard['name']}.json").read_text(encoding="utf-8"))
        add_shard_record(splits[shard["split"]], rec, skipped)
    for entry in splits.values():
        entry["seconds"] = round(entry["seconds"], 6)
    layout_cls = LAYOUTS.get(layout)
    extra: dict[str, Any] = {}
    if layout_cls.kind != "audio" and layout_cls.feature_dim:
        extra["feature_dim"] = int(layout_cls.feature_dim)
    return {
        **extra,
        "format_version": FORMAT_VERSION,
        "kind": layout_cls.kind,
        # feature layouts store frames at a (nominal) frame rate: seconds-based settings map to frames
        "sample_rate": int(layout_cls.frame_rate or cfg.sample_rate),
        "labels": labels,
        "splits": splits,
        "skipped": sorted(skipped, key=lambda s: (s["path"], s["reason"])),
        "ignored": dict(sorted(ignored.items())),
        "source": str(Path(cfg.source).resolve()),
        "layout": layout,
        "command": cfg.command,
        "folds": cfg.folds,
        "seed": cfg.seed,
        "split_method": plan["split_method"],
        "group_by": plan["group_by"],
        "settings": plan["settings"],
    }


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_shards.py",
        description=(
            "Turn a music collection into WebDataset tar shards (mono int16 PCM + JSON metadata) and a "
            "manifest.json. Reruns with the same arguments resume an interrupted job."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "source", type=Path, metavar="SOURCE", help="collection root (a .csv file for --layout csv)"
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output shard directory")
    p.add_argument(
        "--layout",
        default="auto",
        choices=["auto", *LAYOUTS.names()],
        help="collection layout; auto recognises it and says which it chose",
    )
    p.add_argument("--subset", default="small", choices=list(FMA_SUBSETS), help="FMA subset (fma layout)")
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="FILE",
        help="msd layout: genre annotation file, TRACK_ID<TAB>genre lines (tagtraum CD1/CD2/CD2C, top-MAGD)",
    )
    p.add_argument("--sample-rate", type=int, default=22050, help="Hz of the stored audio")
    p.add_argument("--max-seconds", type=float, default=None, help="keep at most this many seconds per track")
    p.add_argument("--peak-normalize", action="store_true", help="scale each track to peak 0.99")
    p.add_argument(
        "--trim-silence",
        type=float,
        default=None,
        metavar="DB",
        help="trim leading/trailing audio quieter than DB below the peak",
    )
    p.add_argument(
        "--split",
        default=None,
        choices=list(SPLIT_METHODS),
        help="split method (default: official for fma or a csv with a split column, else stratified)",
    )
    p.add_argument("--split-ratios", default="0.7,0.15,0.15", help="train,valid,test fractions (stratified)")
    p.add_argument("--seed", type=int, default=0, help="seed of split/fold assignment and sample order")
    p.add_argument("--folds", type=int, default=0, help="also assign K stratified folds (0 = none)")
    p.add_argument(
        "--group-by",
        default="auto",
        choices=["auto", "artist", "none"],
        help="keep groups in one split/fold (auto: artist when artists are known)",
    )
    p.add_argument(
        "--shard-size", default="256MB", help="per shard: a size (256MB, 1GB) or a sample count (1000)"
    )
    p.add_argument(
        "--offline-augment",
        action="append",
        default=[],
        metavar="RATE:SEMITONES",
        help="also write an augmented copy of every TRAINING track: tempo x RATE, pitch + SEMITONES (phase "
        "vocoder + resampling, slow); repeat for more copies, e.g. --offline-augment 0.9:0 --offline-augment "
        "1:2. Copies carry augment / augment_of in their JSON; valid and test are never augmented",
    )
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: os.cpu_count())")
    p.add_argument("--overwrite", action="store_true", help="start over in a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary and errors")
    return p


def _summary(res: IngestResult, limit: int = 50) -> str:
    m = res.manifest
    lines = [f"layout: {res.layout}", f"labels ({len(m['labels'])}): {', '.join(m['labels'])}"]
    for s in SPLITS:
        e = m["splits"][s]
        lines.append(f"{s}: {e['tracks']} tracks, {e['seconds'] / 3600:.2f} h, {len(e['shards'])} shards")
    if res.resumed_shards:
        lines.append(
            f"resumed: {res.resumed_shards} shards were already complete, {res.written_shards} written"
        )
    skipped = m["skipped"]
    lines.append(f"skipped: {len(skipped)}")
    for reason, n in Counter(_reason_kind(s["reason"]) for s in skipped).most_common():
        lines.append(f"  {n:6d} x {reason}")
    for s in skipped[:limit]:
        lines.append(f"  {s['path']}: {s['reason']}")
    if len(skipped) > limit:
        lines.append(f"  ... {len(skipped) - limit} more (see 'skipped' in {res.out / MANIFEST_NAME})")
    lines.append(audio.ignored_summary(m.get("ignored", {})))
    for w in res.warnings:
        lines.append(f"warning: {w}")
    lines.append(f"wrote {res.out / MANIFEST_NAME}")
    return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    return re.sub(
        r"\(.*\)$", "", reason.split(" of ")[0] if reason.startswith("duplicate") else reason
    ).strip()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 on a configuration/input error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        ratios = parse_ratios(args.split_ratios)
        augments = tuple(OfflineAugment.parse(a) for a in args.offline_augment)
    except ValueError as err:
        print(f"make_shards: error: {err}", file=sys.stderr)
        return 2
    cfg = IngestConfig(
        source=args.source,
        out=args.out,
        layout=args.layout,
        subset=args.subset,
        labels=args.labels,
        sample_rate=args.sample_rate,
        max_seconds=args.max_seconds,
        peak_normalize=args.peak_normalize,
        trim_silence=args.trim_silence,
        split=args.split,
        split_ratios=ratios,
        seed=args.seed,
        folds=args.folds,
        group_by=args.group_by,
        shard_size=args.shard_size,
        offline_augment=augments,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
        command=shlex.join(["make_shards.py", *argv]),
    )
    if args.layout == "auto" and args.source.exists():
        try:
            print(f"layout: auto -> {detect_layout(args.source)}", file=sys.stderr)
        except LayoutError:
            pass
    try:
        res = run_ingest(cfg)
    except IngestError as err:
        print(f"make_shards: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("make_shards: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(_summary(res))
    return 0


__all__ = [
    "IngestConfig",
    "IngestError",
    "IngestResult",
    "build_parser",
    "build_plan",
    "main",
    "parse_shard_size",
    "run_ingest",
]
