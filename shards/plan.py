"""The ingest's first two phases: what is in the collection, and where each track goes.

:func:`scan_digest` fingerprints a scan (a resume refuses a changed source); :func:`build_plan` drops exact
duplicates (same realpath, or same bytes: only files of equal size are hashed), probes every track (header
only, in parallel), fixes labels, sample keys, the split/fold of each track (:mod:`shards.splits`), the sample
order (sorted by key, then shuffled with a generator seeded by ``(seed, split)``) and the partition into
shards. The plan is plain JSON (``DIR/.ingest/plan.json``); the write phase (:mod:`shards.ingest`) follows it.

Multi-label sets (the layout's ``task``, plan key ``task``): the classes are the union of the tracks' tags,
each plan track carries ``labels`` (its sorted tags) and ``label`` None, and stratified splits and folds come
from iterative stratification (:mod:`shards.stratify`, grouped, seeded). Single-label plans are unchanged.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import partial
from typing import Any, NamedTuple

from tqdm import tqdm

from shards import audio
from shards.format import SPLITS, TASK_MULTI, TASK_SINGLE, shard_name
from shards.ingest_config import SPLIT_METHODS, IngestConfig, IngestError, ShardSize
from shards.layouts import LAYOUTS, Layout, Skipped, Track, gtzan_list_name
from shards.offline_augment import OfflineAugment
from shards.procs import Mapper, crash_reason, pool_chunksize
from shards.shard_balance import cut_for_ranks
from shards.splits import gtzan_filtered_lists, kfold, stratified_splits
from shards.stratify import iterative_kfold, iterative_split

__all__ = ["PLAN_VERSION", "build_plan", "feature_layout", "progress_bar", "scan_digest"]

PLAN_VERSION = 1
_TAR_BLOCK = 512
_MAX_KEY = 90  # ustar member names are <= 100 bytes: key + ".json"


def _sanitize_key(text: str) -> str:
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "track"
    return key


def _member_bytes(n: int) -> int:
    return _TAR_BLOCK + ((n + _TAR_BLOCK - 1) // _TAR_BLOCK) * _TAR_BLOCK


# --------------------------------------------------------------------------------------------- workers
# Tasks run in the pool's worker processes. What they need besides the path comes as an argument (bound with
# functools.partial, pickled with each chunk of tasks): the layout name.


class _Info(NamedTuple):
    """What the probe learnt of a file: ``(rate, channels, frames)`` (audio: Hz, source channels, frames at
    that rate; feature layouts: nominal frame rate, feature dimension, frames)."""

    rate: int
    channels: int
    frames: int


def feature_layout(name: str) -> type[Layout] | None:
    """The layout class when it is not an audio layout (it then probes and decodes its files itself)."""
    cls = LAYOUTS.get(name)
    return cls if cls.kind != "audio" else None


def _probe_task(layout: str, path: str) -> tuple | str:
    """``(orig_sr, channels, frames[, {track field: value}])`` or the reason the file cannot be decoded."""
    try:
        cls = feature_layout(layout)
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


def progress_bar(total: int, desc: str, enabled: bool | None) -> tqdm:
    """A bar counting files; ``enabled`` None: on a terminal only."""
    return tqdm(
        total=total,
        desc=desc,
        unit="file",
        disable=None if enabled is None else not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )



def scan_digest(tracks: Iterable[Track], skipped: Iterable[Skipped]) -> str:
    """sha256 hex of what a scan found (each track's path, label, split, artist, size and mtime; each skip):
    a resume whose scan differs would write another plan's shards."""
    h = hashlib.sha256()
    for t in tracks:
        try:
            st = t.path.stat()
            sig = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            sig = "missing"
        tags = "" if t.labels is None else "\0" + ";".join(t.labels)  # single-label digests as before
        h.update(f"T{t.rel}\0{t.label}\0{t.split}\0{t.artist}\0{sig}{tags}\n".encode())
    for s in skipped:
        h.update(f"S{s.path}\0{s.reason}\n".encode())
    return h.hexdigest()


def _dedupe(tracks: list[Track], mapper: Mapper, progress: bool | None) -> tuple[list[Track], list[Skipped]]:
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
        chunk = pool_chunksize(len(candidates), mapper.workers, 64)
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
                _hash_task, [str(t.path) for t in candidates], pool_chunksize(len(candidates), mapper.workers, 16)
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
    cfg: IngestConfig,
    layout: str,
    shard_size: ShardSize,
    tracks: list[Track],
    skipped: list[Skipped],
    mapper: Mapper,
    task: str = TASK_SINGLE,
) -> tuple[dict[str, Any], list[str]]:
    """Dedupe, probe, assign splits/folds, order and partition into shards of ``shard_size`` (parsed
    ``--shard-size``) for the resolved ``layout`` and its ``task`` (``"singlelabel"`` | ``"multilabel"``). Returns ``(plan, warnings)``; the caller adds the plan's
    ``settings`` (the resume fingerprint) and ``scan_digest``.

    Every file that does not make it into the plan is added to the plan's ``skipped`` with the reason.
    """
    warnings: list[str] = []
    tracks, dup_skips = _dedupe(tracks, mapper, cfg.progress)
    skipped = skipped + dup_skips
    _check_folds(cfg, tracks, "")  # before the probe: a hopeless --folds costs no decoding
    scanned_labels = sorted({lab for t in tracks for lab in t.label_set})
    tracks, infos = _probe(tracks, layout, mapper, skipped, cfg.progress)
    method = _split_method(cfg.split, layout, tracks)
    tracks, infos = _apply_split_method(method, tracks, infos, skipped)
    if not tracks:
        reasons = Counter(s.reason for s in skipped)
        detail = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(5)) or "no audio files found"
        raise IngestError(f"{cfg.source}: zero decodable tracks ({detail})")

    labels = sorted({lab for t in tracks for lab in t.label_set})
    for lab in scanned_labels:
        if lab not in labels:
            warnings.append(
                f"label {lab!r} has no decodable audio: it is not a class (its files are in skipped)"
            )
    _check_folds(cfg, tracks, " with decodable audio")
    keys = _make_keys(tracks)
    group_by, groups = _grouping(cfg.group_by, tracks, warnings)
    multi = task == TASK_MULTI
    splits = _assign_splits(cfg, method, group_by, tracks, keys, groups, warnings, multi)
    if method == "stratified":
        warnings.extend(_empty_split_warnings(cfg, splits))
    folds = _assign_folds(cfg, tracks, keys, groups, multi)
    plan_tracks, plan_shards = _partition(cfg, layout, shard_size, tracks, infos, keys, splits, folds)
    plan_shards = cut_for_ranks(plan_shards, "train", cfg.shards_for_ranks, warnings)  # --shards-for-ranks
    plan = {
        "plan_version": PLAN_VERSION,
        "task": task,
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
    tracks: list[Track], layout: str, mapper: Mapper, skipped: list[Skipped], progress: bool | None
) -> tuple[list[Track], list[_Info]]:
    """Probe every track (header only, in rel-path order): the decodable ones with their :class:`_Info`;
    the others go to ``skipped`` with the reason."""
    tracks = sorted(tracks, key=lambda t: t.rel)
    paths = [str(t.path) for t in tracks]
    bar = progress_bar(len(paths), "probe", progress)
    infos: list[_Info] = []
    ok: list[Track] = []
    results = mapper.imap(
        partial(_probe_task, layout), paths, pool_chunksize(len(paths), mapper.workers, 64), on_crash=crash_reason
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
        listed = layout == "fma" or (LAYOUTS.get(layout).official_split and any(t.split for t in tracks))
        method = "official" if tracks and (listed or all(t.split for t in tracks)) else "stratified"
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
    multi: bool = False,
) -> list[str]:
    """The split of each track: stratified by label (and grouped; multi-label: iterative stratification of
    the tag sets), or the official / listed one."""
    if method == "stratified" and multi:
        return iterative_split([t.label_set for t in tracks], cfg.split_ratios, cfg.seed, groups)
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


def _fold_units(group_by: str, tracks: list[Track]) -> tuple[int, str]:
    """``(how many units k-fold spreads, what they are)``: artists (and tracks without one) when grouped by
    artist, else tracks (as :func:`_grouping` decides)."""
    if group_by != "none" and any(t.artist for t in tracks):
        loose = sum(1 for t in tracks if not t.artist)
        n = len({t.artist for t in tracks if t.artist}) + loose
        return n, "artists" + (" (and tracks without one)" if loose else "") + ", whose tracks stay in one fold,"
    return len(tracks), "tracks"


def _check_folds(cfg: IngestConfig, tracks: list[Track], which: str) -> None:
    """Refuse ``--folds K`` when fewer than K units (tracks, or artists) are there to fill the folds."""
    if not cfg.folds or not tracks or all(t.fold is not None for t in tracks):
        return
    n, what = _fold_units(cfg.group_by, tracks)
    if cfg.folds > n:
        fix = f"use --folds {n} or fewer" if n >= 2 else "use --folds 0 (no folds)"
        raise IngestError(f"--folds {cfg.folds}: only {n} {what}{which} to fill {cfg.folds} folds; {fix}")


def _empty_split_warnings(cfg: IngestConfig, splits: list[str]) -> list[str]:
    """A split that ``--split-ratios`` gives a share but that got no track (too few tracks or artists)."""
    counts = Counter(splits)
    out = [
        f"the {name} split is empty although --split-ratios gives it {ratio:.3g} of {len(splits)} tracks "
        f"(too few tracks or artists); set its ratio to 0 to mean it, or add tracks"
        for name, ratio in zip(SPLITS, cfg.split_ratios)
        if ratio > 0 and counts[name] == 0
    ]
    if cfg.split_ratios[1] == 0 and not cfg.folds:
        out.append(
            "no valid split (--split-ratios gives it 0): `engine train` needs one to pick its checkpoint; fine "
            "for a set only to evaluate on, else give valid a share or add --folds K for cross-validation"
        )
    return out


def _assign_folds(
    cfg: IngestConfig, tracks: list[Track], keys: list[str], groups: list[str | None], multi: bool = False
) -> list[int]:
    """The fold of each track (the collection's own when every track has one), or -1 without ``--folds``;
    multi-label: iterative stratification of the tag sets (another seed stream than the split's)."""
    if not cfg.folds:
        return [-1] * len(tracks)
    if all(t.fold is not None for t in tracks):
        return [int(t.fold) for t in tracks]
    if multi:
        return iterative_kfold([t.label_set for t in tracks], cfg.folds, cfg.seed * 1_000_003 + 7919, groups)
    return kfold(keys, [t.label for t in tracks], cfg.folds, cfg.seed, groups)


def _estimated_bytes(
    cfg: IngestConfig, info: _Info, features: bool, augment: OfflineAugment | None = None
) -> int:
    """Bytes a track (or an augmented copy) will take in its shard (tar headers and padding included)."""
    used = info.frames if cfg.max_seconds is None else min(info.frames, int(round(cfg.max_seconds * info.rate)))
    if features:  # float16 [frames, dim] .npy + a larger JSON
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
    shard_size: ShardSize,
    tracks: list[Track],
    infos: list[_Info],
    keys: list[str],
    splits: list[str],
    folds: list[int],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Order each split (sorted by key, shuffled by ``(seed, split)``) and cut it into shards of
    ``--shard-size``: ``(plan tracks, plan shards)``, a shard being the range ``[start, stop)`` of tracks.
    Offline-augmented copies of training tracks are samples of their own, shuffled in with the rest."""
    kind, size = shard_size
    features = LAYOUTS.get(layout).kind != "audio"
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
            est_bytes = _estimated_bytes(cfg, info, features, it.augment)
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
                "label": t.label if t.labels is None else None,
                **({} if t.labels is None else {"labels": list(t.labels)}),
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

