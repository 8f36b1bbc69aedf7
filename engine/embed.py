"""Embeddings of a shard set by a pretrained model, written as a feature-shard set for linear probes.

::

    python -m engine embed musicnn:MSD_musicnn --shards shards/gtzan --out emb/gtzan-musicnn
    accelerate launch --multi_gpu --num_processes 4 -m engine.embed CKPT --shards DIR --out EMB
    python -m engine train --config configs/probe.yaml --shards emb/gtzan-musicnn     # the probe, in seconds

Every track of every split is cut into the evaluation windows of ``python -m engine evaluate`` (the checkpoint's
window at the shard set's rate, hop ``--hop-seconds`` = one window by default: :func:`shards.windows.window_starts`,
a track shorter than a window looped to fill one, as evaluation does), and each window becomes one row of the track's ``<key>.feats.npy``
(float16 ``[N_windows, D]``): the named output ``--embedding`` of the backbone (``outputs(x)[name]``; musicnn:
``meanmax`` 1,506 (default), ``penultimate`` 200, ``taggram`` 50, ``mean_pool``, ``max_pool``; musicnn_vgg:
``pool5`` (default), ``taggram``). A model whose input feature resamples itself (the ``musicnn`` feature) is
rebuilt at the shard set's rate, so a 22.05-kHz set is embedded as it is; any other model needs the shard set
at its own rate (as ``evaluate`` does).

Several embeddings at once: the model argument may be a comma-separated list of checkpoints / pretrained names and
``stats`` (``musicnn:MSD_musicnn,musicnn:MTT_musicnn,stats``); each row is then the parts' rows side by side in
the order given (:mod:`engine.embedding_parts`). ``stats`` is the classic clip statistics: the
``configs/stats.yaml`` front end (MFCC(20) + deltas + chroma) pooled to its mean and std, 144 values, over the
same window. Every part uses the first model's window and the hop; ``--embedding`` names every model's output.
The manifest's ``embedding.parts`` lists each part's ``name``, ``dim`` and ``offset`` (its first column).

The output is an ordinary feature-shard set (``kind: features``, the layout MSD shards have: ``engine.train``
with ``model.features.features: [precomputed]`` reads it): one output shard per source shard, same name, same
tracks in the same order with their ``.json`` (key, label, label_index, fold, artist, path, ...) and the source's
labels, splits, folds and grouping; ``num_samples`` is the track's window count and ``window_starts`` the
windows' first samples at the source rate. The manifest's ``sample_rate`` is 1: a *nominal* rate of one frame
(window) per "second", so ``data.segment_seconds: 1`` in a probe config means one window, and
``frame_seconds`` records the real hop.

Resumable and parallel: the source shards are dealt to the processes (shard ``i`` to rank ``i % world``), each
writes its own output shards atomically and a completion record (``.embed/done/<shard>.json`` with its size and
sha256); a rerun skips every shard whose record matches the file on disk and redoes the rest. The main process
writes ``manifest.json`` last. ``.embed/embed.json`` holds the run's identity (checkpoint sha256, embedding,
windows, precision, source manifest; for several parts, the list); a rerun with other settings into the same
``--out`` is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint_format import CheckpointError
from engine.cli_help import HelpFormatter, float_above, int_at_least
from engine.config import ConfigError
from engine.distributed import PRECISIONS, canonical_precision, check_precision
from engine.embedding_parts import EmbeddingParts, EmbedError, build_parts
from engine.scoring import ScoredTrack, WindowScorer
from shards import format as fmt
from shards.outputs import EXIT_USER_ERROR, OutputError, cli_errors, prepare_output_dir, printable_path
from shards.resumable import DoneRecords, atomic_write_json, identity_diff
from shards.tarstream import ShardReadError, iter_samples, sample_meta
from shards.writer import ShardWriter, sha256_file

logger = logging.getLogger(__name__)

PROG = "python -m engine embed"

__all__ = ["EMBED_VERSION", "STATE_DIR", "EmbedError", "embed", "main"]

EMBED_VERSION = 2  # 2: a track shorter than a window is looped to fill it (1: zero-padded)
STATE_DIR = ".embed"
LAYOUT = "embedding"
FRAME_RATE = 1  # the manifest's nominal sample_rate: one frame (window) per "second"


# ------------------------------------------------------------------------------------------------- shards
@dataclass
class _ShardJob:
    split: str
    name: str  # source (and output) shard file name
    url: str
    samples: int  # tracks the source manifest lists
    stats: dict[str, Any] = field(default_factory=dict)


class _ShardOutput:
    """The output shard of one job: each embedded track's rows and metadata, and the shard's counts."""

    def __init__(self, path: Path, bar: Any) -> None:
        self.writer, self.bar = ShardWriter(path), bar
        self.per_label: Counter[str] = Counter()
        self.seconds, self.windows = 0.0, 0

    def write(self, tracks: list[ScoredTrack]) -> None:
        for track in tracks:
            meta = {**track.info, "num_samples": len(track.starts), "window_starts": track.starts}
            feats = fmt.encode_feats(track.rows())  # float16 (n_windows, D)
            self.writer.add(meta["key"], {fmt.FEATS_EXT: feats, fmt.META_EXT: fmt.encode_meta(meta)})
            # a multi-label track counts once for each of its tags, as in the source manifest
            self.per_label.update(meta["labels"] if meta.get("label") is None and "labels" in meta else [meta["label"]])
            self.seconds += float(meta.get("duration") or 0.0)
            self.windows += len(track.starts)
            if self.bar is not None:
                self.bar.update(1)


def _embed_shard(
    job: _ShardJob, out: Path, parts: EmbeddingParts, hop: int, batch_size: int, bar: Any
) -> dict[str, Any]:
    """Embed one source shard into ``out/<name>``; returns its completion record."""
    # every track's windows, as evaluate scores them (a short track looped to fill its one window)
    scorer = WindowScorer(parts, batch_size, parts.window, parts.device)
    skipped: list[dict[str, str]] = []
    read = 0
    shard = _ShardOutput(out / job.name, bar)
    try:
        try:
            for sample in iter_samples(job.url, range(1 << 62)):
                read += 1
                meta = sample_meta(sample)
                if meta is None or sample.ext != fmt.PCM_EXT or sample.data is None:
                    why = sample.error or f"{sample.key}: not an audio sample ({sample.ext or 'no data'})"
                    skipped.append({"path": f"{job.name}:{sample.key}", "reason": f"embed: {why}"})
                    logger.error("%s: %s", job.url, why)
                    continue
                # sample.data: int16 (T,), a view of a reused buffer, copied into the scorer's batch here
                shard.write(scorer.add_track(read, sample.data, hop=hop, pad="loop", info=meta))
        except ShardReadError as err:
            logger.error("%s; the rest of this shard is not embedded", err)
            skipped.append({"path": job.name, "reason": f"embed: unreadable after {read} tracks ({err})"})
        shard.write(scorer.flush())
        info = shard.writer.close().to_dict() if shard.writer.samples else None
        if info is None:
            shard.writer.abort()
    except BaseException:
        shard.writer.abort()
        raise
    return {"shard": info, "split": job.split, "source_samples": job.samples, "per_label": dict(shard.per_label),
            "seconds": shard.seconds, "windows": shard.windows, "skipped": skipped}  # fmt: skip


# ------------------------------------------------------------------------------------------------- job
def _identity(parts: EmbeddingParts, shards: Path, segment: int, hop: int, precision: str) -> dict[str, Any]:
    return {
        "embed_version": EMBED_VERSION,
        **parts.identity(),  # one model: checkpoint, checkpoint_sha256, embedding; several: checkpoint, parts
        "source": str(shards.resolve()),
        "source_manifest_sha256": sha256_file(shards / fmt.MANIFEST_NAME),
        "window_samples": segment,
        "hop_samples": hop,
        "precision": precision,
    }


def _check_out_dir(out: Path) -> None:
    """Refuse, before any work, an ``--out`` embed may not write (:class:`shards.outputs.OutputError`): a
    file, a folder that cannot be written, or a folder that holds anything but an embedding run of its own
    (whose identity :func:`_check_identity` compares once the model is loaded). A missing folder is created."""
    prepare_output_dir(out)
    if out.is_dir() and not (out / STATE_DIR / "embed.json").is_file():
        others = sorted(p.name for p in out.iterdir() if p.name != STATE_DIR)
        if others:
            raise OutputError(
                out, f"is not empty (holds {printable_path(others[0])}{' and more' if len(others) > 1 else ''}) "
                "and holds no embedding run", "choose another --out (a new folder is created), or empty it",
                flag="--out",
            )  # fmt: skip


def _check_identity(out: Path, ident: dict[str, Any]) -> None:
    path = out / STATE_DIR / "embed.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if "precision" in old:  # a run from before the shared precision names wrote accelerate's "no" for fp32
            old["precision"] = canonical_precision(old["precision"])
        diff = identity_diff(old, ident, keys=[k for k in ident if k != "checkpoint"])  # the spec may be renamed
        if diff:
            raise EmbedError(
                f"{out} holds embeddings made with other settings ({', '.join(f'{k}: {old.get(k)!r}' for k in diff)}); "
                "choose another --out, or delete it to start over"
            )
    elif out.is_dir() and any(p.name != STATE_DIR for p in out.iterdir()):
        raise EmbedError(f"--out {out} is not empty and holds no embedding run; choose another --out")


def _record_identity(out: Path, ident: dict[str, Any], main: bool) -> DoneRecords:
    """The run's done-records; the main process saves the run's identity (``embed.json``) and makes their folder."""
    done = DoneRecords(out, STATE_DIR)
    if main:
        done.mkdir()
        atomic_write_json(out / STATE_DIR / "embed.json", ident)
    return done


def _build_manifest(source: dict[str, Any], done: DoneRecords, jobs: list[_ShardJob], wanted: list[str],
                    ident: dict[str, Any], dim: int, command: str) -> dict[str, Any]:  # fmt: skip
    """The feature-set manifest of every split whose shards are all complete (each done-record verified against
    its file); raises :class:`EmbedError` when a shard of the ``wanted`` splits has none."""
    for job in jobs:
        job.stats = done.verified(job.name) or {}
    missing = [j.name for j in jobs if j.split in wanted and not j.stats]
    if missing:
        raise EmbedError(f"shards not embedded (see the errors above): {', '.join(missing[:8])}")
    labels = list(source["labels"])
    splits: dict[str, Any] = {}
    skipped = list(source.get("skipped", []))
    for split in source["splits"]:
        recs = [j.stats for j in jobs if j.split == split]
        if not recs or any(not r for r in recs):
            continue
        entry = {"tracks": 0, "seconds": 0.0, "windows": 0, "per_label": dict.fromkeys(labels, 0), "shards": []}
        for rec in recs:
            fmt.add_shard_record(entry, rec, skipped)
            if rec["shard"] is not None:
                entry["windows"] += rec["windows"]
        entry["seconds"] = round(entry["seconds"], 6)
        splits[split] = entry
    rate = int(source["sample_rate"])
    keep = ("folds", "seed", "split_method", "group_by")
    return {
        "format_version": fmt.FORMAT_VERSION,
        "kind": "features",
        "task": fmt.manifest_task(source),  # a tag set's embeddings are a tag set: probes train on its tags
        "sample_rate": FRAME_RATE,  # nominal: one frame per window
        "feature_dim": dim,
        "frame_seconds": ident["hop_samples"] / rate,
        "window_seconds": ident["window_samples"] / rate,
        "labels": labels,
        "splits": splits,
        "skipped": sorted(skipped, key=lambda s: (s["path"], s["reason"])),
        "source": ident["source"],
        "layout": LAYOUT,
        "command": command,
        **{k: source[k] for k in keep if k in source},
        "embedding": {**ident, "source_sample_rate": rate, "source_layout": source.get("layout")},
    }


def embed(
    checkpoint: str | os.PathLike,
    shards: str | os.PathLike,
    out: str | os.PathLike,
    *,
    embedding: str | None = None,
    splits: list[str] | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 32,
    precision: str = "fp32",
    device: str | None = None,
    channels_last: bool = True,
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Embed every evaluation window of ``splits`` (default: all) of ``shards`` into the feature-shard set ``out``.

    ``checkpoint`` is a checkpoint file or a pretrained name (``musicnn:MSD_musicnn``), or a comma-separated
    list of them and ``stats`` whose rows are concatenated (:func:`engine.embedding_parts.build_parts`);
    ``embedding`` a name of the backbones' :attr:`EMBEDDINGS` (default each one's ``DEFAULT_EMBEDDING``); ``hop_seconds`` the window hop
    (default one window); ``batch_size`` windows per forward pass; ``precision`` the backbone's autocast
    (``fp32`` / ``bf16`` / ``fp16``, :data:`engine.distributed.PRECISIONS`; the old ``no``: fp32; the front end
    is always float32); ``channels_last`` runs the backbone's convs
    NHWC. Under ``accelerate launch`` every process
    embeds its share of the source shards. Returns ``{"out", "manifest" (main process), "written", "resumed",
    "windows", "tracks", "elapsed_s", "windows_per_s", "world_size", "rank"}`` (this process's counts).
    """
    from accelerate import PartialState  # noqa: PLC0415 -- heavy import, only for real runs

    spec, shards, out = os.fspath(checkpoint), Path(shards), Path(out)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    precision = check_precision(precision)  # the identity records the current name: "no" -> "fp32"
    if hop_seconds is not None and not hop_seconds > 0:
        raise ValueError(f"hop_seconds must be > 0, got {hop_seconds}")
    _check_out_dir(out)
    source = fmt.load_manifest(shards)
    if source.get("kind", "audio") != "audio":
        raise EmbedError(f"{shards} holds {source.get('kind')} (layout {source.get('layout')!r}), not audio: embed audio shards")
    wanted = list(source["splits"]) if not splits else list(splits)
    unknown = [s for s in wanted if s not in source["splits"]]
    if unknown:
        raise EmbedError(f"--splits {', '.join(unknown)}: {shards} has {', '.join(source['splits'])}; "
                         "name splits it has (comma-separated), or leave --splits out for all")  # fmt: skip

    on_cpu = (device is not None and torch.device(device).type == "cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    rank, world = state.process_index, state.num_processes
    dev = torch.device(device) if device else state.device

    rate = int(source["sample_rate"])
    # a pretrained name converts on first use (every rank: safe, atomic); every part on the first model's window
    parts = build_parts(spec, rate, embedding, dev, precision, channels_last)
    segment, name, dim = parts.window, parts.label, parts.dim
    hop = segment if hop_seconds is None else max(1, int(round(hop_seconds * rate)))
    ident = _identity(parts, shards, segment, hop, precision)

    _check_identity(out, ident)  # on every rank, so none waits in a barrier for one that raised
    state.wait_for_everyone()
    done = _record_identity(out, ident, state.is_main_process)
    state.wait_for_everyone()

    jobs = [_ShardJob(split, Path(url).name, url, n) for split in source["splits"]
            for url, n in fmt.split_shards(source, split, shards)]  # fmt: skip
    mine = [j for i, j in enumerate(k for k in jobs if k.split in wanted) if i % world == rank]
    todo = [j for j in mine if done.verified(j.name) is None]
    bar = None
    if progress and state.is_main_process:
        from tqdm.auto import tqdm  # noqa: PLC0415

        desc = f"embed {name}{f' (rank 0 of {world})' if world > 1 else ''}"
        bar = tqdm(total=sum(j.samples for j in todo), unit="track", desc=desc, dynamic_ncols=True)
    logger.info("embedding %d of %d shards (%d already done) with %s %s (D=%d), window %d samples, hop %d",
                len(todo), len(mine), len(mine) - len(todo), spec, name, dim, segment, hop)  # fmt: skip
    t0 = time.perf_counter()
    windows = tracks = 0
    try:
        for job in todo:
            rec = _embed_shard(job, out, parts, hop, batch_size, bar)
            rec["rank"] = rank
            done.write(job.name, rec)
            windows += rec["windows"]
            tracks += rec["shard"]["samples"] if rec["shard"] else 0
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    state.wait_for_everyone()

    result = {"out": str(out), "written": len(todo), "resumed": len(mine) - len(todo), "windows": windows,
              "tracks": tracks, "elapsed_s": elapsed, "windows_per_s": windows / max(elapsed, 1e-9),
              "embedding": name, "feature_dim": dim, "world_size": world, "rank": rank}  # fmt: skip
    if state.is_main_process:
        result["manifest"] = _build_manifest(source, done, jobs, wanted, ident, dim, command)
        atomic_write_json(out / fmt.MANIFEST_NAME, result["manifest"])
    state.wait_for_everyone()
    return result


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Embed every evaluation window of a shard set with a pretrained model into a feature-shard set "
            "(kind features: one row per window, float16 [N_windows, D] per track; the source's splits, folds, "
            "labels, keys and groups kept) that `train` / `cv` / `compare` read with features: [precomputed] "
            "(configs/probe.yaml: a linear probe). Resumable (rerun the same command: shards already written and "
            "verified are skipped); several processes: accelerate launch -m engine.embed ..."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", help="pretrained name (musicnn:MSD_musicnn, musicnn:MTT_musicnn, musicnn:MSD_vgg, "
                   "musicnn:MTT_vgg) or a checkpoint .pt of one of those architectures; or several of them and "
                   "stats (MFCC+deltas+chroma mean and std, 144 values), comma-separated: each window's rows "
                   "concatenated in that order, on the first model's window")  # fmt: skip
    p.add_argument("--shards", required=True, help="audio shard-set directory (with manifest.json), at any rate for musicnn")
    p.add_argument("--out", required=True, help="output feature-shard directory (resumed if it holds this run; "
                   "a folder that holds anything else is refused)")  # fmt: skip
    p.add_argument(
        "--embedding",
        default=None,
        help="named output: musicnn meanmax (mean+max pool of the mid-end, 1,506; the default), penultimate "
        "(200), taggram (50 tag sigmoids), mean_pool, max_pool (753); musicnn_vgg pool5 (the default), taggram",
    )
    p.add_argument("--splits", default=None, help="comma-separated splits to embed (default: all)")
    p.add_argument("--hop-seconds", type=float_above(0), default=None, help="window hop (default: one window, as evaluate)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32, help="windows per forward pass")
    p.add_argument("--precision", type=canonical_precision, choices=PRECISIONS, default="fp32",
                   help="autocast of the backbone (the old 'no': fp32)")  # fmt: skip
    p.add_argument("--device", default=None, help="torch device (default: this process's accelerate device)")
    p.add_argument(
        "--no-channels-last", action="store_true", help="keep the backbone's conv weights NCHW (default: NHWC)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@cli_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    """Run the command; a refusal is one line on stderr and exit status 2 (no traceback)."""
    from engine.logs import setup_logging  # noqa: PLC0415

    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        res = embed(
            args.checkpoint, args.shards, args.out, embedding=args.embedding,
            splits=args.splits.split(",") if args.splits else None, hop_seconds=args.hop_seconds,
            batch_size=args.batch_size, precision=args.precision, device=args.device,
            channels_last=not args.no_channels_last, progress=not args.no_progress, command=" ".join(["python -m engine embed", *argv]),
        )  # fmt: skip
    except (EmbedError, CheckpointError, ConfigError, fmt.ManifestError, FileNotFoundError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if "manifest" in res:
        m = res["manifest"]
        counts = ", ".join(f"{s}: {e['tracks']} tracks / {e['windows']} windows" for s, e in m["splits"].items())
        print(f"{res['out']}: {res['embedding']} (D={res['feature_dim']}) -- {counts}")
        print(json.dumps({k: v for k, v in res.items() if k != "manifest"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
