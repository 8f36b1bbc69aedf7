"""``musicnn``: the input of the pretrained musicnn models (Pons & Serra, MTG-UPF), computed on the device.

waveform ``(B, T)`` at the shard set's rate ──▶ resample to 16 kHz (skipped for a 16-kHz shard set) ──▶
power STFT (n_fft 512, hop 256: 32 / 16 ms, periodic Hann, centred, zero padding) ──▶ 96-band Slaney mel
(librosa's defaults: ``htk=False``, ``norm='slaney'``) ──▶ ``log10(1 + 10000 * mel)`` ──▶ ``(B, 1, 96, frames)``.

This is what ``musicnn/extractor.py`` feeds its models (``librosa.load(sr=16000)`` then
``librosa.feature.melspectrogram(sr=16000, n_fft=512, hop_length=256, n_mels=96)``), with one deliberate
difference: **everything is float32**. The original casts the mel spectrogram to float16 before
``10000 * mel``; float16 tops out at 65504, so any band whose power exceeds 6.55 becomes ``inf`` and the
whole patch then gives the same (saturated) tags, which happens on ordinary loudly mastered music. The
pretrained weights were trained on the unclipped values, so float32 is the faithful input.

The STFT and filterbank are :mod:`kernels.functional`'s; only the resampler (:data:`RESAMPLER`) and the log
compression are new.
The STFT parameters come from the front-end config (``n_fft``, ``hop_length``, ``win_length``, ``n_mels``,
``f_min``, ``f_max``): a musicnn model config sets them to 512 / 256 / 96; ``f_max`` defaults to 8 kHz.
"""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT
from torch import Tensor, nn

from kernels import functional as KF
from kernels.features import FEATURES, FrontendConfig, _Feature

__all__ = ["MusicnnInput", "MUSICNN_RATE", "RESAMPLER", "resampled_length"]

MUSICNN_RATE = 16000  # Hz: the rate every musicnn checkpoint was trained at
LOG_SCALE = 10000.0  # log10(1 + LOG_SCALE * mel): musicnn's "logC" compression

RESAMPLER = {
    "resampling_method": "sinc_interp_kaiser",
    "lowpass_filter_width": 64,
    "rolloff": 0.957,
    "beta": 14.769656459379492,
}
"""Kaiser-windowed sinc (64 zero crossings, cutoff 0.957 x 8 kHz). The original resamples with
``librosa.load(sr=16000)`` = soxr 'HQ'; measured against it on noise and tone mixtures from 22.05 / 44.1 kHz,
this setting gives the closest log-mel (per-band mean within 0.09 in the top three bands, max 0.02 below them)
and taggrams within 0.016 -- about what soxr 'VHQ' vs 'HQ' differ by (0.004-0.008). torchaudio's default
(Hann, 6 zero crossings, 0.99) differs by up to 2.7 in the top bands and 0.06 in the taggram."""


def resampled_length(num_samples: int, orig_rate: int, new_rate: int = MUSICNN_RATE) -> int:
    """Samples after resampling ``num_samples`` from ``orig_rate`` to ``new_rate`` Hz (torchaudio's length:
    ``ceil(num_samples * new / old)`` with the rates reduced by their gcd)."""
    if orig_rate == new_rate:
        return num_samples
    g = math.gcd(int(orig_rate), int(new_rate))
    return int(math.ceil((new_rate // g) * num_samples / (orig_rate // g)))


@FEATURES.register("musicnn")
class MusicnnInput(_Feature):
    """Waveforms ``(B, T)`` at ``sample_rate`` Hz -> musicnn log-mel ``(B, 1, n_mels, frames)`` float32, with
    ``frames = 1 + resampled_length(T) // hop_length`` (187 frames for 47,616 samples at 16 kHz, the models'
    3-s patch). Has no learnable or persistent state: the resampling kernel, window and filterbank are
    rebuilt from the config, so the state dict is the same for every shard rate."""

    uses_power = False  # its STFT runs at 16 kHz, not at the shard rate the shared spectrogram uses

    def __init__(self, cfg: FrontendConfig, sample_rate: int) -> None:
        super().__init__(cfg, sample_rate)
        if cfg.trainable:
            raise ValueError("frontend.trainable is not supported by the 'musicnn' feature (fixed pretrained input)")
        nyquist = MUSICNN_RATE / 2
        f_max = cfg.f_max if cfg.f_max is not None else nyquist
        if f_max > nyquist:
            raise ValueError(f"frontend.f_max={f_max} Hz is above the musicnn input's Nyquist ({nyquist} Hz)")
        self.n_fft = cfg.n_fft
        self.win_length = cfg.win_length if cfg.win_length is not None else cfg.n_fft
        self.n_mels = cfg.n_mels
        self.resample: nn.Module | None = None
        if sample_rate != MUSICNN_RATE:
            # torchaudio's windowed-sinc resampler, set to match the original's librosa.load (soxr 'HQ'): see
            # RESAMPLER. Its kernel is a buffer rebuilt from the rates, so keep it out of checkpoints
            self.resample = AT.Resample(sample_rate, MUSICNN_RATE, **RESAMPLER)
            for name, _ in list(self.resample.named_buffers(recurse=False)):
                self.resample._non_persistent_buffers_set.add(name)
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)
        fb = AF.melscale_fbanks(
            n_freqs=cfg.n_fft // 2 + 1,
            f_min=cfg.f_min,
            f_max=f_max,
            n_mels=cfg.n_mels,
            sample_rate=MUSICNN_RATE,
            norm="slaney",
            mel_scale="slaney",
        )  # (n_freq, n_mels)
        self.register_buffer("mel_fb", fb.t().contiguous(), persistent=False)  # (n_mels, n_freq)

    def out_shape(self, num_samples: int) -> tuple[int, int, int]:
        n = resampled_length(num_samples, self.sample_rate)
        return 1, self.n_mels, KF.out_frames(n, self.hop_length)

    def mel(self, wave16k: Tensor) -> Tensor:
        """float32 16-kHz waveforms ``(B, T)`` -> mel power ``(B, n_mels, frames)`` (== librosa's
        ``melspectrogram(sr=16000, n_fft, hop_length, n_mels)``)."""
        power = KF.power_spectrogram(wave16k, self.window, self.n_fft, self.hop_length, self.win_length)
        return KF.apply_filterbank(self.mel_fb, power)

    def from_wave(self, wave: Tensor) -> Tensor:
        if self.resample is not None:
            wave = self.resample(wave)  # (B, T) -> (B, T * 16000 / sample_rate)
        mel = self.mel(wave)  # (B, n_mels, frames) float32
        return torch.log10(1.0 + LOG_SCALE * mel).unsqueeze(1)  # float32 throughout: no float16 overflow
