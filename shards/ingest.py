"""Music collection -> WebDataset tar shards (``tools/make_shards.py``): the job, its write phase and its CLI.

The job runs in three phases, each deterministic given the arguments and the source files:

1. **scan** -- the layout (:mod:`shards.layouts`) lists candidate tracks (files whose name or content says
   audio) and counts every other file it walks past (``ignored`` in the manifest, by extension); exact
   duplicates (same realpath, or same bytes: only files of equal size are hashed) are dropped and reported.
2. **plan** (:mod:`shards.plan`) -- every track is probed (header only, in parallel); labels, keys,
   split/fold assignment (:mod:`shards.splits`) and the partition into shards are fixed and saved to
   ``DIR/.ingest/plan.json``. Sample order within a split: sorted by key, then shuffled with a generator
   seeded by ``(seed, split)``, so a shard is a label mix (good for streaming shuffles) and reruns give the
   same order. With ``--offline-augment`` the training split also gets time-stretched / pitch-shifted
   copies of its tracks (:mod:`shards.offline_augment`), marked in their JSON; valid and test never do.
3. **write** (here) -- tracks are decoded by a process pool (:class:`shards.procs.Mapper`, order kept) and
   written shard by shard; each shard goes to ``<name>.tmp``, is fsync'ed and renamed, then
   ``DIR/.ingest/done/<name>.json`` records its size, sha256, samples and decode skips.

A rerun with the same arguments on the same source reuses the saved plan, skips shards whose record
matches the file on disk (size and sha256: :class:`shards.resumable.DoneRecords`) and writes the rest: an
interrupted job finishes with exactly the bytes an uninterrupted one writes. A rerun with different
arguments (:meth:`IngestConfig.settings`) into a non-empty DIR is an error unless ``overwrite`` (start over).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from shards import audio
from shards.format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    META_EXT,
    PCM_EXT,
    SPLITS,
    TASK_MULTI,
    TASK_SINGLE,
    add_shard_record,
    decode_meta,
    encode_meta,
    encode_pcm,
)
from shards.ingest_config import SPLIT_METHODS, IngestConfig, IngestError, ShardSize
from shards.ingest_ranks import DEFAULT_TIMEOUT_S, Ranks, WriteWatch, deal_shards
from shards.layouts import (
    FMA_SUBSETS,
    LAYOUTS,
    DecodeSettings,
    LayoutError,
    detect_layout,
    scan_source,
)
from shards.offline_augment import OfflineAugment
from shards.outputs import cli_errors, printable_path
from shards.outsink import OutSink, SinkError, is_pipe, open_sink
from shards.plan import PLAN_VERSION, build_plan, feature_layout, progress_bar, scan_digest
from shards.procs import Mapper, crash_reason, pool_chunksize
from shards.resumable import DoneRecords, atomic_write_json, identity_diff
from shards.splits import parse_ratios
from shards.tags_fma import FMA_LABEL_COLUMNS
from shards.tags_jamendo import JAMENDO_SUBSETS
from shards.writer import ShardWriter

log = logging.getLogger(__name__)

STATE_DIR = ".ingest"
_PLAN_FILE = "plan.json"  # in STATE_DIR

__all__ = [
    "IngestConfig",
    "IngestError",
    "IngestResult",
    "build_parser",
    "main",
    "run_ingest",
]


@dataclass
class IngestResult:
    manifest: dict[str, Any]
    out: Path
    layout: str
    resumed_shards: int = 0
    written_shards: int = 0
    warnings: list[str] = field(default_factory=list)
    is_main: bool = True  # rank 0 (the only one with the manifest) of a multi-process ingest
    delivered_to: str | None = None  # a pipe: --out: where every file was streamed


# --------------------------------------------------------------------------------------------- decode
def _decode_settings(cfg: IngestConfig, layout: str) -> DecodeSettings:
    return DecodeSettings(
        layout=layout,
        sample_rate=cfg.sample_rate,
        max_seconds=cfg.max_seconds,
        trim_silence=cfg.trim_silence,
        peak_normalize=cfg.peak_normalize,
    )


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
        cls = feature_layout(settings.layout)
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


def _check_out(cfg: IngestConfig, out: Path, settings: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """What ``out`` holds: ``(the saved plan of a matching interrupted run or None, clear it first)``; raises
    :class:`IngestError` when it holds something else. ``--overwrite`` clears only once the new plan stands
    (a failed scan loses nothing)."""
    plan_path = out / STATE_DIR / _PLAN_FILE
    if not (out.is_dir() and any(out.iterdir())):
        return None, False
    if cfg.overwrite:
        return None, True
    if not plan_path.is_file():
        raise IngestError(
            f"--out {out} is not empty and holds no resumable ingest; pass --overwrite to start over "
            "(removes shards and manifest there), or use another --out"
        )
    try:
        saved_plan = json.loads(plan_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IngestError(
            f"--out {out}: its {STATE_DIR}/{_PLAN_FILE} is damaged (not the JSON an ingest writes); pass "
            "--overwrite to start over, or use another --out"
        ) from None
    diff = identity_diff(saved_plan.get("settings", {}), settings)
    if diff or saved_plan.get("plan_version") != PLAN_VERSION:
        raise IngestError(
            f"--out {out} holds a shard set made with different arguments (differs in: "
            f"{', '.join(diff) or 'plan version'}); pass --overwrite to start over, or use another --out"
        )
    return saved_plan, False


def _resolve_layout(cfg: IngestConfig, source: Path) -> str:
    """``cfg.layout``, or the layout ``auto`` recognises in ``source``."""
    if cfg.layout != "auto":
        return cfg.layout
    try:
        layout = detect_layout(source)
    except LayoutError as err:
        raise IngestError(str(err)) from None
    log.debug("layout auto -> %s", layout)
    return layout


# --------------------------------------------------------------------------------------------- run
def run_ingest(cfg: IngestConfig, ranks: Ranks | None = None) -> IngestResult:
    """Scan, plan, decode and write a shard set (resuming a matching interrupted run). See module doc.

    ``ranks``: this process's place in a multi-process ingest (default :meth:`Ranks.from_env`: the launcher's
    rendezvous, or one process without one; :mod:`shards.ingest_ranks`). Every rank returns; only rank 0's
    result has the manifest (``is_main``)."""
    shard_size = cfg.validate()
    layout = _resolve_layout(cfg, Path(cfg.source))
    cfg.validate_layout(layout)
    if ranks is not None:
        return _run(cfg, layout, shard_size, ranks)
    ranks = Ranks.from_env(cfg.rank_timeout)
    try:
        return _run(cfg, layout, shard_size, ranks)
    finally:
        ranks.close()


def _run(cfg: IngestConfig, layout: str, shard_size: ShardSize, ranks: Ranks) -> IngestResult:
    """:func:`run_ingest` once the options are checked and the layout known: plan, write, manifest."""
    source = Path(cfg.source)
    settings = cfg.settings(layout, shard_size)
    sink = open_sink(cfg.out, cfg.state_dir)
    out = sink.root
    workers = max(1, cfg.workers if cfg.workers is not None else (os.cpu_count() or 1))
    mapper = Mapper(workers)
    try:
        plan, warnings, ignored = ranks.lead(partial(_plan_once, cfg, layout, shard_size, settings, out), mapper)
        log.info("plan sha256 %s (rank %d of %d)", _plan_sha256(plan), ranks.rank, ranks.world)
        if ranks.is_main:
            for w in warnings:
                log.warning("%s", w)
        pending, resumed, mine = _share_shards(ranks, sink, plan)
        watch = WriteWatch(ranks, sum(s["stop"] - s["start"] for s in pending), cfg.progress)
        ok = False
        try:
            records = _write_shards(cfg, _decode_settings(cfg, layout), sink, plan, mapper, mine, watch)
            ok = True
        finally:
            watch.finish(ok)
    finally:
        mapper.close()
    _collect_records(ranks, sink, ranks.all_gather(records))
    if not ranks.is_main:
        return IngestResult({}, out, layout, resumed, len(pending), warnings, is_main=False)

    manifest = _build_manifest(cfg, out, plan, layout, ignored)
    delivered = None if sink.shared else sink.describe()
    if sum(manifest["splits"][s]["tracks"] for s in SPLITS) == 0:
        sink.put_manifest(manifest)
        raise IngestError(
            f"{source}: zero decodable tracks (every file failed to decode; see {out / MANIFEST_NAME})"
        )
    sink.put_manifest(manifest)
    return IngestResult(manifest, out, layout, resumed, len(pending), warnings, delivered_to=delivered)


def _plan_once(
    cfg: IngestConfig, layout: str, shard_size: ShardSize, settings: dict[str, Any], out: Path, mapper: Mapper
) -> tuple[dict[str, Any], list[str], dict[str, int]]:
    """Rank 0's part: check ``out`` (the state's folder), scan, and reuse the saved plan or build and save a new
    one (its file reads spread by ``mapper``). Returns ``(plan, warnings, ignored)``."""
    source = Path(cfg.source)
    saved_plan, clear_first = _check_out(cfg, out, settings)
    try:
        scan = scan_source(source, layout, cfg.layout_options(layout))
    except LayoutError as err:
        raise IngestError(str(err)) from None
    if not scan.tracks and not scan.skipped:
        raise IngestError(
            f"SOURCE {source}: no audio files found for layout {layout!r} ({audio.ignored_summary(scan.ignored)})"
        )
    warnings = list(scan.warnings)
    digest = scan_digest(scan.tracks, scan.skipped)
    if saved_plan is not None:
        if saved_plan.get("scan_digest") != digest:
            raise IngestError(
                f"--out {out}: the source changed since the interrupted run (files added, removed or "
                "modified); pass --overwrite to start over"
            )
        warnings.extend(saved_plan.get("warnings", []))
        log.info("resuming the ingest planned in %s", out / STATE_DIR / _PLAN_FILE)
        return saved_plan, warnings, scan.ignored
    plan, plan_warnings = build_plan(cfg, layout, shard_size, scan.tracks, scan.skipped, mapper, scan.task)
    plan["settings"] = settings
    plan["scan_digest"] = digest
    log.info("plan computed: %d samples in %d shards", len(plan["tracks"]), len(plan["shards"]))
    warnings.extend(plan_warnings)
    if clear_first:
        _clear_out(out)
    DoneRecords(out, STATE_DIR).mkdir()
    atomic_write_json(out / STATE_DIR / _PLAN_FILE, plan)
    return plan, warnings, scan.ignored


def _plan_sha256(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _share_shards(
    ranks: Ranks, sink: OutSink, plan: dict[str, Any]
) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
    """``(shards still to write, shards already complete, this rank's share of the first)``. The done-records
    are checked by every rank (a folder: a share each; a local state: each its own) and merged."""
    if not sink.shared and not ranks.is_main and ranks.local_rank == 0:
        _adopt_plan(sink.root, plan)  # this node's state dir follows rank 0's plan
    ranks.barrier()
    done = DoneRecords(sink.root, STATE_DIR)
    shards = plan["shards"]
    look = shards[ranks.rank :: ranks.world] if sink.shared else shards
    found = {s["name"]: rec for s in look if (rec := sink.verified(done, s["name"])) is not None}
    merged: dict[str, Any] = {}
    for part in ranks.all_gather(found):
        merged.update(part)
    _collect_records(ranks, sink, [merged])
    pending = [s for s in shards if s["name"] not in merged]
    resumed = len(shards) - len(pending)
    if resumed and ranks.is_main:
        log.info("%d of %d shards already complete", resumed, len(shards))
    return pending, resumed, deal_shards(pending, ranks.world)[ranks.rank]


def _adopt_plan(root: Path, plan: dict[str, Any]) -> None:
    """Another node's local state follows ``plan``: its done-records are dropped unless they were made for
    this very plan."""
    path = root / STATE_DIR / _PLAN_FILE
    try:
        same = json.loads(path.read_text(encoding="utf-8")) == plan
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(root / STATE_DIR, ignore_errors=True)
        DoneRecords(root, STATE_DIR).mkdir()
        atomic_write_json(path, plan)


def _collect_records(ranks: Ranks, sink: OutSink, parts: list[dict[str, Any]]) -> None:
    """Rank 0 keeps every rank's done-records in its state (a local state dir: the others' are not there)."""
    if sink.shared or not ranks.is_main:
        return
    done = DoneRecords(sink.root, STATE_DIR)
    for part in parts:
        for name, rec in part.items():
            if not done.path(name).is_file():
                done.write(name, rec)


def _write_shards(
    cfg: IngestConfig,
    settings: DecodeSettings,
    sink: OutSink,
    plan: dict[str, Any],
    mapper: Mapper,
    pending: list[dict[str, Any]],
    watch: WriteWatch,
) -> dict[str, dict[str, Any]]:
    """Decode and write the ``pending`` shards of ``plan`` (this rank's share of those whose done-record is
    missing or does not match its file) into ``sink``; returns their done-records by name."""
    out = sink.root
    done = DoneRecords(out, STATE_DIR)
    tracks = plan["tracks"]
    labels = plan["labels"]
    label_index = {lab: i for i, lab in enumerate(labels)}
    records: dict[str, dict[str, Any]] = {}
    todo = [tracks[i] for s in pending for i in range(s["start"], s["stop"])]
    chunk = pool_chunksize(len(todo), mapper.workers, 4)
    # at most ~64 decoded tracks (~85 MB of 30-s clips) wait for the writer
    results = mapper.imap(
        partial(_decode_task, settings),
        [(t["path"], OfflineAugment(**t["augment"]) if "augment" in t else None) for t in todo],
        chunk,
        window=max(64, 4 * chunk * mapper.workers),
        on_crash=crash_reason,
    )
    bar = progress_bar(len(todo), "decode", cfg.progress if watch.ranks.world == 1 else False)
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
                    tags = t.get("labels")  # multi-label: the track's tags (plan order: sorted)
                    if tags is not None:
                        extra.update(labels=tags, label_indices=sorted(label_index[x] for x in tags))
                    meta = {
                        **extra,
                        "key": t["key"],
                        "label": t["label"],
                        "label_index": label_index[t["label"]] if tags is None else -1,
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
                    per_label.update([t["label"]] if tags is None else tags)
                    seconds += duration
                info = writer.close()
            if info.samples == 0:
                (out / name).unlink()
                shard_rec = None
            else:
                shard_rec = info.to_dict()
                sink.publish(name)  # before its record: a record says the file is where it belongs
            records[name] = {"shard": shard_rec, "skipped": skipped, "per_label": dict(per_label), "seconds": seconds}
            done.write(name, records[name])
            watch.add(shard["stop"] - shard["start"], seconds)
    finally:
        bar.close()
    return records


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
    done = DoneRecords(out, STATE_DIR)
    for shard in plan["shards"]:  # every one verified or written by this run
        add_shard_record(splits[shard["split"]], done.read(shard["name"]), skipped)
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
        "task": plan.get("task", TASK_SINGLE),  # a plan of an interrupted run from before tasks: single-label
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
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output shard directory (seen by every node of a multi-machine run), or 'pipe:CMD {name}': each "
        "file (every tar, then manifest.json) streamed to CMD's stdin, {name} replaced by its name, e.g. "
        "'pipe:aws s3 cp - s3://bucket/set/{name}'",
    )
    p.add_argument(
        "--layout",
        default="auto",
        choices=["auto", *LAYOUTS.names()],
        help="collection layout; auto recognises it and says which it chose",
    )
    p.add_argument(
        "--subset",
        default=None,
        metavar="NAME",
        help=f"fma layout: the FMA subset, one of {', '.join(FMA_SUBSETS)} (default small); jamendo layout: the "
        f"tag subset, one of {', '.join(JAMENDO_SUBSETS)} (default genre)",
    )
    p.add_argument(
        "--labels",
        default=None,
        metavar="FILE|NAME",
        help="msd layout: genre annotation file, TRACK_ID<TAB>genre lines (tagtraum CD1/CD2/CD2C, top-MAGD); "
        "fma layout: genre_top (one genre per track, the default), or genres / genres_all (every genre of the "
        "track: a multi-label set)",
    )
    _add_multilabel_arguments(p)
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
    p.add_argument(
        "--workers", type=int, default=None, help="decode processes per process (default: os.cpu_count())"
    )
    p.add_argument("--overwrite", action="store_true", help="start over in a non-empty --out")
    _add_many_process_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary and errors")
    return p


def _add_multilabel_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the multi-label layouts (csv with a labels column, jamendo, mtat, fma genres, tags)."""
    g = p.add_argument_group("multi-label sets (each track a set of tags)")
    g.add_argument(
        "--label-sep",
        default=";",
        metavar="SEP",
        help="csv layout: separator of the tags in a 'labels' column (a 'labels' column instead of 'label' "
        "makes a multi-label set)",
    )
    g.add_argument(
        "--genre-ancestors",
        action="store_true",
        help="fma layout with --labels genres/genres_all: also tag each track with the parents of its genres "
        "(fma_metadata/genres.csv)",
    )
    g.add_argument(
        "--split-index", type=int, default=0, metavar="N",
        help="jamendo layout: the official split data/splits/split-N",
    )  # fmt: skip
    g.add_argument(
        "--top-tags", type=int, default=50, metavar="N", help="mtat layout: keep the N most frequent tags"
    )
    g.add_argument(
        "--label-map",
        type=Path,
        default=None,
        metavar="FILE",
        help="tags layout: YAML (raw: canonical) or CSV (raw,canonical) map of the raw genre tags, many to one; "
        "an empty canonical drops the tag, unlisted tags are kept",
    )
    g.add_argument(
        "--min-count", type=int, default=1, metavar="N",
        help="tags layout: drop tags fewer than N files carry (files left without a tag are skipped)",
    )  # fmt: skip


def _add_many_process_options(p: argparse.ArgumentParser) -> None:
    """The options of a pipe: --out and of a run under accelerate launch / torchrun (shards.ingest_ranks)."""
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="with a pipe: --out, the local folder of the resume state (default: "
        "./.make_shards_state/<hash of --out>)",
    )
    p.add_argument(
        "--shards-for-ranks",
        type=int,
        default=0,
        metavar="K",
        help="cut the train split into a multiple of K shards: K = the training run's processes x loader "
        "workers (8 GPUs x 4 workers: 32); 0: off",
    )
    p.add_argument(
        "--rank-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="under accelerate launch / torchrun: seconds a process waits on another before the run stops",
    )


def _summary(res: IngestResult, limit: int = 50) -> str:
    m = res.manifest
    what = "tags" if m.get("task") == TASK_MULTI else "labels"
    lines = [f"layout: {res.layout}", f"{what} ({len(m['labels'])}): {', '.join(m['labels'])}"]
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
        lines.append(f"  ... {len(skipped) - limit} more (see 'skipped' in {printable_path(res.out / MANIFEST_NAME)})")
    lines.append(audio.ignored_summary(m.get("ignored", {})))
    for w in res.warnings:
        lines.append(f"warning: {w}")
    if res.delivered_to:
        lines.append(f"streamed every shard and {MANIFEST_NAME} to {res.delivered_to}")
    else:
        lines.append(f"wrote {printable_path(res.out / MANIFEST_NAME)}")
    return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    return re.sub(
        r"\(.*\)$", "", reason.split(" of ")[0] if reason.startswith("duplicate") else reason
    ).strip()


@cli_errors("make_shards")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 on a configuration/input error: one line on stderr,
    no traceback, nothing written)."""
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
        out=args.out if is_pipe(args.out) else Path(args.out),
        layout=args.layout,
        subset=args.subset,
        labels=(Path(args.labels) if args.labels not in FMA_LABEL_COLUMNS else args.labels) if args.labels else None,
        label_sep=args.label_sep,
        genre_ancestors=args.genre_ancestors,
        split_index=args.split_index,
        top_tags=args.top_tags,
        label_map=args.label_map,
        min_count=args.min_count,
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
        state_dir=args.state_dir,
        shards_for_ranks=args.shards_for_ranks,
        rank_timeout=args.rank_timeout,
    )
    try:
        cfg.validate()  # every refusal of the options before the layout detection reads SOURCE
        if args.layout == "auto":
            # detected here, once, to say which before the long scan; run_ingest takes it as the named layout
            try:
                cfg.layout = detect_layout(args.source)
                if os.environ.get("RANK", "0") == "0":  # once in a multi-process run
                    print(f"layout: auto -> {cfg.layout}", file=sys.stderr)
            except LayoutError:
                pass  # run_ingest reports it after the configuration checks
        res = run_ingest(cfg)
    except (IngestError, SinkError) as err:
        print(f"make_shards: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("make_shards: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if res.is_main:
        print(_summary(res))
    return 0

