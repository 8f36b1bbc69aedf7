"""Decoding and windowing for ``classify``: one file -> :class:`Piece` s of int16 model windows.

Runs in the DataLoader workers. :class:`DecodeStream` splits the input stream over ranks and workers;
:func:`decode_track` decodes a file with :func:`shards.audio.load_audio` (``librosa.load`` semantics,
resampled to the model rate), cuts it with the shared window policy (:mod:`shards.windows`) and hands the
windows over in pieces of at most ``chunk_seconds``, so memory stays bounded for hour-long files.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from engine.classify.inputs import iter_inputs
from shards.audio import AudioError, AudioInfo, exact_frames, load_audio, probe
from shards.format import to_pcm16
from shards.layouts import WalkError
from shards.outputs import printable_path
from shards.windows import fill_window, fit_length, window_starts

DEFAULT_CHUNK_SECONDS = 120.0  # audio per worker -> main piece; bounds memory for hour-long files
WHOLE_FILE_SECONDS = 600.0  # files up to this long are decoded in one read (exactly librosa.load) ...
WHOLE_FILE_SOURCE_SAMPLES = (
    32_000_000  # ... if frames x channels fit 128 MB of float32 (6 min at 44.1 kHz stereo)
)
CHUNK_SOURCE_SAMPLES = 8_000_000  # frames x channels per chunk read of a long file (32 MB of float32)
RESAMPLE_MARGIN_SECONDS = 0.05  # extra source audio read on both sides of a chunk (resampler edge effects)


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


@dataclass
class IgnoredFiles:
    """What the walk of the input stream passed over: non-audio files by :func:`shards.audio.ignored_key`.

    Every worker walks the whole stream; only the one that owns input 0 of rank 0 sends its counts, once,
    after its last piece (so a run, and a resumed run, counts each file once)."""

    counts: dict[str, int]


def decode_track(
    index: int,
    path: str,
    sample_rate: int,
    segment_samples: int,
    *,
    max_windows: int | None = None,
    pad: str = "loop",
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    whole_file_seconds: float = WHOLE_FILE_SECONDS,
) -> Iterator[Piece]:
    """Decode one file into :class:`Piece` s of at most ``chunk_seconds`` of windows each.

    Never raises for bad input: an :class:`AudioError` (even in the middle of a long file) ends the track
    with a ``last`` piece of status ``error`` and the reason. Files up to ``whole_file_seconds`` (and
    ``WHOLE_FILE_SOURCE_SAMPLES`` frames x channels) are decoded in one read (exactly ``librosa.load``);
    longer ones in chunks of at most ``chunk_seconds`` and ``CHUNK_SOURCE_SAMPLES``, aligned so that windows
    differ from the whole-file decode only by resampler rounding (a few int16 LSB). Windows and ``duration``
    follow the decoded length, not a header's estimate (Matroska/WebM, ASF, raw ADTS and MP3 headers say a
    little more or less): the chunked path settles the length first (:func:`shards.audio.exact_frames`), so
    a header that says too little loses no tail and one that says too much pads no silence.
    """
    try:
        info = probe(path)
        duration = info.frames / info.orig_sample_rate
        seg_src = segment_samples * info.orig_sample_rate / sample_rate  # source frames per window
        per_piece = int(  # windows per piece
            max(
                1,
                min(
                    chunk_seconds * sample_rate // segment_samples,
                    CHUNK_SOURCE_SAMPLES // (seg_src * info.channels),
                ),
            )
        )
        if duration <= whole_file_seconds and info.frames * info.channels <= WHOLE_FILE_SOURCE_SAMPLES:
            yield from _whole_file(index, path, sample_rate, segment_samples, max_windows, pad, per_piece)
        else:
            info = exact_frames(path, info)  # the windows' plan needs the true length up front
            duration = info.frames / info.orig_sample_rate
            yield from _chunked(
                index, path, info, sample_rate, segment_samples, max_windows, per_piece, duration, pad
            )
    except AudioError as err:
        yield error_piece(index, path, err.reason, segment_samples)
    except (OSError, ValueError, RuntimeError, MemoryError) as err:  # decoder bugs must not stop the job
        yield error_piece(index, path, f"undecodable ({type(err).__name__}: {err})", segment_samples)


def decode_to_end(path: str, sample_rate: int, segment_samples: int, **kw: Any) -> None:
    """Decode ``path`` as a worker does and drop the windows: run alone (:func:`shards.procs.run_alone`) to
    learn whether the file takes its process down."""
    for _ in decode_track(0, path, sample_rate, segment_samples, **kw):
        pass


def _peak(wins: np.ndarray) -> int:
    return int(np.abs(wins.astype(np.int32)).max()) if wins.size else 0


def _whole_file(
    index: int, path: str, sample_rate: int, segment_samples: int, max_windows: int | None, pad: str,
    per_piece: int,
) -> Iterator[Piece]:  # fmt: skip
    wave, info = load_audio(path, sample_rate)  # exactly librosa.load(path, sr, mono=True)
    duration = info.frames / info.orig_sample_rate  # the frames decoded, not the header's estimate
    notes: list[str] = []
    if wave.size < segment_samples:
        notes.append(f"short: {wave.size / sample_rate:.2f} s {pad}-padded to one window")
    wave = fill_window(wave, segment_samples, pad)
    starts = window_starts(wave.size, segment_samples, max_windows=max_windows)  # decoded length, not the header's
    pcm = to_pcm16(wave)
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
    per_piece: int, duration: float, pad: str = "loop",
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
        pcm = to_pcm16(wave[max(0, skip) :])
        del wave
        keep = [s for s in g if s - g[0] < pcm.size] or g[:1]  # windows past a short stream's end are dropped
        # a stream shorter than one window fills it as --pad says; a cut-short last window of a longer one: zeros
        fill = pad if len(starts) == 1 else "zero"
        wins = np.stack(
            [fit_length(pcm[s - g[0] : s - g[0] + segment_samples], segment_samples, fill) for s in keep]
        )
        peak = max(peak, _peak(wins))
        last = gi == len(groups) - 1
        if last and peak == 0:
            notes.append("silence")
        yield Piece(index, path, wins, np.asarray(keep, dtype=np.int64), last, duration=duration,
                    notes=notes if last else [])  # fmt: skip


def error_piece(index: int, path: str, reason: str, segment_samples: int) -> Piece:
    """The one piece of a file that gives no windows: status ``error`` and the reason."""
    empty = np.zeros((0, segment_samples), dtype=np.int16)
    return Piece(index, path, empty, np.zeros(0, dtype=np.int64), True, status="error", reason=reason)


class DecodeStream(IterableDataset):
    """The input stream of this rank, decoded into :class:`Piece` s, split across DataLoader workers.

    Input ``i`` belongs to rank ``i % world_size`` and, within it, to worker ``(i // world_size) %
    num_workers`` -- a deterministic split, so every file is decoded by exactly one worker of one rank.
    Paths in ``done`` (already in the output, for resume) are skipped. The owner of input 0 of rank 0 ends
    its part with one :class:`IgnoredFiles`: the walk's count of the non-audio files it passed over. With
    ``markers`` (a folder), each worker notes there the file it is about to decode (:func:`read_markers`),
    so that a worker's death can be traced to its file.
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
        pad: str = "loop",
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
        markers: str | None = None,
    ) -> None:
        super().__init__()
        self.paths, self.from_list = paths, from_list
        self.sample_rate, self.segment_samples = sample_rate, segment_samples
        self.rank, self.world_size, self.done = rank, world_size, done
        self.max_windows, self.pad, self.chunk_seconds = max_windows, pad, chunk_seconds
        self.markers = markers

    def __iter__(self) -> Iterator[Piece]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        stride = self.world_size * nw
        mine = self.rank + self.world_size * wid
        ignored: Counter[str] = Counter()
        for i, item in enumerate(iter_inputs(self.paths, self.from_list, ignored=ignored)):
            path = item.path if isinstance(item, WalkError) else item
            if i % stride != mine or printable_path(path) in self.done:  # output lines hold printable paths
                continue
            if isinstance(item, WalkError):  # a folder the walk could not list: its own error line
                yield error_piece(i, path, item.reason, self.segment_samples)
                continue
            if self.markers is not None:
                _mark(self.markers, f"rank{self.rank}-worker{wid}", i, path)
            yield from decode_track(
                i, path, self.sample_rate, self.segment_samples,
                max_windows=self.max_windows, pad=self.pad, chunk_seconds=self.chunk_seconds,
            )  # fmt: skip
        if mine == 0:
            yield IgnoredFiles(dict(ignored))


def _mark(folder: str, name: str, index: int, path: str) -> None:
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(f"{index}\t{path}")
    os.replace(tmp, os.path.join(folder, name))  # whole or absent, whenever the worker dies


def read_markers(folder: str) -> list[tuple[int, str]]:
    """``(index, path)`` of the file each worker noted last (the one it was decoding, or had just sent)."""
    found = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        with open(os.path.join(folder, name), encoding="utf-8", errors="surrogateescape") as fh:
            index, path = fh.read().split("\t", 1)
        found.append((int(index), path))
    return found


def pieces_as_they_come(x: Any) -> Any:
    """The DataLoader's ``collate_fn``: a :class:`Piece` is already its own batch (module level: picklable)."""
    return x
