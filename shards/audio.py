"""Decode any audio file to mono float32 at a target rate, the way ``librosa.load(path, sr, mono=True)`` does.

Two decoders, chosen by the file's content (:mod:`shards.sniff`), not its name:

- soundfile (libsndfile) for WAV, FLAC, Ogg Vorbis, MP3, AIFF, AU -- what ``librosa.load`` itself uses.
  It is the faster decoder for those (raw decode CPU time of PyAV against libsndfile: MP3 0.7x, FLAC
  0.6-0.75x, WAV 0.15x; ``benchmarks/formats.py``) except Ogg Vorbis, where FFmpeg's decoder is 1.3-1.8x
  faster but keeps up to a block of padding at the end of single-page streams (a 0.7-s clip decodes 33
  samples longer than libsndfile and ``librosa.load`` say): exact lengths win there;
- PyAV (:mod:`shards.ffmpeg_decode`) for what libsndfile cannot decode (AAC/ALAC in MP4/M4A, WMA, WebM and
  Matroska, AC-3, AMR, APE, WavPack, ...), for Opus (libopus through PyAV: 1.6x faster than libsndfile's,
  same samples within 1.2e-7), and for any file libsndfile refuses whose content is a known audio format.

Either way channels are averaged directly, soxr resamples at HQ quality and the length is fixed to
``ceil(frames * sr / orig_sr)`` -- librosa's own steps, without its import cost. Every failure is an
:class:`AudioError` whose ``reason`` names what is wrong with the file, so callers can skip and report
instead of crashing. :func:`is_audio_file` and :func:`ignored_summary` are the one place where folder
walkers decide what is audio and say what they left out.
"""

from __future__ import annotations

import math
import os
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from shards import ffmpeg_decode
from shards.sniff import Sniff, sniff

# names that say "audio": libsndfile's formats, then what FFmpeg decodes that music libraries hold
# (iTunes AAC/ALAC and audiobooks, protected .m4p so that it is reported, podcasts, web downloads, rips)
AUDIO_EXTENSIONS = (
    ".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".snd",
    ".m4a", ".m4b", ".m4p", ".m4r", ".mp4", ".aac", ".adts", ".opus", ".webm", ".mka", ".mkv",
    ".wma", ".asf", ".ac3", ".eac3", ".dts", ".amr", ".awb", ".3gp", ".3ga", ".ape", ".wv", ".caf",
    ".aifc", ".wave", ".w64", ".rf64", ".mp2", ".mpga", ".spx", ".tta", ".mpc", ".dsf", ".dff", ".ra",
)  # fmt: skip
# content libsndfile decodes, and decodes faster than PyAV (benchmarks/formats.py); "unknown" content goes
# to libsndfile too, which recognises a few formats no signature here names
_SOUNDFILE_KINDS = {"wav", "w64", "aiff", "au", "flac", "ogg-vorbis", "ogg-flac", "mp3", "id3", "caf",
                    "8svx", "voc", "unknown"}  # fmt: skip
# libsndfile's frame counts that come from a header estimate (MP3 without a Xing/LAME frame) -- and "id3",
# whatever follows the tag; PyAV's exact counts come from these demuxers (MP4 edit lists, Ogg granules,
# FLAC STREAMINFO), the others' from a duration field or the bitrate
_ESTIMATED_SOUNDFILE_KINDS = {"mp3", "id3", "unknown"}
_EXACT_AV_DEMUXERS = {"mov", "mp4", "m4a", "ogg", "flac"}
# reasons from PyAV that say more than libsndfile's "not audio or unsupported format"
_SPECIFIC_AV_REASONS = ("unsupported codec", "DRM-protected", "no audio stream", ffmpeg_decode.NO_PYAV)


class AudioError(Exception):
    """A file that cannot give audio; ``reason`` is short and specific (it lands in manifests and reports)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class AudioInfo:
    orig_sample_rate: int  # Hz, of the file
    channels: int
    frames: int  # samples per channel in the file
    # frames is what a whole-file decode gives (WAV/FLAC/AIFF, MP4 edit lists, Ogg granules); False: the
    # header's estimate (Matroska/WebM, ASF, raw ADTS/AC-3, MP3), a little over or under -- see exact_frames
    exact: bool = True


def is_audio_name(path: str | os.PathLike) -> bool:
    """True for a file name with an audio extension (case-insensitive), not hidden, not AppleDouble ``._*``."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS)


def is_audio_file(path: str | os.PathLike) -> bool:
    """True when the name says audio (:func:`is_audio_name`) or, for other names, the content does.

    The content check reads the file's first 4 KiB (:func:`shards.sniff.sniff`) and accepts only formats
    that are audio by themselves (WAV, FLAC, Ogg audio, MP3/ADTS frames, iTunes-branded MP4, ...); an MP4,
    Matroska or ASF file of unknown purpose counts as audio only by name. Hidden files, AppleDouble ``._*``
    files, directories and unreadable files are not audio (the walker's "ignored" count says so).
    """
    if is_audio_name(path):
        return True
    if os.path.basename(os.fspath(path)).startswith("."):
        return False
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        return sniff(path).audio
    except OSError:
        return False


def ignored_key(path: str | os.PathLike) -> str:
    """The key a non-audio file is counted under: its lower-case extension (``.jpg``), the whole name of a
    dot-file (``.DS_Store``), ``._* (AppleDouble)`` for macOS resource forks, ``hidden .wav`` for another
    hidden file with an extension (hidden files are never decoded), ``(no extension)`` otherwise."""
    name = os.path.basename(os.fspath(path))
    if name.startswith("._"):
        return "._* (AppleDouble)"
    if name.startswith(".") and name.count(".") == 1:
        return name
    ext = os.path.splitext(name)[1].lower()
    if name.startswith("."):
        return f"hidden {ext}"
    return ext or "(no extension)"


def ignored_summary(counts: Counter | dict[str, int]) -> str:
    """``"ignored 14 non-audio files: .jpg 9, .txt 3, .cue 2"`` (most frequent first, ties by name);
    ``"ignored 0 non-audio files"`` for none. ``counts`` maps :func:`ignored_key` keys to file counts."""
    items = sorted(((k, int(v)) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0]))
    total = sum(v for _, v in items)
    if not items:
        return "ignored 0 non-audio files"
    noun = "file" if total == 1 else "files"
    return f"ignored {total} non-audio {noun}: " + ", ".join(f"{k} {v}" for k, v in items)


def _check_file(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise AudioError(path, f"dangling symlink (points to {os.readlink(path)})")
    if not path.exists():
        raise AudioError(path, "missing file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        # opening a FIFO blocks until a writer comes: refuse before any decoder touches it
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise AudioError(path, f"not a regular file ({kind})")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "unreadable: permission denied")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _sniff(path: Path) -> Sniff:
    try:
        return sniff(path)
    except OSError as err:
        raise AudioError(path, f"unreadable ({err.strerror or err})") from None


def _reason_from_soundfile(err: Exception) -> str:
    # LibsndfileError's str() is "Error opening '<path>': <libsndfile message>"; the path is reported
    # separately, so keep only libsndfile's own message.
    msg = getattr(err, "error_string", None) or str(err)
    low = msg.lower()
    if "does not exist or is not a regular file" in low:
        # the file was checked to exist and be regular: libsndfile says this when no codec accepts it
        return "not audio or unsupported format (no decoder recognises the content)"
    if "format not recognised" in low or "unknown format" in low or "not a valid" in low:
        return f"not audio or unsupported format ({msg.strip()})"
    if "chunk" in low or "malformed" in low or "error in" in low:
        return f"corrupt or truncated ({msg.strip()})"
    if "riff" in low or "header" in low:
        return f"corrupt header ({msg.strip()})"
    if "permission" in low:
        return "unreadable: permission denied"
    return f"undecodable ({msg.strip()})"


def _av_error(path: Path, kind: Sniff, err: ffmpeg_decode.DecodeError) -> AudioError:
    reason = err.reason
    if kind.kind == "mp4" and reason.startswith(("not audio", "corrupt or truncated", "no audio frames")):
        reason = ffmpeg_decode.mp4_structure_problem(path) or reason
    elif reason.startswith("not audio or unsupported format"):
        reason = f"not audio or unsupported format ({kind.what} that FFmpeg cannot open)"
    if path.suffix.lower() == ".m4p" and not reason.startswith("DRM"):
        reason = f"DRM-protected: cannot be decoded (iTunes .m4p; {reason})"
    return AudioError(path, reason)


def _route(path: Path) -> tuple[str, Sniff, AudioInfo | None]:
    """``("soundfile", kind, info)`` or ``("av", kind, None)``: which decoder takes ``path``."""
    _check_file(path)
    kind = _sniff(path)
    if kind.kind not in _SOUNDFILE_KINDS:
        if kind.media:
            return "av", kind, None
        raise AudioError(path, f"not audio or unsupported format ({kind.what})")
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError by codec
        sf_reason = _reason_from_soundfile(err)
        if not kind.media:  # content no signature recognises: libsndfile's word is the last
            raise AudioError(path, sf_reason) from None
        try:  # e.g. MP3 or ADPCM variants inside a WAV, FLAC behind an ID3 tag
            ffmpeg_decode.probe(path)
        except ffmpeg_decode.DecodeError as av_err:
            if av_err.reason.startswith(_SPECIFIC_AV_REASONS):
                raise _av_error(path, kind, av_err) from None
            raise AudioError(path, sf_reason) from None
        return "av", kind, None
    if info.frames <= 0:
        raise AudioError(path, "no audio frames (header declares 0 frames)")
    exact = kind.kind not in _ESTIMATED_SOUNDFILE_KINDS
    return "soundfile", kind, AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), exact)


def probe(path: str | os.PathLike) -> AudioInfo:
    """Header-only look at a file; raises :class:`AudioError` for anything that is not decodable audio.

    ``frames`` is exact for WAV/FLAC/AIFF, MP4 (edit list) and Ogg; for other containers it is the header's
    duration estimate (MP3 without a Xing header, Matroska, ASF), so a decode may give a little more or less.
    """
    path = Path(path)
    decoder, kind, info = _route(path)
    if decoder == "soundfile":
        assert info is not None
        return info
    try:
        s = ffmpeg_decode.probe(path)
    except ffmpeg_decode.DecodeError as err:
        raise _av_error(path, kind, err) from None
    if s.frames <= 0:
        raise AudioError(path, "no audio frames (the stream declares no duration and holds no packets)")
    return AudioInfo(s.sample_rate, s.channels, s.frames, _av_exact(s))


def _av_exact(s: ffmpeg_decode.StreamInfo) -> bool:
    return bool(_EXACT_AV_DEMUXERS & set(s.container.split(",")))


def exact_frames(
    path: str | os.PathLike, info: AudioInfo | None = None, *, tail_seconds: float = 5.0
) -> AudioInfo:
    """``info`` (default: :func:`probe`) with ``frames`` exactly what a whole-file decode gives.

    An exact header is returned as it is. A header's estimate (``info.exact`` False: Matroska/WebM, ASF,
    raw ADTS, MP3...) is settled by decoding from ``tail_seconds`` before the estimated end to the real end
    (in reads of at most a minute, so a header that says far too little costs bounded memory); a header
    that says too much moves the start back until audio is found. Seekable containers pay for a few
    seconds of decoding; raw streams that cannot seek decode from the start once.
    """
    path = Path(path)
    info = probe(path) if info is None else info
    if info.exact:
        return info
    decoder, kind, _ = _route(path)
    sr = info.orig_sample_rate
    chunk = max(1, 60 * sr)
    back = max(1, int(tail_seconds * sr))
    start = max(0, info.frames - back)
    while True:
        try:
            n = _read_raw(path, decoder, kind, info, lambda _sr, a=start: (a, a + chunk))[0].shape[0]
        except AudioError as err:
            if start == 0 or not err.reason.startswith("no audio frames"):
                raise
            n = 0
        if n == 0:  # the range starts past the real end: the header says too much
            if start == 0:
                raise AudioError(path, "no audio frames decoded (truncated or empty stream)")
            back *= 4
            start = max(0, info.frames - back)
            continue
        if n < chunk:
            return AudioInfo(sr, info.channels, start + n, True)
        start += n  # the header says far too little: read on


def _read_raw(
    path: Path, decoder: str, kind: Sniff, info: AudioInfo | None,
    frame_range: Callable[[int], tuple[int, int | None]],
) -> tuple[np.ndarray, int, AudioInfo]:  # fmt: skip
    """The file's own float32 ``(frames, channels)`` of source frames ``[start, stop) = frame_range(orig_sr)``
    (``stop`` None: to the end), its rate and info, from the decoder :func:`_route` chose."""
    if decoder == "av":
        try:
            data, s = ffmpeg_decode.read(path, frame_range)
        except ffmpeg_decode.DecodeError as err:
            raise _av_error(path, kind, err) from None
        return data, s.sample_rate, AudioInfo(s.sample_rate, s.channels, s.frames, _av_exact(s))
    assert info is not None
    start, stop = frame_range(info.orig_sample_rate)
    try:
        data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(path, _reason_from_soundfile(err)) from None
    return data, int(sr), info


def to_mono(x: np.ndarray) -> np.ndarray:
    """``(T, C)`` or ``(T,)`` -> ``(T,)`` by averaging channels directly (6x faster than librosa's strided mean)."""
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return x[:, 0]
    if x.flags.f_contiguous and x.shape[1] < 8:
        # channel-planar data (PyAV's): add whole rows, 3x faster than a strided mean; the same sums in
        # the same order as the (T, C) reduction, which is sequential below numpy's 8-element pairwise block
        return x.T.mean(axis=0, dtype=np.float32)
    return x.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr HQ resampling of ``(T,)``, length fixed to ``ceil(T * target/orig)`` exactly as librosa does."""
    if orig_sr == target_sr:
        return x
    n_out = int(math.ceil(x.shape[-1] * float(target_sr) / orig_sr))
    y = soxr.resample(x, orig_sr, target_sr, quality="soxr_hq")
    if y.shape[-1] > n_out:
        y = y[:n_out]
    elif y.shape[-1] < n_out:
        y = np.pad(y, (0, n_out - y.shape[-1]))
    return np.asarray(y, dtype=np.float32)


def trim_silence(x: np.ndarray, top_db: float, frame_length: int = 2048, hop_length: int = 512) -> np.ndarray:
    """Drop leading/trailing frames quieter than ``top_db`` below the peak frame RMS (``librosa.effects.trim``)."""
    if x.size == 0:
        return x
    pad = frame_length // 2
    padded = np.pad(np.asarray(x, dtype=np.float64), (pad, pad))
    if padded.size < frame_length:  # clips shorter than half a frame: one (zero-padded) frame
        padded = np.pad(padded, (0, frame_length - padded.size))
    n_frames = 1 + (padded.size - frame_length) // hop_length
    # frame energies from a running sum of squares: O(T) memory, where framing would cost
    # frame_length / hop_length copies of the signal (~1.3 GB for an hour at 22 kHz)
    csum = np.concatenate([[0.0], np.cumsum(padded * padded)])
    starts = hop_length * np.arange(n_frames)
    power = np.maximum(csum[starts + frame_length] - csum[starts], 0.0) / frame_length
    rms = np.sqrt(power)
    ref = rms.max()
    if ref <= 0:
        return x[:0]
    db = 20.0 * np.log10(np.maximum(rms, 1e-10) / ref)
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return x[:0]
    start = int(loud[0] * hop_length)
    end = min(x.size, int((loud[-1] + 1) * hop_length))
    return x[start:end]


def peak_normalize(x: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Scale so that ``max |x| == peak`` (silence is left alone)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return x if m == 0.0 else (x * (peak / m)).astype(np.float32)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    *,
    max_seconds: float | None = None,
    offset_seconds: float = 0.0,
) -> tuple[np.ndarray, AudioInfo]:
    """Decode ``path`` to mono float32 ``(T,)`` at ``sample_rate`` Hz (``librosa.load(path, sr, mono=True)``).

    ``max_seconds`` / ``offset_seconds`` read only that part of the file (in source seconds), so hour-long
    files cost what the caller needs. The :class:`AudioInfo` is the header's, except that after a whole-file
    read its ``frames`` are the frames decoded (exact). Raises :class:`AudioError` with a specific reason
    on any failure.
    """
    path = Path(path)
    decoder, kind, info = _route(path)

    def frame_range(orig_sr: int) -> tuple[int, int | None]:  # source frames asked for, both decoders
        start = int(round(offset_seconds * orig_sr))
        return start, None if max_seconds is None else start + int(round(max_seconds * orig_sr))

    data, sr, info = _read_raw(path, decoder, kind, info, frame_range)
    if data.shape[0] == 0:
        raise AudioError(path, "no audio frames decoded (truncated or empty stream)")
    if offset_seconds == 0 and max_seconds is None:  # the whole file: its true length, not the header's
        info = AudioInfo(info.orig_sample_rate, info.channels, int(data.shape[0]), True)
    mono = to_mono(data)
    if not np.all(np.isfinite(mono)):  # a NaN or inf in any channel makes the average non-finite too
        raise AudioError(path, "decoded samples are not finite (corrupt stream)")
    return resample(np.ascontiguousarray(mono), int(sr), sample_rate), info
