"""The second decoder: PyAV (FFmpeg's libraries, bundled in the ``av`` wheel) for what libsndfile cannot open.

AAC and ALAC in MP4/M4A, Opus, WMA, WebM/Matroska, AC-3, AMR, APE, WavPack, ... -- the first audio stream
of any container FFmpeg demuxes, video streams ignored. :func:`read` returns the file's own samples
(``(frames, channels)`` float32 at its own rate, integer PCM scaled as libsndfile scales it); downmixing and
resampling stay in :mod:`shards.audio`, shared with the soundfile path.

What the samples are:

- FFmpeg's decoders, with encoder priming and padding removed as FFmpeg removes them (MP4 edit lists,
  Ogg pre-skip and end trimming, Matroska codec delay). The MP4 edit list's *end* is applied here too:
  the bundled FFmpeg 8.1 libraries leave the AAC encoder's trailing padding in, the ``ffmpeg`` 9 command
  drops it.
- Opus is decoded by libopus, the reference decoder -- what libsndfile (and so ``librosa.load``) uses for
  ``.opus`` -- so the same stream gives the same samples in ``.opus``, ``.webm`` or ``.mka``. FFmpeg's own
  native Opus decoder (the ``ffmpeg`` command's default) differs from libopus by up to ~1e-4.
- Ranged reads seek: ``read(path, start, stop)`` seeks to ``start`` minus :data:`SEEK_PREROLL_S` (a
  decoder needs a few frames after a seek to converge), decodes and drops what lies before ``start``.
  Positions come from the container's timestamps: sample-exact where the time base resolves samples (MP4,
  Ogg); Matroska/WebM and ASF stamp whole milliseconds, and a stream of constant-size frames (Opus, WMA,
  fixed-block FLAC) is placed exactly by snapping to its frame lattice, others to within a millisecond.

Nothing here blocks forever: FFmpeg's interrupt callback bounds opening (:data:`OPEN_TIMEOUT_S`) and each
packet read (:data:`READ_TIMEOUT_S`), and a decode stops with an error once it runs past a wall-clock
budget proportional to the audio asked for. Every failure is a :class:`DecodeError` with a short reason.
"""

from __future__ import annotations

import functools
import math
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

try:
    import av
except ImportError:  # a declared dependency; without it (a bare GPU box, say) libsndfile formats still decode
    av = None  # and each file that needs FFmpeg gets :data:`NO_PYAV` as its reason (see _open)

OPEN_TIMEOUT_S = 20.0  # avformat_open_input + avformat_find_stream_info
READ_TIMEOUT_S = 20.0  # one av_read_frame
SEEK_PREROLL_S = 0.5  # decoded and dropped before a ranged read's start (Opus asks 80 ms, AAC one frame)
DECODE_BUDGET_S = 60.0  # wall-clock allowance of a read, plus DECODE_BUDGET_PER_S per second of audio
DECODE_BUDGET_PER_S = 0.5  # a healthy decode runs 50-500x real time; this is 2x
MAX_ERROR_RATE = 2 / 3  # share of undecodable packets that fails a file (the ffmpeg command's default)
MAX_SILENT_PACKETS = 20000  # packets in a row that give no audio before a file is declared empty
# MP4 sample-entry types of protected audio: FairPlay ('drms'/'drmi', iTunes .m4p) and Common Encryption
DRM_CODEC_TAGS = {"drms": "iTunes FairPlay", "drmi": "iTunes FairPlay", "enca": "Common Encryption"}
MOV_FORMATS = ("mov", "mp4", "m4a", "3gp")
# demuxers whose seeking lands on stamped packets; raw elementary streams (ADTS AAC, AC-3, DTS, AMR...) carry
# parser-made timestamps that drift, so ranged reads of those decode from the start and drop the head
SEEK_FORMATS = {"mov", "mp4", "m4a", "ogg", "matroska", "webm", "asf", "caf", "wv", "ape", "tta", "mpc8"}

NO_PYAV = "needs FFmpeg through PyAV, which is not installed (pip install av)"

_SCALE = {np.dtype(np.int16): 1.0 / 32768, np.dtype(np.int32): 1.0 / 2147483648}  # as libsndfile scales


def _has_libopus() -> bool:
    if av is None:
        return False
    try:
        av.Codec("libopus", "r")
    except Exception:  # a PyAV build without libopus: FFmpeg's native decoder then
        return False
    return True


_LIBOPUS = _has_libopus()


class DecodeError(Exception):
    """FFmpeg could not give audio; ``reason`` is short and specific (``shards.audio`` adds the path)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class StreamInfo:
    sample_rate: int  # Hz
    channels: int
    frames: int  # samples per channel: exact from MP4 edit lists and Ogg, else the header's duration
    codec: str  # FFmpeg's codec name, e.g. "aac", "alac", "opus", "wmav2"
    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "ogg", "matroska,webm"


def mp4_structure_problem(path: str | os.PathLike) -> str | None:
    """Why an ISO-BMFF file cannot be opened, from its top-level boxes (no 'moov', cut short), else None."""
    size = os.path.getsize(path)
    seen: set[bytes] = set()
    pos = 0
    with open(path, "rb") as fh:
        while pos + 8 <= size and len(seen) < 64:
            fh.seek(pos)
            head = fh.read(16)
            n, kind = struct.unpack(">I4s", head[:8])
            if n == 1 and len(head) == 16:
                n = struct.unpack(">Q", head[8:16])[0]
            elif n == 0:
                n = size - pos
            if n < 8:
                return "corrupt MP4 (a box with an invalid size)"
            seen.add(kind)
            if pos + n > size:
                if kind == b"moov":
                    return f"truncated MP4: the 'moov' atom is cut short ({size} of {pos + n} bytes present)"
                if b"moov" not in seen:
                    return (
                        f"truncated or incomplete MP4: no 'moov' atom (the file ends at {size} bytes inside "
                        f"'{kind.decode('latin-1')}', which declares {pos + n}; a cut download or copy?)"
                    )
                return None
            pos += n
    if b"moov" not in seen:
        return "truncated or incomplete MP4: no 'moov' atom (the index that locates the audio is missing)"
    return None


def _open(path: str) -> av.container.InputContainer:
    if av is None:
        raise DecodeError(NO_PYAV)
    try:
        return av.open(path, "r", timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S), metadata_errors="replace")
    except av.error.ExitError:
        raise DecodeError(f"timed out opening (no progress within {OPEN_TIMEOUT_S:g} s)") from None
    except av.error.InvalidDataError:
        raise DecodeError("not audio or unsupported format (FFmpeg finds no valid stream)") from None
    except av.error.EOFError:
        # demuxers that read up to the first audio packet while opening (Ogg) meet the end of the file
        raise DecodeError(
            "no audio frames (the file ends before any audio data: empty or truncated)"
        ) from None
    except av.error.PermissionError:
        raise DecodeError("unreadable: permission denied") from None
    except av.error.FFmpegError as err:
        raise DecodeError(f"undecodable (FFmpeg: {err.strerror})") from None


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    streams = container.streams.audio
    if not streams:
        others = sorted({s.type for s in container.streams})
        raise DecodeError("no audio stream" + (f" (only {', '.join(others)})" if others else ""))
    st = streams[0]
    cc = st.codec_context
    if cc is None:  # PyAV builds a context only for codecs FFmpeg can decode
        raise DecodeError("unsupported codec (FFmpeg has no decoder for this audio stream)")
    try:
        tag = cc.codec_tag.strip("\x00 ")
    except (UnicodeDecodeError, ValueError):
        tag = ""
    if tag in DRM_CODEC_TAGS:
        raise DecodeError(f"DRM-protected: cannot be decoded ({DRM_CODEC_TAGS[tag]}, '{tag}')")
    if not cc.sample_rate or cc.sample_rate <= 0:
        raise DecodeError(f"unsupported or corrupt stream ({cc.name}: no sample rate)")
    return st


def _frames_estimate(container: av.container.InputContainer, st: av.audio.stream.AudioStream) -> int:
    sr = st.codec_context.sample_rate
    if st.duration is not None and st.time_base is not None:
        frames = int(round(st.duration * st.time_base * sr))
        if st.codec_context.name == "opus" and container.format.name == "ogg":
            extradata = st.codec_context.extradata or b""
            if len(extradata) >= 12:  # OpusHead: the Ogg duration counts the pre-skip, the decode does not
                frames -= struct.unpack("<H", extradata[10:12])[0]
        return frames
    if container.duration is not None:
        return int(round(container.duration * sr / av.time_base))
    return 0


def _ffmpeg_errors_as_reasons(fn):
    """FFmpeg errors past opening (a demuxer failing mid-probe, a seek refused) become reasons too."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DecodeError:  # ours already (first, so that no av.error is looked up without PyAV)
            raise
        except av.error.ExitError:
            raise DecodeError(f"timed out reading (no data within {READ_TIMEOUT_S:g} s)") from None
        except av.error.FFmpegError as err:
            raise DecodeError(f"undecodable (FFmpeg: {err.strerror or err})") from None

    return wrapper


@_ffmpeg_errors_as_reasons
def probe(path: str | os.PathLike) -> StreamInfo:
    """Open the file's first audio stream and read its parameters (no decoding beyond FFmpeg's probing)."""
    with _open(os.fspath(path)) as container:
        st = _audio_stream(container)
        cc = st.codec_context
        frames = _frames_estimate(container, st)
        if frames <= 0:
            frames = _count_frames(container, st)
        return StreamInfo(int(cc.sample_rate), int(cc.channels), int(frames), cc.name, container.format.name)


def _count_frames(container: av.container.InputContainer, st: av.audio.stream.AudioStream) -> int:
    """Samples per channel from packet durations, for streams whose header states no duration."""
    total = 0
    deadline = time.monotonic() + DECODE_BUDGET_S
    try:
        for pkt in container.demux(st):
            if pkt.duration:
                total += pkt.duration
            if time.monotonic() > deadline:
                raise DecodeError(f"timed out reading packet durations ({DECODE_BUDGET_S:g} s)")
    except av.error.FFmpegError:
        pass  # a damaged tail: the packets before it count
    return int(round(total * st.time_base * st.codec_context.sample_rate)) if st.time_base else 0


def _decoder(st: av.audio.stream.AudioStream) -> av.CodecContext:
    """The stream's decoder, or a fresh libopus one for Opus (see the module docstring)."""
    cc = st.codec_context
    if cc.name == "opus" and _LIBOPUS:
        dec = av.CodecContext.create("libopus", "r")
        dec.extradata = cc.extradata
        dec.sample_rate = cc.sample_rate
        dec.layout = cc.layout
        dec.options = {"request_sample_fmt": "flt"}  # libopus' float API, as libsndfile calls it
        return dec
    return cc


class _Reader:
    """One pass over a stream from the current demuxer position, keeping samples ``[start, stop)``."""

    def __init__(self, container, st, dec, start: int, stop: int | None, budget_s: float) -> None:
        self.container, self.st, self.dec = container, st, dec
        self.start, self.stop = start, stop
        self.deadline = time.monotonic() + budget_s
        self.budget_s = budget_s
        self.parts: list[list[np.ndarray]] = []  # per frame, one (n,) view per channel, decoder's type
        self.packets = self.errors = 0
        self.mixed = False  # channel count or sample type changed mid-stream
        self.unplaceable = False  # a frame after a seek had no timestamp to place it by
        self.sample_rate = st.codec_context.sample_rate

    def run(self, pos: int | None, origin: _Origin | None = None) -> int | None:
        """Decode until ``stop``; ``pos`` is the next sample's position (None: take it from the first frame's
        pts relative to ``origin``). Returns the first frame's position (None if nothing decoded)."""
        first_pos = None
        silent = 0
        start, stop, sr, parts = self.start, self.stop, self.sample_rate, self.parts
        demux = self.container.demux(self.st)
        while True:
            try:
                pkt = next(demux)
            except StopIteration:
                break
            except av.error.ExitError:
                raise DecodeError(f"timed out reading (no data within {READ_TIMEOUT_S:g} s)") from None
            except av.error.FFmpegError as err:
                if self.parts:  # cut short (a truncated file): keep what was read, as ffmpeg does
                    break
                raise DecodeError(f"corrupt or truncated (FFmpeg: {err.strerror})") from None
            if self.packets % 32 == 0 and time.monotonic() > self.deadline:
                raise DecodeError(
                    f"decoding stopped after {self.budget_s:.0f} s (corrupt or pathological stream)"
                )
            is_flush = pkt.size == 0
            self.packets += not is_flush
            try:
                frames = self.dec.decode(None if is_flush else pkt)
            except av.error.EOFError:
                frames = []
            except av.error.FFmpegError:
                self.errors += 1  # the ffmpeg command skips a bad packet and goes on; so do we
                continue
            if not frames:
                silent += 1
                if silent > MAX_SILENT_PACKETS:
                    break
                continue
            silent = 0
            for fr in frames:
                if fr.sample_rate != sr:
                    raise DecodeError(f"sample rate changes mid-stream ({sr} -> {fr.sample_rate} Hz)")
                if pos is None:
                    pos = self._place(fr, pkt, frames, origin)
                    if pos is None:
                        self.unplaceable = True  # no usable timestamp: the caller decodes from the start
                        return None
                if first_pos is None:
                    first_pos = pos
                    if pos > start:
                        return first_pos  # the seek landed after the start: the caller seeks earlier
                n = fr.samples
                end = pos + n
                if pos >= start and (stop is None or end <= stop):
                    part = _planar(fr)  # the whole frame (the common case)
                else:
                    a, b = max(start, pos), end if stop is None else min(end, stop)
                    part = [c[a - pos : b - pos] for c in _planar(fr)] if b > a else None
                if part is not None:
                    if parts and (len(part) != len(parts[0]) or part[0].dtype != parts[0][0].dtype):
                        self.mixed = True
                    parts.append(part)
                pos = end
                if stop is not None and pos >= stop:
                    return first_pos
        return first_pos

    def _place(self, fr, pkt, frames, origin: _Origin | None) -> int | None:
        """Position of the first frame decoded after a seek, from timestamps (relative to ``origin``).

        A coarse stamp (Matroska's and ASF's 1 ms, rounded or truncated) is off the true position by up to
        a tick; snapping to the frame lattice of a constant-frame stream takes it back to the exact sample
        when a lattice point lies within that tick (a snap never moves a position further than the stamp's
        own error, and frames of more than 4 ticks leave one candidate).
        """
        if origin is None:
            return None
        tb, sr = self.st.time_base, self.sample_rate
        tick = tb * sr  # samples per timestamp unit

        def snap(est):
            if origin.lattice is not None and tick >= 2:
                second, size = origin.lattice
                on = second + round((est - second) / size) * size
                if size > 4 * tick and abs(on - est) <= tick + 1:
                    return on
            return est

        if self.dec is self.st.codec_context:
            # FFmpeg's decoders stamp frames with their first sample's pts (skips already accounted)
            if fr.pts is None:
                return None
            return int(round(snap((fr.pts - origin.pts) * tb * sr)))
        # libopus, created here, knows no time base: its frames carry the packet's pts unchanged, and a
        # fresh decoder drops the pre-skip from its first packet's head, so the frame starts where the packet
        # does plus what was dropped (libopus gives one frame per packet, no delay)
        if pkt.pts is None or not pkt.duration or len(frames) != 1:
            return None
        start = snap((pkt.pts - origin.pts) * tb * sr)
        return int(round(start + pkt.duration * tb * sr)) - fr.samples

    def result(self) -> np.ndarray:
        if self.errors and self.errors > MAX_ERROR_RATE * max(1, self.packets):
            raise DecodeError(f"corrupt stream: {self.errors} of {self.packets} packets could not be decoded")
        if not self.parts:
            extra = f"; {self.errors} of {self.packets} packets undecodable" if self.errors else ""
            raise DecodeError(f"no audio frames decoded (empty or truncated stream{extra})")
        return _to_float(self.parts, self.mixed)


_DTYPES = {"flt": np.float32, "dbl": np.float64, "s16": np.int16, "s32": np.int32, "u8": np.uint8,
           "s64": np.int64}  # fmt: skip


def _planar(fr: av.AudioFrame) -> list[np.ndarray]:
    """A frame's samples as one 1-D view per channel (zero-copy views of FFmpeg's planes; a packed frame's
    interleaved samples are strided views). ``frame.to_ndarray`` stacks planes: a copy per frame."""
    name = fr.format.name
    dtype = _DTYPES[name.rstrip("p")]
    n = fr.samples
    if fr.format.is_planar:
        return [np.frombuffer(plane, dtype, count=n) for plane in fr.planes]
    ch = len(fr.layout.channels)
    flat = np.frombuffer(fr.planes[0], dtype, count=n * ch)
    return [flat[c::ch] for c in range(ch)]


def _to_float(parts: list[list[np.ndarray]], mixed: bool = False) -> np.ndarray:
    """Concatenate per-channel parts into float32 ``(frames, channels)``; when ``mixed``, a mid-stream
    change of the channel count (some broadcast AAC) is met by averaging every part to mono first."""
    if mixed and len({len(p) for p in parts}) > 1:
        parts = [[np.mean([_scaled(c) for c in p], axis=0, dtype=np.float32)] for p in parts]
    if mixed:
        parts = [[_scaled(c) for c in p] for p in parts]
    channels = len(parts[0])
    out = np.empty((channels, sum(p[0].size for p in parts)), dtype=parts[0][0].dtype)
    for c in range(channels):
        np.concatenate([p[c] for p in parts], out=out[c])
    return _scaled(out).T


def _scaled(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.float32:
        return x
    if x.dtype in _SCALE:
        return (x * np.float32(_SCALE[x.dtype])).astype(np.float32)  # int16 * f32 -> f32, as libsndfile
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    return x.astype(np.float32)


def _budget(seconds: float | None) -> float:
    return DECODE_BUDGET_S + DECODE_BUDGET_PER_S * (seconds or 0.0)


@_ffmpeg_errors_as_reasons
def read(
    path: str | os.PathLike, frame_range: Callable[[int], tuple[int, int | None]] = lambda sr: (0, None)
) -> tuple[np.ndarray, StreamInfo]:
    """Source frames ``[start, stop)`` of the first audio stream: float32 ``(frames, channels)`` and its info.

    ``frame_range(sample_rate) -> (start, stop)`` picks the frames once the stream's rate is known
    (``stop=None``: to the end). Seeks when ``start`` is past :data:`SEEK_PREROLL_S`, so a slice of an
    hour-long file costs about what the slice does. Raises :class:`DecodeError`.
    """
    path = os.fspath(path)
    with _open(path) as container:
        st = _audio_stream(container)
        sr = st.codec_context.sample_rate
        n_header = _frames_estimate(container, st)
        info = StreamInfo(int(sr), int(st.codec_context.channels), n_header, st.codec_context.name,
                          container.format.name)  # fmt: skip
        start, stop = frame_range(sr)
        header_s = n_header / sr
        want_s = header_s - start / sr if stop is None else (stop - start) / sr
        if container.format.name.startswith(MOV_FORMATS) and st.duration:
            # the edit list's end (see the module docstring); positions count from the stream's start
            end = int(round(st.duration * st.time_base * sr))
            stop = end if stop is None else min(stop, end)
        if stop is not None and stop <= start:
            raise DecodeError("no audio frames decoded (the range starts at or past the end of the stream)")
        preroll = int(SEEK_PREROLL_S * sr)
        if start > preroll and SEEK_FORMATS & set(container.format.name.split(",")):
            got = _read_seeking(container, st, start, stop, preroll, _budget(want_s))
            if got is not None:
                return got, info
            # no usable timestamps after a seek: decode from the start after all
            return _read_from_start(path, start, stop, _budget(header_s)), info
        dec = _decoder(st)
        reader = _Reader(container, st, dec, start, stop, _budget(want_s + start / sr))
        reader.run(0)
        return reader.result(), info


def _read_from_start(path: str, start: int, stop: int | None, budget_s: float) -> np.ndarray:
    with _open(path) as container:
        st = _audio_stream(container)
        dec = _decoder(st)
        reader = _Reader(container, st, dec, start, stop, budget_s)
        reader.run(0)
        return reader.result()


@dataclass
class _Origin:
    pts: int  # pts of the stream's first output sample (priming already dropped)
    lattice: tuple[int, int] | None  # (position of the 2nd frame, frame size) when the first frames agree


def _origin(container, st, frames_wanted: int = 6) -> _Origin | None:
    """Where the stream starts, and its frame lattice, from FFmpeg's own decoder on the first packets.

    Containers that stamp packets in coarse ticks (Matroska/WebM and ASF: 1 ms) place a frame after a seek
    only to within a tick; a stream of constant-size frames (Opus 20 ms, WMA 2048, fixed-block FLAC) is
    placed exactly by snapping to that lattice (see :meth:`_Reader._place`).
    """
    cc = st.codec_context
    first_pts, sizes = None, []
    for pkt in container.demux(st):
        try:
            frames = cc.decode(None if pkt.size == 0 else pkt)
        except av.error.FFmpegError:
            continue
        for fr in frames:
            if first_pts is None:
                if fr.pts is None:
                    return None
                first_pts = fr.pts
            sizes.append(fr.samples)
        if len(sizes) >= frames_wanted or pkt.size == 0:
            break
    if first_pts is None:
        return None
    rest = sizes[1:-1] if len(sizes) < frames_wanted else sizes[1:]  # the last may be a short final frame
    lattice = (sizes[0], rest[0]) if len(rest) >= 3 and len(set(rest)) == 1 else None
    return _Origin(first_pts, lattice)


def _read_seeking(container, st, start: int, stop: int | None, preroll: int, budget_s: float):
    """Seek to ``start - preroll`` (earlier if the demuxer lands late) and read; None if it cannot."""
    origin = _origin(container, st)
    if origin is None:
        return None
    sr = st.codec_context.sample_rate
    tb = st.time_base
    target = start - preroll
    for _ in range(3):
        ts = origin.pts + math.floor(Fraction(target, sr) / tb)
        try:
            container.seek(int(ts), stream=st, backward=True)  # flushes the stream's decoder
        except av.error.FFmpegError:
            return None
        dec = _decoder(st)  # a fresh libopus context, or FFmpeg's, flushed by the seek
        reader = _Reader(container, st, dec, start, stop, budget_s)
        first = reader.run(None, origin)
        if first is None:
            if reader.unplaceable or reader.errors:
                return None
            # the demuxer found nothing from the seek point on: the range lies past the stream's end
            raise DecodeError("no audio frames decoded (the range starts past the end of the stream)")
        if first <= start:
            return reader.result()
        target -= max(preroll, 2 * (first - start))
        if target <= 0:
            return None
    return None
