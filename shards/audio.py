"""Decode any audio file to mono float32 at a target rate, the way ``librosa.load(path, sr, mono=True)`` does.

soundfile decodes (WAV, FLAC, OGG, MP3, AIFF, AU), channels are averaged directly, soxr resamples at HQ
quality and the length is fixed to ``ceil(frames * sr / orig_sr)`` -- librosa's own steps, without its
import cost. Every failure is an :class:`AudioError` whose ``reason`` names what is wrong with the file,
so callers can skip and report instead of crashing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".snd")


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


def is_audio_name(path: str | os.PathLike) -> bool:
    """True for a file name with an audio extension (case-insensitive), not hidden, not AppleDouble ``._*``."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS)


def _check_file(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise AudioError(path, f"dangling symlink (points to {os.readlink(path)})")
    if not path.exists():
        raise AudioError(path, "missing file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "unreadable: permission denied")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


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


def probe(path: str | os.PathLike) -> AudioInfo:
    """Header-only look at a file; raises :class:`AudioError` for anything that is not decodable audio."""
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError by codec
        raise AudioError(path, _reason_from_soundfile(err)) from None
    if info.frames <= 0:
        raise AudioError(path, "no audio frames (header declares 0 frames)")
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))


def to_mono(x: np.ndarray) -> np.ndarray:
    """``(T, C)`` or ``(T,)`` -> ``(T,)`` by averaging channels directly (6x faster than librosa's strided mean)."""
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return x[:, 0]
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
    files cost what the caller needs. Raises :class:`AudioError` with a specific reason on any failure.
    """
    info = probe(path)
    start = int(round(offset_seconds * info.orig_sample_rate))
    stop = None if max_seconds is None else start + int(round(max_seconds * info.orig_sample_rate))
    try:
        data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(path, _reason_from_soundfile(err)) from None
    if data.shape[0] == 0:
        raise AudioError(path, "no audio frames decoded (truncated or empty stream)")
    if not np.all(np.isfinite(data)):
        raise AudioError(path, "decoded samples are not finite (corrupt stream)")
    mono = to_mono(data)
    return resample(np.ascontiguousarray(mono), int(sr), sample_rate), info
