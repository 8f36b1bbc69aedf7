"""On-device feature front end: waveform batches ``(B, T)`` -> float32 features ``(B, C, F, frames)``.

Registered features (``FEATURES``): ``logmel``, ``mfcc``, ``chroma``, ``cqt``. Each is a thin Module holding
its constant matrices as non-persistent buffers (they follow ``.to(device)`` but are not written into
checkpoints: the config rebuilds them) over the pure functions in :mod:`kernels.functional`.

:class:`Frontend` computes several features from **one** shared power STFT (``logmel``, ``mfcc`` and
``chroma`` share it; ``mfcc`` reuses the log-mel when both are asked for) and stacks them along frequency or
as channels. Features are always computed in float32, also inside ``torch.autocast``.

Parity with librosa 0.10+/0.11 (``sr`` = sample rate, defaults n_fft=2048, hop_length=512, n_mels=128):

* ``logmel`` == ``librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048,
  hop_length=512, n_mels=128, power=2.0), ref=1.0, top_db=80.0)``
* ``mfcc`` == ``librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, n_fft=2048, hop_length=512, n_mels=128)``
  plus ``librosa.feature.delta(mfcc, width=9, order=1 / 2)`` for ``deltas=1 / 2``
* ``chroma`` == ``librosa.feature.chroma_stft(y=y, sr=sr, n_fft=2048, hop_length=512, tuning=0.0)``
  (``estimate_tuning=True``: ``tuning=None``, librosa's default)
* ``cqt``: nnAudio's CQT (not librosa-identical), as dB of its power.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from kernels import functional as KF
from registry import Registry
from registry.fields import bounded, check_bounds

__all__ = [
    "FEATURES",
    "PRECOMPUTED",
    "FrontendConfig",
    "Frontend",
    "PowerSpectrogram",
    "LogMel",
    "MFCC",
    "Chroma",
    "CQT",
    "build_frontend",
    "estimate_norm_stats",
    "resolve_backend",
]

logger = logging.getLogger(__name__)

FEATURES: Registry[type[nn.Module]] = Registry("feature")

#: ``features: [precomputed]``: the model reads feature-sequence shards (MSD) through
#: :class:`kernels.precomputed.PrecomputedFrontend`, not a waveform feature of :data:`FEATURES`.
PRECOMPUTED = "precomputed"

BACKENDS = ("auto", "torch", "nnaudio")
STACKS = ("freq", "channels")
NORMS = ("none", "batchnorm", "stats")
CQT_VARIANTS = ("1992v2", "2010v2")


@dataclass
class FrontendConfig:
    """Which features to compute and their parameters (all in samples, Hz or bins).

    Loaded strictly by ``engine.config.from_dict``; :meth:`validate` fails fast on bad values. Checks that
    need the sample rate (``f_max``, CQT range) run in :func:`build_frontend`.
    """

    features: list[str] = field(default_factory=lambda: ["logmel"])
    n_fft: int = bounded(2048, ge=16)  # samples per STFT frame
    hop_length: int = bounded(512, ge=1)  # samples between frames
    win_length: int | None = bounded(None, ge=1, none="n_fft")  # Hann window length in samples (None = n_fft)
    n_mels: int = bounded(128, ge=1)
    f_min: float = bounded(0.0, ge=0, unit="Hz")  # Hz, lowest mel edge
    f_max: float | None = bounded(None, gt=0, unit="Hz", none="sample_rate / 2")  # Hz, highest mel edge (None = sample_rate / 2)
    top_db: float | None = bounded(80.0, gt=0, unit="dB", none="no clipping")  # dB below each clip's max to clip at (None = no clipping)
    n_mfcc: int = bounded(20, ge=1)
    deltas: int = bounded(0, ge=0, le=2)  # 0, 1 or 2: MFCC channels static, delta, delta-delta
    delta_width: int = bounded(9, ge=3, note="odd")  # frames in the Savitzky-Golay window (odd, >= 3)
    chroma_norm: float | None = bounded(math.inf, gt=0, finite=False, note="inf = max", none="none")  # per-frame norm of chroma (inf = max; None = none)
    tuning: float = bounded(0.0, ge=-0.5, lt=0.5, unit="bins")  # chroma tuning offset in fractions of a bin, in [-0.5, 0.5)
    estimate_tuning: bool = False  # estimate tuning per clip (librosa chroma_stft's default)
    cqt_bins_per_octave: int = bounded(12, ge=1)
    cqt_n_bins: int = bounded(84, ge=1)
    cqt_fmin: float = bounded(32.70, gt=0, unit="Hz")  # Hz (C1)
    cqt_variant: str = "1992v2"  # nnAudio CQT1992v2 (direct) or CQT2010v2 (octave downsampling, faster)
    backend: str = "auto"  # STFT: "torch" (torch.stft), "nnaudio" (conv STFT), "auto" (fastest per device)
    stack: str = "freq"  # combine features along frequency or as channels
    norm: str = "none"  # "none" | "batchnorm" (per band) | "stats" (fixed per-band mean/std below)
    norm_mean: list[float] = bounded(default_factory=list)  # per band, length F or C*F (channel-major)
    norm_std: list[float] = bounded(default_factory=list, gt=0)
    trainable: bool = False  # make mel / chroma / DCT matrices learnable parameters
    cpu_chunk_frames: int = bounded(2048, ge=0, note="0 = off")  # on CPU, feed the batch in sub-batches of about this many frames (0 = off)
    feature_dim: int = bounded(0, ge=0, note="0 = from the shard set")  # features=[precomputed] only: D of the [B, frames, D] input (kernels.precomputed)

    def validate(self) -> None:
        """Raise ``ValueError`` with a specific message for any value that cannot be right: a number out of its
        field's range (:func:`registry.fields.check_bounds`), then the checks across fields."""
        check_bounds(self, "frontend")
        valid = sorted([*FEATURES.names(), PRECOMPUTED])
        if not self.features:
            raise ValueError(f"frontend.features is empty; choose from {valid}")
        unknown = [f for f in self.features if f not in FEATURES and f != PRECOMPUTED]
        if unknown:
            raise ValueError(f"frontend.features: unknown feature(s) {unknown}; valid: {valid}")
        if PRECOMPUTED in self.features and len(self.features) > 1:
            raise ValueError(
                "frontend.features: 'precomputed' reads feature-sequence shards (e.g. MSD) and cannot be mixed "
                f"with waveform features (got {self.features}); use features: [precomputed] alone"
            )
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"frontend.features lists a feature twice: {self.features}")
        if self.win_length is not None and self.win_length > self.n_fft:
            raise ValueError(f"frontend.win_length must be in [1, n_fft={self.n_fft}], got {self.win_length}")
        if self.f_max is not None and self.f_max <= self.f_min:
            raise ValueError(f"frontend.f_max ({self.f_max} Hz) must be above f_min ({self.f_min} Hz)")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"frontend.n_mfcc must be in [1, n_mels={self.n_mels}], got {self.n_mfcc}")
        if self.delta_width % 2 == 0:
            raise ValueError(f"frontend.delta_width must be odd and >= 3, got {self.delta_width}")
        for name, value, valid in (
            ("cqt_variant", self.cqt_variant, CQT_VARIANTS),
            ("backend", self.backend, BACKENDS),
            ("stack", self.stack, STACKS),
            ("norm", self.norm, NORMS),
        ):
            if value not in valid:
                raise ValueError(f"frontend.{name}: {value!r} is not one of {list(valid)}")
        if self.norm == "stats":
            if not self.norm_mean or len(self.norm_mean) != len(self.norm_std):
                raise ValueError(
                    "frontend.norm='stats' needs norm_mean and norm_std of equal, non-zero length "
                    f"(got {len(self.norm_mean)} and {len(self.norm_std)}); see kernels.features.estimate_norm_stats"
                )
        elif self.norm_mean or self.norm_std:
            raise ValueError(
                f"frontend.norm_mean / norm_std are set but norm={self.norm!r}; use norm='stats'"
            )

    def check_sample_rate(self, sample_rate: int) -> None:
        """Checks that need the sample rate (Hz)."""
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
        nyquist = sample_rate / 2
        if self.f_max is not None and self.f_max > nyquist:
            raise ValueError(f"frontend.f_max={self.f_max} Hz is above Nyquist ({nyquist} Hz)")
        if self.f_min >= (self.f_max if self.f_max is not None else nyquist):
            raise ValueError(f"frontend.f_min={self.f_min} Hz must be below f_max / Nyquist")
        if "cqt" in self.features:
            top = self.cqt_fmin * 2 ** ((self.cqt_n_bins - 1) / self.cqt_bins_per_octave)
            if top >= nyquist:
                raise ValueError(
                    f"frontend CQT: top bin {top:.1f} Hz (cqt_fmin={self.cqt_fmin}, cqt_n_bins={self.cqt_n_bins}, "
                    f"cqt_bins_per_octave={self.cqt_bins_per_octave}) is not below Nyquist ({nyquist} Hz)"
                )


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """``"auto"`` -> the faster STFT on ``device``.

    ``benchmarks/bench_features.py`` measured the whole front end 3.5-10x slower with nnAudio's conv STFT
    than with torch.stft on CPU (2 cores; the FFT is O(n log n) per frame, the conv O(n^2)); on CUDA cuFFT is
    the cheaper algorithm as well, so ``auto`` picks ``torch`` everywhere. ``nnaudio`` stays available for
    real-valued graphs (ONNX export: no complex tensors).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {list(BACKENDS)}")
    return "torch" if backend == "auto" else backend


def _matrix(t: Tensor, trainable: bool, module: nn.Module, name: str) -> None:
    """Register ``t`` as a learnable parameter or a non-persistent buffer."""
    if trainable:
        module.register_parameter(name, nn.Parameter(t))
    else:
        module.register_buffer(name, t, persistent=False)


class PowerSpectrogram(nn.Module):
    """``(B, T)`` float32 -> power STFT ``(B, n_fft // 2 + 1, 1 + T // hop_length)`` (periodic Hann, centred,
    zero padding). ``backend="torch"`` uses torch.stft; ``"nnaudio"`` nnAudio's conv STFT (same numbers)."""

    def __init__(
        self, n_fft: int, hop_length: int, win_length: int | None, sample_rate: int, backend: str
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length if win_length is not None else n_fft
        self.backend = resolve_backend(backend)
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)
        self.stft: nn.Module | None = None
        if self.backend == "nnaudio":
            from nnAudio.features import STFT

            self.stft = STFT(
                n_fft=n_fft,
                win_length=self.win_length,
                hop_length=hop_length,
                window="hann",
                freq_scale="no",
                center=True,
                pad_mode="constant",
                sr=sample_rate,
                output_format="Complex",
                verbose=False,
            )
            # nnAudio's Fourier kernels are persistent buffers; rebuilt from the config, so keep them out of
            # checkpoints (the state dict is then the same for both backends)
            for name, _ in list(self.stft.named_buffers(recurse=False)):
                self.stft._non_persistent_buffers_set.add(name)

    def forward(self, wave: Tensor) -> Tensor:
        if self.stft is not None:
            return self.stft(wave).pow(2).sum(-1)  # (B, n_freq, frames, 2) -> (B, n_freq, frames)
        return KF.power_spectrogram(wave, self.window, self.n_fft, self.hop_length, self.win_length)


class _Feature(nn.Module):
    """Base of the registered features: ``forward(wave (B, T)) -> float32 (B, C, F, frames)``.

    Subclasses that work on the shared power STFT implement ``from_power``; ``uses_power`` says so.
    """

    uses_power = True

    def __init__(self, cfg: FrontendConfig, sample_rate: int) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.hop_length = cfg.hop_length
        self.spectrogram = (
            PowerSpectrogram(cfg.n_fft, cfg.hop_length, cfg.win_length, sample_rate, cfg.backend)
            if self.uses_power
            else None
        )

    def out_shape(self, num_samples: int) -> tuple[int, int, int]:
        """``(C, F, frames)`` for a clip of ``num_samples`` samples."""
        raise NotImplementedError

    def from_power(self, power: Tensor) -> Tensor:
        raise NotImplementedError

    def from_wave(self, wave: Tensor) -> Tensor:
        """float32 ``(B, T)`` -> ``(B, C, F, frames)``."""
        assert self.spectrogram is not None
        return self.from_power(self.spectrogram(wave))

    def forward(self, wave: Tensor) -> Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            return self.from_wave(KF.to_float_wave(wave))


@FEATURES.register("logmel")
class LogMel(_Feature):
    """Log-mel power spectrogram in dB, ``(B, 1, n_mels, frames)``.

    Power STFT (periodic Hann, centred, zero padding) -> Slaney mel filterbank (``mel_scale='slaney'``,
    ``norm='slaney'``) -> ``10 log10(max(1e-10, S))``, clipped to ``top_db`` below each clip's maximum.
    Equals ``librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512,
    n_mels=128, power=2.0), ref=1.0, top_db=80.0)`` to < 0.01 dB above the -80 dB floor.
    """

    def __init__(self, cfg: FrontendConfig, sample_rate: int) -> None:
        super().__init__(cfg, sample_rate)
        self.n_mels = cfg.n_mels
        self.top_db = cfg.top_db
        fb = AF.melscale_fbanks(
            n_freqs=cfg.n_fft // 2 + 1,
            f_min=cfg.f_min,
            f_max=cfg.f_max if cfg.f_max is not None else sample_rate / 2,
            n_mels=cfg.n_mels,
            sample_rate=sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # (n_freq, n_mels)
        _matrix(fb.t().contiguous(), cfg.trainable, self, "mel_fb")  # (n_mels, n_freq)

    def out_shape(self, num_samples: int) -> tuple[int, int, int]:
        return 1, self.n_mels, KF.out_frames(num_samples, self.hop_length)

    def db(self, power: Tensor) -> Tensor:
        """Power STFT ``(B, n_freq, frames)`` -> log-mel dB ``(B, n_mels, frames)``."""
        mel = KF.apply_filterbank(self.mel_fb, power)
        return KF.power_to_db(mel, amin=1e-10, ref=1.0, top_db=self.top_db)

    def from_power(self, power: Tensor) -> Tensor:
        return self.db(power).unsqueeze(1)


@FEATURES.register("mfcc")
class MFCC(_Feature):
    """MFCCs (DCT-II, orthonormal) of the log-mel, with optional Savitzky-Golay deltas.

    Equals ``librosa.feature.mfcc(y=y, sr=sr, n_mfcc=n_mfcc, n_fft=2048, hop_length=512, n_mels=128)``
    (librosa's log-mel uses ``power_to_db`` with ``top_db=80``). ``deltas=1/2`` appends
    ``librosa.feature.delta(mfcc, width=delta_width, order=1)`` and ``order=2`` (a direct second-derivative
    filter, not the delta of the delta), including librosa's polynomial fit at the first/last frames.
    Output ``(B, 1 + deltas, n_mfcc, frames)``, or ``(B, 1, (1 + deltas) * n_mfcc, frames)`` when
    ``cfg.stack == "freq"`` (static, delta, delta-delta stacked along frequency).
    """

    def __init__(self, cfg: FrontendConfig, sample_rate: int) -> None:
        super().__init__(cfg, sample_rate)
        self.logmel = LogMel(cfg, sample_rate)
        self.logmel.spectrogram = None  # the MFCC's own spectrogram feeds it
        self.n_mfcc = cfg.n_mfcc
        self.deltas = cfg.deltas
        self.delta_width = cfg.delta_width
        self.stack_freq = cfg.stack == "freq"
        dct = AF.create_dct(cfg.n_mfcc, cfg.n_mels, norm="ortho")  # (n_mels, n_mfcc)
        _matrix(dct.t().contiguous(), cfg.trainable, self, "dct")  # (n_mfcc, n_mels)
        # orders 1..deltas stacked into one operator set: (K, width), (K, h, width), (K, h, width)
        ops = [KF.savgol_operators(cfg.delta_width, order) for order in range(1, cfg.deltas + 1)]
        for i, name in enumerate(("delta_kernel", "delta_left", "delta_right")):
            t = torch.from_numpy(np.stack([op[i] for op in ops])).float() if ops else torch.zeros(0)
            self.register_buffer(name, t, persistent=False)
        # the interior taps as Python constants: no device read-back, traceable and compile-friendly
        self.delta_taps: list[list[float]] = [op[0].tolist() for op in ops]

    def out_shape(self, num_samples: int) -> tuple[int, int, int]:
        frames = KF.out_frames(num_samples, self.hop_length)
        if self.stack_freq:
            return 1, (1 + self.deltas) * self.n_mfcc, frames
        return 1 + self.deltas, self.n_mfcc, frames

    def from_logmel(self, logmel_db: Tensor) -> Tensor:
        """Log-mel dB ``(B, n_mels, frames)`` -> MFCC features (layout as in the class docstring)."""
        static = KF.apply_filterbank(self.dct, logmel_db)  # (B, n_mfcc, frames)
        if self.deltas == 0:
            return static.unsqueeze(1)
        d = KF.savgol_delta(
            static, self.delta_kernel, self.delta_left, self.delta_right
        )  # (B, n_mfcc, K, frames)
        out = torch.cat([static.unsqueeze(1), d.transpose(1, 2)], dim=1)  # (B, 1 + K, n_mfcc, frames)
        if self.stack_freq:
            return out.reshape(out.shape[0], 1, -1, out.shape[-1])  # (B, 1, (1 + K) * n_mfcc, frames)
        return out

    def from_power(self, power: Tensor) -> Tensor:
        return self.from_logmel(self.logmel.db(power))


@FEATURES.register("chroma")
class Chroma(_Feature):
    """12-bin STFT chroma, ``(B, 1, 12, frames)``, each frame normalised by ``chroma_norm`` (inf = max).

    Power STFT -> librosa's chroma filterbank (nnAudio's port of ``librosa.filters.chroma``) -> per-frame
    normalisation. Equals ``librosa.feature.chroma_stft(y=y, sr=sr, n_fft=2048, hop_length=512,
    tuning=cfg.tuning)``; with ``estimate_tuning=True`` the tuning is estimated per clip by a batched port of
    ``librosa.estimate_tuning`` and the filterbank is rebuilt per clip (== ``chroma_stft(..., tuning=None)``).
    """

    n_chroma = 12

    def __init__(self, cfg: FrontendConfig, sample_rate: int) -> None:
        super().__init__(cfg, sample_rate)
        from nnAudio.librosa_functions import chroma as chroma_fb

        self.n_fft = cfg.n_fft
        self.norm = cfg.chroma_norm
        self.estimate = cfg.estimate_tuning
        fb = chroma_fb(sample_rate, cfg.n_fft, n_chroma=self.n_chroma, tuning=cfg.tuning)  # (12, n_freq)
        _matrix(torch.from_numpy(np.ascontiguousarray(fb)).float(), cfg.trainable, self, "chroma_fb")

    def out_shape(self, num_samples: int) -> tuple[int, int, int]:
        return 1, self.n_chroma, KF.out_frames(num_samples, self.hop_length)

    def from_power(self, power: Tensor) -> Tensor:
        if self.estimate:
            tuning = KF.estimate_tuning(power, self.sample_rate, self.n_fft, bins_per_octave=self.n_chroma)
            fb = KF.chroma_filterbank(self.sample_rate, self.n_fft, tuning, self.n_chroma).to(power.dtype)
            raw = torch.matmul(fb, power)  # (B, 12, n_freq) @ (B, n_freq, frames)
        else:
            raw = KF.apply_filterbank(self.chroma_fb, power)  # (B, 12, frames)
        return KF.normalize_frames(raw, self.norm, dim=1).unsqueeze(1)


@FEATURES.register("cqt")
class CQT(_Feature):
    """Constant-Q power in dB, ``(B, 1, cqt_n_bins, frames)`` (nnAudio CQT1992v2 or CQT2010v2, centred,
    zero padding, librosa-style normalisation), clipped to ``top_db`` below each clip's max.

    Not librosa-identical: nnAudio's kernels and (for 2010v2) its downsampling differ from ``librosa.cqt``,
    so only shape, frame alignment and pitch placement are tested. The power is ``re^2 + im^2`` (not the
    magnitude's square) so the gradient stays finite at zero.
    """

    uses_power = False

    def __init__(self, cfg: FrontendConfig, sample_rate: int) -> None:
        super().__init__(cfg, sample_rate)
        from nnAudio.features import CQT1992v2, CQT2010v2

        cls = CQT1992v2 if cfg.cqt_variant == "1992v2" else CQT2010v2
        self.n_bins = cfg.cqt_n_bins
        self.top_db = cfg.top_db
        kwargs = {"center": True} if cls is CQT1992v2 else {}  # CQT2010v2 always centres
        self.cqt = cls(
            sr=sample_rate,
            hop_length=cfg.hop_length,
            fmin=cfg.cqt_fmin,
            n_bins=cfg.cqt_n_bins,
            bins_per_octave=cfg.cqt_bins_per_octave,
            pad_mode="constant",
            trainable=cfg.trainable,
            output_format="Complex",
            verbose=False,
            **kwargs,
        )
        # nnAudio registers its kernels as persistent buffers; they are rebuilt from the config
        for name, _ in list(self.cqt.named_buffers(recurse=False)):
            self.cqt._non_persistent_buffers_set.add(name)

    def out_shape(self, num_samples: int) -> tuple[int, int, int]:
        return 1, self.n_bins, KF.out_frames(num_samples, self.hop_length)

    def from_wave(self, wave: Tensor) -> Tensor:
        power = self.cqt(wave).pow(2).sum(-1)  # (B, n_bins, frames, 2) -> (B, n_bins, frames)
        frames = KF.out_frames(wave.shape[-1], self.hop_length)
        power = power[..., :frames]
        return KF.power_to_db(power, amin=1e-10, ref=1.0, top_db=self.top_db).unsqueeze(1)


class Frontend(nn.Module):
    """Several features from one shared power STFT, stacked, optionally normalised per band.

    ``forward(wave int16 | float (B, T)) -> float32 (B, C, F, frames)`` with ``frames = 1 + T // hop_length``.
    ``stack="freq"``: features concatenated along F (every feature has C=1; MFCC deltas go along F too).
    ``stack="channels"``: concatenated along C; all features must have the same F (checked at build time).
    ``norm="batchnorm"``: ``BatchNorm1d`` over the ``C * F`` bands (statistics over batch and frames);
    ``norm="stats"``: fixed ``(x - mean) / std`` per band from the config.
    """

    def __init__(self, cfg: FrontendConfig, sample_rate: int) -> None:
        super().__init__()
        cfg.validate()
        if PRECOMPUTED in cfg.features:
            raise ValueError(
                "frontend.features: [precomputed] models read feature-sequence shards (e.g. MSD) through "
                "kernels.precomputed.PrecomputedFrontend; the waveform Frontend cannot build them"
            )
        cfg.check_sample_rate(sample_rate)
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.hop_length = cfg.hop_length
        self.names = list(cfg.features)
        self.stack = cfg.stack
        self.feats = nn.ModuleDict({name: FEATURES.get(name)(cfg, sample_rate) for name in self.names})
        needs_power = any(getattr(m, "uses_power", False) for m in self.feats.values())
        self.spectrogram = (
            PowerSpectrogram(cfg.n_fft, cfg.hop_length, cfg.win_length, sample_rate, cfg.backend)
            if needs_power
            else None
        )
        for m in self.feats.values():
            m.spectrogram = None  # one shared STFT (self.spectrogram) instead
        self.chunk_frames = cfg.cpu_chunk_frames

        shapes = [self.feats[n].out_shape(sample_rate) for n in self.names]
        if len({s[2] for s in shapes}) > 1:
            detail = ", ".join(f"{n}: {s[2]} frames" for n, s in zip(self.names, shapes))
            raise ValueError(f"frontend.features have different frame rates and cannot be stacked ({detail})")
        if self.stack == "channels":
            if len({s[1] for s in shapes}) > 1:
                detail = ", ".join(f"{n}: F={s[1]}" for n, s in zip(self.names, shapes))
                raise ValueError(
                    f"frontend.stack='channels' needs the same number of frequency bins in every feature ({detail}); "
                    "use stack='freq' or matching sizes (e.g. n_mfcc == n_mels)"
                )
        self.channels, self.bins, _ = self.out_shape(sample_rate)
        self.norm_kind = cfg.norm
        self.bn: nn.BatchNorm1d | None = None
        if cfg.norm == "batchnorm":
            self.bn = nn.BatchNorm1d(self.channels * self.bins)
        elif cfg.norm == "stats":
            n = self.channels * self.bins
            if len(cfg.norm_mean) not in (self.bins, n):
                raise ValueError(
                    f"frontend.norm_mean has {len(cfg.norm_mean)} values; expected F={self.bins} or C*F={n} "
                    f"for output (C, F) = ({self.channels}, {self.bins})"
                )
            mean = torch.tensor(cfg.norm_mean, dtype=torch.float32)
            std = torch.tensor(cfg.norm_std, dtype=torch.float32)
            if mean.numel() == self.bins:
                mean, std = mean.repeat(self.channels), std.repeat(self.channels)
            self.register_buffer("norm_mean", mean.view(1, self.channels, self.bins, 1), persistent=False)
            self.register_buffer("norm_std", std.view(1, self.channels, self.bins, 1), persistent=False)

    def out_shape(self, num_samples: int) -> tuple[int, int, int]:
        """``(C, F, frames)`` of the output for a clip of ``num_samples`` samples (no computation)."""
        shapes = [self.feats[n].out_shape(num_samples) for n in self.names]
        frames = shapes[0][2]  # a resampling feature (musicnn) has its own frame count; all agree (checked)
        if self.stack == "channels":
            return sum(s[0] for s in shapes), shapes[0][1], frames
        return 1, sum(s[0] * s[1] for s in shapes), frames

    def features(self, wave: Tensor) -> dict[str, Tensor]:
        """Each feature separately: ``{name: float32 (B, C_i, F_i, frames)}`` from one shared STFT."""
        with torch.autocast(wave.device.type, enabled=False):
            x = KF.to_float_wave(wave)
            power = self.spectrogram(x) if self.spectrogram is not None else None
            logmel_db: Tensor | None = None
            out: dict[str, Tensor] = {}
            for name in self.names:
                feat = self.feats[name]
                if isinstance(feat, LogMel):
                    logmel_db = feat.db(power)
                    out[name] = logmel_db.unsqueeze(1)
                elif isinstance(feat, MFCC) and "logmel" in self.feats and self._mfcc_reuses_logmel():
                    if logmel_db is None:
                        logmel_db = self.feats["logmel"].db(power)
                    out[name] = feat.from_logmel(logmel_db)
                elif feat.uses_power:
                    out[name] = feat.from_power(power)
                else:
                    out[name] = feat.from_wave(x)
            return out

    def _mfcc_reuses_logmel(self) -> bool:
        # with trainable matrices the MFCC owns its own mel filterbank, so it cannot reuse the log-mel
        return not self.cfg.trainable

    def _stacked(self, wave: Tensor) -> Tensor:
        feats = self.features(wave)
        parts = [feats[n] for n in self.names]
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts, dim=1 if self.stack == "channels" else 2)

    def _clips_per_chunk(self, wave: Tensor) -> int:
        """Sub-batch size on CPU so one chunk's spectrograms stay cache-sized; the whole batch otherwise.

        Measured on 2 cores: 16 x 30-s clips in one go cost ~2x per clip what they cost in chunks of
        ~1-2k frames (the (B, 1025, frames) intermediates fall out of cache). Every feature is per clip, so
        chunking changes no value. Off on accelerators and while tracing / compiling / exporting (the graph
        must not bake in a batch split).
        """
        batch = wave.shape[0]
        if (
            self.chunk_frames <= 0
            or wave.device.type != "cpu"
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
            or torch.compiler.is_compiling()
        ):
            return batch
        frames = KF.out_frames(wave.shape[-1], self.hop_length)
        return max(1, self.chunk_frames // frames)

    def forward(self, wave: Tensor) -> Tensor:
        per = self._clips_per_chunk(wave)
        if per < wave.shape[0]:
            y = torch.cat([self._stacked(part) for part in wave.split(per)], dim=0)
        else:
            y = self._stacked(wave)
        if self.bn is not None:
            b, c, f, t = y.shape
            y = self.bn(y.reshape(b, c * f, t)).reshape(b, c, f, t)
        elif self.norm_kind == "stats":
            y = (y - self.norm_mean) / self.norm_std
        return y


def build_frontend(cfg: FrontendConfig, sample_rate: int) -> Frontend:
    """Validate ``cfg`` against ``sample_rate`` (Hz) and build the :class:`Frontend`."""
    return Frontend(cfg, sample_rate)


@torch.no_grad()
def estimate_norm_stats(
    cfg: FrontendConfig, sample_rate: int, waves: Iterable[Tensor], device: torch.device | str = "cpu"
) -> FrontendConfig:
    """Per-band mean / std of the (unnormalised) features over ``waves`` batches ``(B, T)``.

    Returns a copy of ``cfg`` with ``norm="stats"`` and ``norm_mean`` / ``norm_std`` (length ``C * F``) set,
    ready to be stored in the training config.
    """
    base = dataclasses.replace(cfg, norm="none", norm_mean=[], norm_std=[])
    frontend = build_frontend(base, sample_rate).to(device).eval()
    total = None
    total_sq = None
    count = 0
    for wave in waves:
        y = frontend(wave.to(device)).double()  # (B, C, F, frames)
        s = y.sum(dim=(0, 3))
        sq = y.pow(2).sum(dim=(0, 3))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += y.shape[0] * y.shape[3]
    if total is None or total_sq is None or count == 0:
        raise ValueError("estimate_norm_stats got no batches")
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-5)
    return dataclasses.replace(
        cfg, norm="stats", norm_mean=mean.flatten().tolist(), norm_std=std.flatten().tolist()
    )

