"""Batch classification of music folders: ``python -m engine classify CHECKPOINT PATH... --out results.jsonl``.

Data flow (one process per device; ``accelerate launch`` for several)::

    path stream (files, folders walked lazily with os.scandir, --from-list)
        │  index i goes to rank i % world, then to DataLoader worker (i // world) % workers
        ▼
    DataLoader workers: shards.audio decode + soxr resample to the model rate, cut into windows of
        segment_samples (hop = window, or --max-windows spread evenly), int16, long files read in chunks
        ▼  pieces: (track, int16 windows [n, T]) -- at most ``chunk_seconds`` of audio each
    main loop: windows of many tracks packed into full batches [batch_size, T] → device → model
        (autocast bf16/fp16/fp32) → softmax → per-track mean of window probabilities
        ▼
    one line per input file (JSONL or CSV), written with a single write() and flushed as soon as the track
    is complete; a rerun with the same --out skips what is already there.

Every input file named on the command line (or found under a folder with an audio extension) gets exactly
one line: ``status`` ``ok`` with the top-k genres, or ``error`` with the :class:`shards.audio.AudioError`
reason. Memory is bounded by ``workers x prefetch x chunk`` plus one batch, whatever the number or length
of the files.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from engine.cli import HelpFormatter
from engine.distributed import autocast
from engine.logs import setup_logging
from shards.audio import AudioError, AudioInfo, is_audio_name, load_audio, probe
from shards.windows import window_starts

logger = logging.getLogger(__name__)

PCM_SCALE = 32768.0  # float [-1, 1] <-> int16, as shards.format.encode_pcm
TS_META_FILE = "genre_meta.json"  # extra file inside exported TorchScript archives (engine/export.py)
DEFAULT_CHUNK_SECONDS = 120.0  # audio per worker -> main piece; bounds memory for hour-long files
WHOLE_FILE_SECONDS = 600.0  # files up to this long are decoded in one read (exactly librosa.load) ...
WHOLE_FILE_SOURCE_SAMPLES = (
    32_000_000  # ... if frames x channels fit 128 MB of float32 (6 min at 44.1 kHz stereo)
)
CHUNK_SOURCE_SAMPLES = 8_000_000  # frames x channels per chunk read of a long file (32 MB of float32)
RESAMPLE_MARGIN_SECONDS = 0.05  # extra source audio read on both sides of a chunk (resampler edge effects)


# --------------------------------------------------------------------------------------------- paths


def _walk(folder: str, visited: set[tuple[int, int]]) -> Iterator[str]:
    """Audio-named files under ``folder``, depth first, lazily (``os.scandir`` order; symlink loops cut)."""
    try:
        st = os.stat(folder)
    except OSError:
        return
    key = (st.st_dev, st.st_ino)
    if key in visited:
        return
    visited.add(key)
    try:
        it = os.scandir(folder)
    except OSError as err:
        logger.warning("cannot list %s: %s", folder, err)
        return
    with it:
        for entry in it:
            name = entry.name
            if name.startswith("."):  # hidden files and folders, AppleDouble ._x.wav
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir and not is_audio_name(name):
                yield from _walk(entry.path, visited)
            elif is_audio_name(name):
                # also dangling symlinks and folders named x.wav: they get an error line
                yield entry.path


def iter_inputs(
    paths: Iterable[str | os.PathLike], from_list: str | os.PathLike | None = None
) -> Iterator[str]:
    """The input stream: explicit files (always), audio files under folders, then paths listed in ``from_list``.

    Lazy: a folder of a million files yields its first path at once. A named path that does not exist is
    yielded as is (it gets a ``missing`` error line). ``from_list`` is a text file with one path per line
    (blank lines and ``#`` comments skipped); folders in it are walked too.
    """
    visited: set[tuple[int, int]] = set()

    def expand(p: str) -> Iterator[str]:
        if os.path.isdir(p) and not is_audio_name(p):
            yield from _walk(p, visited)
        else:
            yield p

    for p in paths:
        yield from expand(os.fspath(p))
    if from_list is not None:
        with open(from_list, encoding="utf-8") as fh:
            for line in fh:
                line = line.rstrip("\r\n")
                if line.strip() and not line.lstrip().startswith("#"):
                    yield from expand(line)


# --------------------------------------------------------------------------------------------- windows


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * PCM_SCALE), -32768, 32767).astype(np.int16)


def _fit(x: np.ndarray, n: int, pad: str) -> np.ndarray:
    """``(t,)`` -> ``(n,)``: cut, or fill the end with zeros (``pad="zero"``) or repeats (``pad="loop"``)."""
    if x.size >= n:
        return x[:n]
    if pad == "loop" and x.size > 0:
        return np.tile(x, -(-n // x.size))[:n]
    return np.pad(x, (0, n - x.size))


@dataclass
class Piece:
    """What a decode worker sends to the main loop: some windows of one track, and whether it is the last."""

    index: int  # position of the file in the input stream (unique per run)
    path: str
    windows: np.ndarray  # int16 (n, segment_samples), n may be 0
    starts: np.ndarray  # int64 (n,) window start, samples at the model rate
    last: bool
    status: str = "ok"
    reason: str | None = None
    duration: float | None = None  # seconds of the source file
    notes: list[str] = field(default_factory=list)


def decode_track(
    index: int,
    path: str,
    sample_rate: int,
    segment_samples: int,
    *,
    max_windows: int | None = None,
    pad: str = "zero",
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    whole_file_seconds: float = WHOLE_FILE_SECONDS,
) -> Iterator[Piece]:
    """Decode one file into :class:`Piece` s of at most ``chunk_seconds`` of windows each.

    Never raises for bad input: an :class:`AudioError` (even in the middle of a long file) ends the track
    with a ``last`` piece of status ``error`` and the reason. Files up to ``whole_file_seconds`` (and
    ``WHOLE_FILE_SOURCE_SAMPLES`` frames x channels) are decoded in one read (exactly ``librosa.load``);
    longer ones in chunks of at most ``chunk_seconds`` and ``CHUNK_SOURCE_SAMPLES``, aligned so that windows
    differ from the whole-file decode only by resampler rounding (a few int16 LSB).
    """
    try:
        info = probe(path)
        duration = info.frames / info.orig_sample_rate
        orig = info.orig_sample_rate
        seg_src = segment_samples * orig / sample_rate  # source frames per window
        per_piece = int(
            max(
                1,
                min(
                    chunk_seconds * sample_rate // segment_samples,
                    CHUNK_SOURCE_SAMPLES // (seg_src * info.channels),
                ),
            )
        )
        if duration <= whole_file_seconds and info.frames * info.channels <= WHOLE_FILE_SOURCE_SAMPLES:
            yield from _whole_file(
                index, path, sample_rate, segment_samples, max_windows, pad, per_piece, duration
            )
        else:
            yield from _chunked(
                index, path, info, sample_rate, segment_samples, max_windows, per_piece, duration
            )
    except AudioError as err:
        yield _error_piece(index, path, err.reason, segment_samples)
    except (OSError, ValueError, RuntimeError, MemoryError) as err:  # decoder bugs must not stop the job
        yield _error_piece(index, path, f"undecodable ({type(err).__name__}: {err})", segment_samples)


def _peak(wins: np.ndarray) -> int:
    return int(np.abs(wins.astype(np.int32)).max()) if wins.size else 0


def _whole_file(
    index: int, path: str, sample_rate: int, segment_samples: int, max_windows: int | None, pad: str,
    per_piece: int, duration: float,
) -> Iterator[Piece]:  # fmt: skip
    wave, _ = load_audio(path, sample_rate)  # exactly librosa.load(path, sr, mono=True)
    notes: list[str] = []
    if wave.size < segment_samples:
        notes.append(f"short: {wave.size / sample_rate:.2f} s {pad}-padded to one window")
        wave = _fit(wave, segment_samples, pad)
    starts = window_starts(wave.size, segment_samples, max_windows=max_windows)  # decoded length, not the header's
    pcm = _to_int16(wave)
    del wave
    peak = 0
    for a in range(0, len(starts), per_piece):
        s = starts[a : a + per_piece]
        wins = np.stack([pcm[i : i + segment_samples] for i in s])
        peak = max(peak, _peak(wins))
        last = a + per_piece >= len(starts)
        if last and peak == 0:
            notes.append("silence")
        yield Piece(index, path, wins, s, last, duration=duration, notes=notes if last else [])


def _chunked(
    index: int, path: str, info: AudioInfo, sample_rate: int, segment_samples: int, max_windows: int | None,
    per_piece: int, duration: float,
) -> Iterator[Piece]:  # fmt: skip
    """Contiguous runs of windows read in chunks of ``per_piece`` windows, with a margin for the resampler."""
    orig = info.orig_sample_rate
    n_target = int(math.ceil(info.frames * float(sample_rate) / orig))
    starts = window_starts(n_target, segment_samples, max_windows=max_windows)
    groups: list[list[int]] = [[int(starts[0])]]
    for s in starts[1:]:
        g = groups[-1]
        if int(s) == g[-1] + segment_samples and len(g) < per_piece:
            g.append(int(s))
        else:
            groups.append([int(s)])
    # a chunk starts on a source frame that maps to a whole target sample (multiples of orig/gcd), so the
    # resampler's phase equals the whole-file decode's; the margin absorbs the filter's edge effects
    step = orig // math.gcd(orig, sample_rate)  # source frames per ``sample_rate // gcd`` target samples
    margin = int(RESAMPLE_MARGIN_SECONDS * orig)
    notes: list[str] = []
    peak = 0
    for gi, g in enumerate(groups):
        first_src = g[0] * orig // sample_rate  # source frame of the first window start (floor)
        src_start = max(0, (first_src - margin) // step * step)
        src_stop = int(math.ceil((g[-1] + segment_samples) * orig / sample_rate)) + margin
        try:
            wave, _ = load_audio(
                path, sample_rate, offset_seconds=src_start / orig, max_seconds=(src_stop - src_start) / orig
            )
        except AudioError as err:
            if gi == 0 or not err.reason.startswith("no audio frames"):
                raise
            # the stream ends before its header says (VBR MP3 estimates, truncated files): keep what was read
            notes.append(f"stream ends at {g[0] / sample_rate:.1f} s, header says {duration:.1f} s")
            yield Piece(index, path, np.zeros((0, segment_samples), np.int16), np.zeros(0, np.int64), True,
                        duration=g[0] / sample_rate, notes=notes)  # fmt: skip
            return
        skip = g[0] - src_start * sample_rate // orig  # exact: src_start is a multiple of ``step``
        pcm = _to_int16(wave[max(0, skip) :])
        del wave
        keep = [s for s in g if s - g[0] < pcm.size] or g[:1]  # windows past a short stream's end are dropped
        wins = np.stack(
            [_fit(pcm[s - g[0] : s - g[0] + segment_samples], segment_samples, "zero") for s in keep]
        )
        peak = max(peak, _peak(wins))
        last = gi == len(groups) - 1
        if last and peak == 0:
            notes.append("silence")
        yield Piece(index, path, wins, np.asarray(keep, dtype=np.int64), last, duration=duration,
                    notes=notes if last else [])  # fmt: skip


def _error_piece(index: int, path: str, reason: str, segment_samples: int) -> Piece:
    empty = np.zeros((0, segment_samples), dtype=np.int16)
    return Piece(index, path, empty, np.zeros(0, dtype=np.int64), True, status="error", reason=reason)


class DecodeStream(IterableDataset):
    """The input stream of this rank, decoded into :class:`Piece` s, split across DataLoader workers.

    Input ``i`` belongs to rank ``i % world_size`` and, within it, to worker ``(i // world_size) %
    num_workers`` -- a deterministic split, so every file is decoded by exactly one worker of one rank.
    Paths in ``done`` (already in the output, for resume) are skipped.
    """

    def __init__(
        self,
        paths: list[str],
        from_list: str | None,
        sample_rate: int,
        segment_samples: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        done: set[str] | frozenset[str] = frozenset(),
        max_windows: int | None = None,
        pad: str = "zero",
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> None:
        super().__init__()
        self.paths, self.from_list = paths, from_list
        self.sample_rate, self.segment_samples = sample_rate, segment_samples
        self.rank, self.world_size, self.done = rank, world_size, done
        self.max_windows, self.pad, self.chunk_seconds = max_windows, pad, chunk_seconds

    def __iter__(self) -> Iterator[Piece]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        stride = self.world_size * nw
        mine = self.rank + self.world_size * wid
        for i, path in enumerate(iter_inputs(self.paths, self.from_list)):
            if i % stride != mine or path in self.done:
                continue
            yield from decode_track(
                i, path, self.sample_rate, self.segment_samples,
                max_windows=self.max_windows, pad=self.pad, chunk_seconds=self.chunk_seconds,
            )  # fmt: skip


def _identity(x: Any) -> Any:
    return x


# --------------------------------------------------------------------------------------------- output


def _csv_header(top_k: int, timeline: bool) -> list[str]:
    cols = ["path", "status", "reason", "duration"]
    for k in range(1, top_k + 1):
        cols += [f"label_{k}", f"prob_{k}"]
    cols += ["windows", "note"]
    if timeline:
        cols.append("timeline")
    return cols


def _csv_line(row: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


class LineWriter:
    """Appends complete lines to ``path``: each line is one ``os.write`` on an ``O_APPEND`` descriptor.

    No Python buffering, so a killed process leaves only whole lines (and at most a partial last one if
    the kernel write itself was cut, which :func:`repair_tail` removes on resume).
    """

    def __init__(self, path: str | os.PathLike, fmt: str, top_k: int, timeline: bool) -> None:
        self.path, self.fmt, self.top_k, self.timeline = str(path), fmt, top_k, timeline
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if fmt == "csv" and os.fstat(self.fd).st_size == 0:
            self._write(_csv_line(_csv_header(top_k, timeline)))

    def _write(self, line: str) -> None:
        data = line.encode("utf-8")
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def write(self, rec: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self._write(json.dumps(rec, ensure_ascii=False) + "\n")
            return
        row: list[Any] = [rec["path"], rec["status"], rec.get("reason") or "", _fmt_num(rec.get("duration"))]
        top = rec.get("top") or []
        for k in range(self.top_k):
            row += [top[k]["label"], _fmt_num(top[k]["prob"])] if k < len(top) else ["", ""]
        row += [rec.get("windows", 0), "; ".join(rec.get("notes") or [])]
        if self.timeline:
            row.append(json.dumps(rec.get("timeline") or [], ensure_ascii=False))
        self._write(_csv_line(row))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _fmt_num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def repair_tail(path: str | os.PathLike) -> int:
    """Truncate a trailing partial line (no newline) left by a killed writer; returns bytes removed."""
    path = str(path)
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        pos, keep = size, 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        fh.truncate(keep)
        logger.warning(
            "%s: removed a partial last line (%d bytes) left by an interrupted run", path, size - keep
        )
        return size - keep


def read_records(path: str | os.PathLike, fmt: str) -> Iterator[dict[str, Any]]:
    """Parse an output file (JSONL or CSV) into record dicts; unparsable lines are logged and skipped."""
    path = str(path)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", newline="") as fh:
        if fmt == "jsonl":
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s:%d: not a JSON line, ignored", path, n)
            return
        for row in csv.DictReader(fh):
            if not row.get("path"):
                continue
            top = []
            k = 1
            while f"label_{k}" in row:
                if row[f"label_{k}"]:
                    top.append({"label": row[f"label_{k}"], "prob": float(row[f"prob_{k}"])})
                k += 1
            rec: dict[str, Any] = {
                "path": row["path"],
                "status": row["status"],
                "reason": row.get("reason") or None,
                "duration": float(row["duration"]) if row.get("duration") else None,
                "top": top,
            }
            if row.get("timeline"):
                rec["timeline"] = json.loads(row["timeline"])
            yield rec


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_output_identity(out: str, checkpoint: str, fmt: str, top_k: int, timeline: bool, *, write: bool) -> None:
    """Refuse to resume ``out`` with another model or another CSV layout; record this run's identity.

    ``OUT.run.json`` beside the output holds the model file's sha256 and the settings that shape a line
    (format; for CSV also top-k and timeline, which fix its header). A rerun into an ``out`` that already
    holds lines must match them, or the file would silently mix two models' genres (or CSV rows under
    another header).
    """
    meta_path = out + ".run.json"
    ident = {"model_sha256": _file_sha256(checkpoint), "model": os.path.abspath(checkpoint), "format": fmt,
             "top_k": top_k, "timeline": timeline}  # fmt: skip
    has_lines = any(os.path.isfile(f) and os.path.getsize(f) > 0 for f in [out, *_part_files(out)])
    if has_lines and os.path.isfile(meta_path):
        old = json.loads(Path(meta_path).read_text())
        # a CSV's header fixes top-k and the timeline column; JSONL lines carry their own fields
        keys = ("model_sha256", "format", "top_k", "timeline") if fmt == "csv" else ("model_sha256", "format")
        diff = [k for k in keys if old.get(k) != ident[k]]
        if diff:
            what = "another model (" + old.get("model", "?") + ")" if "model_sha256" in diff else ", ".join(
                f"{k}={old.get(k)!r}" for k in diff
            )
            raise ValueError(
                f"{out} already holds results made with {what}; resuming would mix them. "
                "Choose another --out, or delete the file (and its .run.json) to start over."
            )
    if write:
        tmp = meta_path + ".tmp"
        Path(tmp).write_text(json.dumps(ident, indent=2))
        os.replace(tmp, meta_path)


def _part_files(out: str) -> list[str]:
    return sorted(glob.glob(glob.escape(out) + ".rank*.part"))


def _merge_parts(out: str, fmt: str, top_k: int, timeline: bool) -> int:
    """Append the lines of every ``out.rank*.part`` not yet in ``out`` to ``out``; remove the parts."""
    parts = _part_files(out)
    if not parts:
        return 0
    seen = {r["path"] for r in read_records(out, fmt)}
    writer = LineWriter(out, fmt, top_k, timeline)
    added = 0
    try:
        for part in parts:
            repair_tail(part)
            with open(part, encoding="utf-8", newline="") as fh:
                lines = fh if fmt == "jsonl" else _csv_body_lines(fh)
                for line in lines:
                    path = _line_path(line, fmt)
                    if path is None or path in seen:
                        continue
                    seen.add(path)
                    writer._write(line if line.endswith("\n") else line + "\n")
                    added += 1
    finally:
        writer.close()
    for part in parts:  # only after every line is safely in ``out``
        os.remove(part)
    return added


def _csv_body_lines(fh: io.TextIOBase) -> Iterator[str]:
    """Raw CSV records (a quoted field may hold a newline) of a file, header skipped."""
    reader_lines: list[str] = []
    first = True
    for line in fh:
        reader_lines.append(line)
        text = "".join(reader_lines)
        if text.count('"') % 2:  # inside a quoted field spanning lines
            continue
        reader_lines = []
        if first:
            first = False
            continue
        yield text


def _line_path(line: str, fmt: str) -> str | None:
    try:
        if fmt == "jsonl":
            return json.loads(line)["path"] if line.strip() else None
        row = next(csv.reader(io.StringIO(line)))
        return row[0] if row else None
    except (json.JSONDecodeError, KeyError, StopIteration, TypeError):
        return None


# --------------------------------------------------------------------------------------------- model


class CheckpointInputError(ValueError):
    """A checkpoint that cannot classify audio (e.g. trained on precomputed MSD features)."""


def _features_marker(cfg: Any) -> str | None:
    """Why a checkpoint's config (``config["model"]["features"]``, the ModelConfig contract) describes a
    feature-input (MSD) model, or None for a waveform model."""
    model = cfg.get("model") if isinstance(cfg, dict) else None
    feats = model.get("features") if isinstance(model, dict) else None
    names = feats.get("features") if isinstance(feats, dict) else None
    if isinstance(names, (list, tuple)) and "precomputed" in names:
        return 'model.features.features == ["precomputed"]'
    return None


def check_input_kind(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointInputError` for a checkpoint trained on precomputed (MSD) features.

    Reads the checkpoint lazily (``mmap``); unreadable files pass here and fail in ``load_model`` with its
    own specific error.
    """
    try:
        ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a checkpoint at all: load_model says why
        return
    if isinstance(ckpt, dict):
        reason = _features_marker(ckpt.get("config"))
        if reason:
            raise CheckpointInputError(_msd_message(os.fspath(path), reason))


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """TorchScript archives hold ``<root>/code/`` and ``<root>/constants.pkl``; ``torch.save`` files do not."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.split("/", 1)[-1].startswith("code/") or n.endswith("/constants.pkl") for n in names)


class Predictor:
    """``int16 windows [B, T]`` -> ``float32 probabilities [B, K]`` on the host, from a checkpoint or a
    TorchScript export. ``labels``, ``sample_rate`` (Hz) and ``segment_samples`` come from the file."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: torch.device | str,
        precision: str = "auto",
        channels_last: bool = True,
    ) -> None:
        self.path = str(path)
        self.device = torch.device(device)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"checkpoint {self.path} does not exist")
        self.torchscript = is_torchscript_file(self.path)
        if self.torchscript:
            extra = {TS_META_FILE: ""}
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", FutureWarning
                )  # "torch.jit is deprecated": still the portable format
                self.model = torch.jit.load(self.path, map_location=self.device, _extra_files=extra)
            if not extra[TS_META_FILE]:
                raise CheckpointInputError(
                    f"{self.path} is a TorchScript file without {TS_META_FILE}; export it with `python -m engine export`"
                )
            meta = json.loads(extra[TS_META_FILE])
            cfg = meta.get("config")
            reason = _features_marker(cfg)
            if reason:
                raise CheckpointInputError(_msd_message(self.path, reason))
        else:
            check_input_kind(self.path)
            from engine.checkpoint import load_model  # noqa: PLC0415 -- keeps `--help` and discovery light

            self.model, meta = load_model(self.path, self.device)
            self.model.eval()
            backbone = getattr(self.model, "backbone", None)
            if channels_last and isinstance(backbone, torch.nn.Module):
                # NHWC conv weights make the convs run NHWC (2x faster on CPU measured for the seed CNN, same
                # numbers to 1e-7); tensors that are not 4-D are left alone, so RNN backbones are unaffected
                backbone.to(memory_format=torch.channels_last)
        try:
            self.labels = [str(x) for x in meta["labels"]]
            self.sample_rate = int(meta["sample_rate"])
            self.segment_samples = int(meta["segment_samples"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointInputError(
                f"{self.path}: missing labels/sample_rate/segment_samples ({err})"
            ) from None
        self.dtype = _autocast_dtype(precision, self.device)
        if self.torchscript and self.dtype is not None:
            logger.info("TorchScript model: running in float32 (autocast does not apply to exported graphs)")
            self.dtype = None

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> np.ndarray:
        """``windows`` int16 ``(B, segment_samples)`` (pinned when on CUDA) -> probabilities ``(B, K)``."""
        x = windows.to(self.device, non_blocking=True)
        if self.torchscript:
            # exported graphs take float [-1, 1] and give probabilities
            probs = self.model(x.float() / PCM_SCALE)
        else:
            with autocast(self.device, self.dtype):
                logits = self.model(x)
            probs = torch.softmax(logits.float(), dim=-1)
        return probs.float().cpu().numpy()


def _msd_message(path: str, reason: str) -> str:
    return (
        f"{path} was trained on precomputed Million Song Dataset features ({reason}); it cannot classify "
        "audio files: MSD-trained models need MSD features, not audio. Use `python -m engine evaluate` "
        "on MSD feature shards, or classify audio with a model trained on waveform shards."
    )


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise ValueError(f"precision {precision!r} is not one of auto, bf16, fp16, fp32")
    return table[precision]


# --------------------------------------------------------------------------------------------- main loop


@dataclass
class _Track:
    path: str
    sum_probs: np.ndarray | None = None  # float64 (K,)
    seen: int = 0  # windows with probabilities
    expected: int = 0  # windows sent by the worker so far
    last: bool = False
    duration: float | None = None
    notes: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)


def _group_reason(reason: str | None) -> str:
    return (reason or "unknown").split(" (")[0]


def _summarize(out: str, fmt: str) -> dict[str, Any]:
    status: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    genres: Counter[str] = Counter()
    seconds = 0.0
    for rec in read_records(out, fmt):
        status[rec["status"]] += 1
        if rec["status"] == "ok":
            seconds += rec.get("duration") or 0.0
            if rec.get("top"):
                genres[rec["top"][0]["label"]] += 1
        else:
            reasons[_group_reason(rec.get("reason"))] += 1
    return {
        "files": sum(status.values()),
        "ok": status.get("ok", 0),
        "error": status.get("error", 0),
        "errors_by_reason": dict(reasons.most_common()),
        "genres": dict(genres.most_common()),
        "audio_hours": seconds / 3600.0,
    }


def default_num_workers(world_size: int = 1) -> int:
    """Decode workers per process: the CPU cores this process may use, shared among local ranks, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // max(1, world_size)))


def classify(
    checkpoint: str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    from_list: str | os.PathLike | None = None,
    fmt: str | None = None,
    top_k: int = 3,
    batch_size: int = 64,
    max_windows: int | None = None,
    pad: str = "zero",
    timeline: bool = False,
    precision: str = "auto",
    num_workers: int | None = None,
    device: str | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    channels_last: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Classify every audio file in ``paths`` (files, folders, plus ``from_list``) into ``out``.

    One line per input file (JSONL, or CSV when ``fmt="csv"`` or ``out`` ends in ``.csv``); files already
    in ``out`` are skipped (resume). Under ``accelerate launch`` each rank classifies ``index % world``
    of the stream into ``out.rank{r}.part`` and the main process merges the parts into ``out``.

    ``batch_size`` counts windows (of ``segment_samples`` from the checkpoint), ``precision`` is the autocast
    dtype (the feature front end always runs in float32), ``channels_last`` runs the backbone's convs NHWC,
    ``chunk_seconds`` bounds the audio a decode worker hands over at once (memory for long files).

    Returns the summary (computed over the whole output file on the main process): ``files``, ``ok``,
    ``error``, ``errors_by_reason``, ``genres`` (top-1 histogram), ``audio_hours``, plus this run's
    ``new``, ``skipped``, ``elapsed_s``, ``files_per_s``, ``audio_hours_per_s``, ``world_size``,
    ``precision``, ``device``.
    """
    from accelerate import PartialState  # noqa: PLC0415 -- heavy import, only for real runs

    out = os.fspath(out)
    fmt = fmt or ("csv" if out.lower().endswith(".csv") else "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"format {fmt!r} is not jsonl or csv")
    if top_k < 1 or batch_size < 1 or (max_windows is not None and max_windows < 1):
        raise ValueError("top_k, batch_size and max_windows must be >= 1")
    if pad not in ("zero", "loop"):
        raise ValueError(f"pad {pad!r} is not zero or loop")
    paths = [os.fspath(p) for p in paths]
    if from_list is not None:
        from_list = os.fspath(from_list)
        if not os.path.isfile(from_list):
            raise FileNotFoundError(f"--from-list {from_list} does not exist")
    if not paths and from_list is None:
        raise ValueError("no input: give files, folders or --from-list")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0: decode in this process), got {num_workers}")
    if device is not None:
        try:
            kind = torch.device(device).type
        except RuntimeError as err:
            raise ValueError(f"--device {device!r} is not a torch device ({err})") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available here (use --device cpu or leave it out)")

    # without CUDA (or with --device cpu) the processes of `accelerate launch` talk over gloo on the CPU
    cpu = (device is not None and torch.device(device).type == "cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    rank, world = state.process_index, state.num_processes
    dev = torch.device(device) if device else state.device
    predictor = Predictor(checkpoint, dev, precision, channels_last=channels_last)
    sr, seg, labels = predictor.sample_rate, predictor.segment_samples, predictor.labels
    top_k = min(top_k, len(labels))

    # resume: same model and line layout as the lines already there; the main process repairs torn last
    # lines, then every rank reads what is done
    check_output_identity(out, os.fspath(checkpoint), fmt, top_k, timeline, write=False)  # every rank: no hang
    state.wait_for_everyone()
    if state.is_main_process:
        check_output_identity(out, os.fspath(checkpoint), fmt, top_k, timeline, write=True)
        for f in [out, *_part_files(out)]:
            repair_tail(f)
    state.wait_for_everyone()
    done: set[str] = set()
    for f in [out, *_part_files(out)]:
        done.update(r["path"] for r in read_records(f, fmt))
    if done and state.is_main_process:
        logger.info("resuming: %d files already in %s are skipped", len(done), out)

    my_out = out if world == 1 else f"{out}.rank{rank}.part"
    writer = LineWriter(my_out, fmt, top_k, timeline)
    workers = (
        default_num_workers(state.num_processes if world > 1 else 1) if num_workers is None else num_workers
    )
    stream = DecodeStream(
        paths, from_list, sr, seg, rank=rank, world_size=world, done=done,
        max_windows=max_windows, pad=pad, chunk_seconds=chunk_seconds,
    )  # fmt: skip
    loader = DataLoader(
        stream, batch_size=None, collate_fn=_identity, num_workers=workers,
        prefetch_factor=2 if workers > 0 else None, persistent_workers=False,
    )  # fmt: skip

    pin = dev.type == "cuda"
    buf = torch.empty((batch_size, seg), dtype=torch.int16, pin_memory=pin)
    owners: list[tuple[int, int]] = []  # (track index, window start) of each row of buf
    tracks: dict[int, _Track] = {}
    written_paths: set[str] = set()
    stats = {"new": 0, "ok": 0, "error": 0, "seconds": 0.0}

    bar = None
    if progress and state.is_main_process:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(
            unit="file", desc=f"classify{f' (rank 0 of {world})' if world > 1 else ''}", dynamic_ncols=True
        )
    t0 = time.perf_counter()

    def emit(index: int, tr: _Track, status: str, reason: str | None) -> None:
        tracks.pop(index, None)
        if tr.path in written_paths:  # the same file named twice: one line
            return
        written_paths.add(tr.path)
        rec: dict[str, Any] = {"path": tr.path, "status": status, "reason": reason, "duration": tr.duration}
        if status == "ok":
            assert tr.sum_probs is not None and tr.seen > 0
            mean = tr.sum_probs / tr.seen
            order = np.argsort(-mean, kind="stable")[:top_k]
            rec["top"] = [{"label": labels[i], "prob": float(mean[i])} for i in order]
            rec["windows"] = tr.seen
            if tr.notes:
                rec["notes"] = tr.notes
            if timeline:
                rec["timeline"] = sorted(tr.timeline, key=lambda w: w["start"])
            stats["ok"] += 1
            stats["seconds"] += tr.duration or 0.0
        else:
            rec["duration"] = None
            stats["error"] += 1
        writer.write(rec)
        stats["new"] += 1
        if bar is not None:
            el = max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix_str(
                f"{stats['seconds'] / 3600 / el:.3g} audio-h/s, {stats['error']} errors", refresh=False
            )

    def run_batch() -> None:
        n = len(owners)
        if n == 0:
            return
        probs = predictor(buf[:n])  # (n, K)
        for row, (index, start) in enumerate(owners):
            tr = tracks.get(index)
            if tr is None:  # track failed later in its file; its windows are dropped
                continue
            p = probs[row].astype(np.float64)
            tr.sum_probs = p if tr.sum_probs is None else tr.sum_probs + p
            tr.seen += 1
            if timeline:
                k = int(np.argmax(p))
                tr.timeline.append({"start": round(start / sr, 3), "label": labels[k], "prob": float(p[k])})
        owners.clear()
        for index in [i for i, t in tracks.items() if t.last and t.seen == t.expected]:
            emit(index, tracks[index], "ok", None)

    try:
        for piece in loader:
            piece: Piece
            tr = tracks.setdefault(piece.index, _Track(piece.path))
            if piece.status != "ok":
                tr.last = True
                emit(piece.index, tr, "error", piece.reason)
                continue
            for w, start in zip(piece.windows, piece.starts.tolist()):
                buf[len(owners)].copy_(torch.from_numpy(w))
                owners.append((piece.index, start))
                tr.expected += 1
                if len(owners) == batch_size:
                    run_batch()
                    tr = tracks.get(piece.index, tr)
            if piece.last:
                tr.last, tr.duration, tr.notes = True, piece.duration, piece.notes
                if tr.seen == tr.expected and tr.expected > 0:
                    emit(piece.index, tr, "ok", None)
        run_batch()
        for index, tr in list(tracks.items()):  # only if a worker died mid-track: still one line per file
            logger.error("%s: decoding stopped before the end of the file", tr.path)
            emit(index, tr, "error", "incomplete: decoding stopped before the end of the file")
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0

    state.wait_for_everyone()
    run_stats = {
        "new": stats["new"],
        "skipped": len(done),
        "elapsed_s": elapsed,
        "files_per_s": stats["new"] / max(elapsed, 1e-9),
        "audio_hours_per_s": stats["seconds"] / 3600.0 / max(elapsed, 1e-9),
        "world_size": world,
        "rank": rank,
        "precision": predictor.precision,
        "device": str(dev),
        "num_workers": workers,
        "out": out,
    }
    if world > 1:
        # every rank's throughput counts: gather the new-line counts for the summary
        counts = torch.tensor([stats["new"], stats["seconds"]], dtype=torch.float64)
        gathered = _all_reduce_sum(counts, state)
        run_stats["new"] = int(gathered[0])
        run_stats["files_per_s"] = gathered[0].item() / max(elapsed, 1e-9)
        run_stats["audio_hours_per_s"] = gathered[1].item() / 3600.0 / max(elapsed, 1e-9)
    if not state.is_main_process:
        state.wait_for_everyone()
        return {**run_stats, "main": False}
    _merge_parts(out, fmt, top_k, timeline)
    summary = {**_summarize(out, fmt), **run_stats, "main": True}
    state.wait_for_everyone()
    return summary


def _all_reduce_sum(t: torch.Tensor, state: Any) -> torch.Tensor:
    import torch.distributed as dist  # noqa: PLC0415

    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        x = t.to(state.device) if backend == "nccl" else t
        dist.all_reduce(x)
        return x.cpu()
    return t


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine classify",
        description=(
            "Classify music files and folders with a trained checkpoint (or an exported TorchScript file). "
            "Writes exactly one line per input file -- status ok with the top-k genres, or error with the reason -- "
            "and resumes when rerun with the same --out. Multi-GPU: accelerate launch -m engine.classify ..."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "checkpoint", help="checkpoint .pt from training, or a TorchScript file from `engine export`"
    )
    p.add_argument("paths", nargs="*", help="audio files and/or folders (walked recursively)")
    p.add_argument("--from-list", metavar="FILE", help="text file with one path (file or folder) per line")
    p.add_argument("--out", required=True, help="output file (appended to; files already in it are skipped)")
    p.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        default=None,
        help="default: csv if --out ends in .csv, else jsonl",
    )
    p.add_argument("--top-k", type=int, default=3, help="genres per file")
    p.add_argument("--batch-size", type=int, default=64, help="windows per device batch")
    p.add_argument(
        "--max-windows",
        type=int,
        default=None,
        help="at most N windows per track, spread evenly (default: all)",
    )
    p.add_argument(
        "--pad",
        choices=["zero", "loop"],
        default="zero",
        help="how a track shorter than one window is filled",
    )
    p.add_argument(
        "--timeline", action="store_true", help="add per-window predictions (start s, top label, prob)"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="autocast dtype (auto: bf16 on GPU, fp32 on CPU)",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="decode worker processes per device (default: cores / local processes, <= 8)",
    )
    p.add_argument("--device", default=None, help="torch device (default: this process's accelerate device)")
    p.add_argument(
        "--chunk-seconds",
        type=float,
        default=DEFAULT_CHUNK_SECONDS,
        help="audio per decode piece (bounds memory for long files)",
    )
    p.add_argument(
        "--no-channels-last",
        action="store_true",
        help="keep the backbone's conv weights NCHW (default: NHWC)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['files']} files in {s['out']}: {s['ok']} ok, {s['error']} error "
        f"({s['new']} classified now, {s['skipped']} already done; world size {s['world_size']})",
        f"throughput: {s['files_per_s']:.2f} files/s, {s['audio_hours_per_s'] * 3600:.1f} audio-s/s "
        f"({s['audio_hours_per_s']:.3g} audio-h/s) on {s['device']} ({s['precision']}, {s['num_workers']} decode workers)",
    ]
    if s["errors_by_reason"]:
        lines.append("errors: " + ", ".join(f"{r}: {n}" for r, n in s["errors_by_reason"].items()))
    if s["genres"]:
        lines.append("genres: " + ", ".join(f"{g}: {n}" for g, n in s["genres"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        summary = classify(
            args.checkpoint, args.paths, args.out, from_list=args.from_list, fmt=args.format, top_k=args.top_k,
            batch_size=args.batch_size, max_windows=args.max_windows, pad=args.pad, timeline=args.timeline,
            precision=args.precision, num_workers=args.num_workers, device=args.device,
            chunk_seconds=args.chunk_seconds, channels_last=not args.no_channels_last,
            progress=not args.no_progress,
        )  # fmt: skip
    except (CheckpointInputError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary.get("main"):
        print(format_summary(summary))
        print(json.dumps({k: v for k, v in summary.items() if k != "main"}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
