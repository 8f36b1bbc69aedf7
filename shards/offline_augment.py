"""Offline time stretch and pitch shift of whole tracks at ingest (``make_shards.py --offline-augment``).

The on-device augmentations (:mod:`kernels.augment`) approximate time stretch and pitch shift on the
spectrogram, per batch, cheaply. This is the exact, slow, waveform-domain version (phase vocoder +
band-limited resampling), the seed project's offline corpus expansion: the ingest writes one extra copy of
every *training* track per :class:`OfflineAugment` variant, marked in the copy's JSON (``augment``:
``{"rate", "semitones"}``, ``augment_of``: the original's key). Validation and test tracks are never
augmented. torch is imported only when a copy is rendered (the ingest's start-up never pays for it).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["OfflineAugment", "offline_time_stretch_pitch_shift"]


@dataclass(frozen=True)
class OfflineAugment:
    """One augmented copy: tempo multiplied by ``rate`` (>1 = faster/shorter), pitch moved by ``semitones``."""

    rate: float = 1.0
    semitones: float = 0.0

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"offline augment: rate must be a finite number > 0, got {self.rate}")
        if not (math.isfinite(self.semitones) and abs(self.semitones) <= 48):
            raise ValueError(f"offline augment: semitones must be within +-48, got {self.semitones}")
        if self.rate == 1.0 and self.semitones == 0.0:
            raise ValueError("offline augment: rate 1 and 0 semitones is an exact copy of the track")

    @classmethod
    def parse(cls, text: str) -> OfflineAugment:
        """``"RATE:SEMITONES"`` (e.g. ``0.9:0``, ``1:-2``) or ``"RATE"``; raises ``ValueError``."""
        m = re.fullmatch(r"\s*([^:\s]+)\s*(?::\s*([^:\s]+)\s*)?", text)
        try:
            if m is None:
                raise ValueError
            rate, semitones = float(m.group(1)), float(m.group(2) or 0.0)
        except ValueError:
            raise ValueError(
                f"--offline-augment {text!r}: expected RATE:SEMITONES, e.g. 0.9:0 (10 % slower) or 1:2 "
                "(two semitones up)"
            ) from None
        return cls(rate, semitones)

    def to_dict(self) -> dict[str, float]:
        return {"rate": float(self.rate), "semitones": float(self.semitones)}

    def apply(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float waveform ``(T,)`` at ``sample_rate`` Hz -> float32 ``(round(T / rate),)``."""
        import torch

        if mp.parent_process() is not None:  # one of the ingest's worker processes: one thread each
            torch.set_num_threads(1)
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        return offline_time_stretch_pitch_shift(x, sample_rate, self.rate, self.semitones).numpy()


def offline_time_stretch_pitch_shift(
    wave: Tensor,
    sample_rate: int,
    rate: float = 1.0,
    semitones: float = 0.0,
    n_fft: int = 2048,
    hop_length: int | None = None,
) -> Tensor:
    """Waveform-domain time stretch and pitch shift (phase vocoder + band-limited resampling).

    ``wave`` float ``[T]`` (or ``[..., T]``) at ``sample_rate`` Hz -> float ``[round(T / rate)]`` (same
    leading dims and dtype): tempo multiplied by ``rate`` (>1 = faster/shorter), pitch moved by ``semitones``.
    One STFT -> :func:`torchaudio.functional.phase_vocoder` at rate ``rate / k`` -> iSTFT -> resampling by
    ``k = 2 ** (semitones / 12)`` (:func:`torchaudio.functional.resample`, ratio approximated to a fraction
    with denominator <= 256: a pitch error below 0.05 cent).

    Cost: an STFT/iSTFT pair plus a polyphase resampling per clip, ~10-50x the on-device spectrogram
    approximations and not batched over different rates; meant for offline corpus expansion, not for the
    training loop. Phase-vocoder artefacts ("phasiness") grow with ``|log rate|`` and ``|semitones|``.
    """
    import torch
    import torch.nn.functional as F
    import torchaudio.functional as AF

    if not torch.is_tensor(wave) or not wave.is_floating_point():
        raise TypeError(
            f"offline_time_stretch_pitch_shift: wave must be a float tensor, got {type(wave).__name__}"
        )
    if wave.dim() < 1 or wave.shape[-1] < 2:
        raise ValueError(
            f"offline_time_stretch_pitch_shift: wave must be [..., T] with T >= 2, got {tuple(wave.shape)}"
        )
    if sample_rate <= 0:
        raise ValueError(f"offline_time_stretch_pitch_shift: sample_rate must be > 0 Hz, got {sample_rate}")
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"offline_time_stretch_pitch_shift: rate must be > 0, got {rate}")
    if abs(semitones) > 48:
        raise ValueError(f"offline_time_stretch_pitch_shift: semitones must be within +-48, got {semitones}")
    out_len = max(1, round(wave.shape[-1] / rate))
    if rate == 1.0 and semitones == 0.0:
        return wave.clone()

    dtype = wave.dtype
    lead = wave.shape[:-1]
    x = wave.reshape(-1, wave.shape[-1]).to(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    k = 2.0 ** (semitones / 12.0)
    hop = hop_length or n_fft // 4
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    # (N, n_fft // 2 + 1, frames) complex. Zero (not reflect) padding: the phase vocoder propagates the
    # inter-bin phases of frame 0, and a reflected first frame breaks them (a steady tone then loses ~half
    # its level when slowed down; torchaudio.functional.pitch_shift has this problem, librosa does not).
    spec = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    # pitch by k = stretch by 1/k, then resample by k; net tempo factor = (rate / k) * k = rate
    pv_rate = rate / k
    if pv_rate != 1.0:
        # expected phase advance per hop of each bin, (n_freq, 1)
        phase_advance = torch.linspace(0, math.pi * hop, spec.shape[-2], device=x.device, dtype=x.dtype)
        phase_advance = phase_advance[:, None]
        spec = AF.phase_vocoder(spec, pv_rate, phase_advance)
    stretched_len = round(x.shape[-1] / pv_rate)
    y = torch.istft(spec, n_fft, hop, window=window, center=True, length=stretched_len)
    if semitones != 0.0:
        # playing `k` times faster: orig_freq / new_freq = k
        frac = Fraction(k).limit_denominator(256)
        y = AF.resample(y, frac.numerator, frac.denominator)
    if y.shape[-1] >= out_len:
        y = y[..., :out_len]
    else:
        y = F.pad(y, (0, out_len - y.shape[-1]))
    return y.reshape(*lead, out_len).to(dtype)
