"""The augmentation recipe: :class:`AugmentConfig`, the ``model.augment`` section of a run config.

Plain values only (probabilities, ranges in dB / semitones / seconds, mask sizes), checked by
:meth:`AugmentConfig.validate`; :func:`kernels.augment.build_augment` turns it into the training-time Modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class AugmentConfig:
    """Augmentation recipe. Every augmentation is switched off by its probability (or mask count) = 0.

    Probabilities are per sample: each sample of a batch independently gets the augmentation with
    probability ``*_p`` and its own random parameters. The defaults are a modest recipe for 3-30 s music
    clips fed to a log-mel CNN.
    """

    enabled: bool = True
    """Master switch: False makes every stage the identity (also in training)."""
    seed: int = 0
    """Base seed of the per-device generators (each augmentation derives its own stream from it)."""

    # --- waveform ([B, T], float, full scale 1.0)
    gain_p: float = 0.5
    gain_db: tuple[float, float] = (-6.0, 6.0)
    """Gain range in dB, drawn uniformly per sample."""
    noise_p: float = 0.3
    noise_snr_db: tuple[float, float] = (15.0, 40.0)
    """Signal-to-noise ratio range in dB (noise power relative to the clip's mean power), uniform."""
    noise_color: Literal["white", "pink", "both"] = "both"
    """With "both", each noisy sample gets white or pink noise with equal probability."""
    shift_p: float = 0.5
    shift_max_seconds: float = 1.0
    """Largest circular shift, in seconds (either direction)."""
    shift_max_fraction: float = 0.5
    """...and at most this fraction of the clip length."""
    polarity_p: float = 0.5

    # --- spectrogram ([B, C, F, frames])
    freq_masks: int = 2
    """Number of frequency masks per sample (0 disables)."""
    freq_mask_width: int = 12
    """Largest frequency-mask width in bins; widths are uniform in {0, ..., freq_mask_width}."""
    time_masks: int = 2
    """Number of time masks per sample (0 disables)."""
    time_mask_width: int = 24
    """Largest time-mask width in frames; widths are uniform in {0, ..., max width}."""
    time_mask_max_fraction: float = 0.2
    """...and at most this fraction of the frames (SpecAugment's upper bound ``p``)."""
    mask_value: Literal["zero", "mean"] = "mean"
    """Masked bins become 0 or the sample's mean over (C, F, frames)."""
    time_stretch_p: float = 0.3
    time_stretch_rate: tuple[float, float] = (0.8, 1.25)
    """Speed-up factor range (>1 = faster/shorter content), drawn log-uniformly per sample."""
    time_stretch_pad: Literal["wrap", "edge"] = "wrap"
    """How a sped-up (rate > 1) spectrogram is filled to its frame count: loop it / repeat the last frame."""
    pitch_shift_p: float = 0.3
    pitch_shift_semitones: tuple[float, float] = (-2.0, 2.0)
    """Pitch-shift range in semitones, uniform per sample."""

    # --- mixup (on whatever the model mixes: features or waveforms)
    mixup_p: float = 0.5
    """Fraction of samples that are mixed with another sample of the batch."""
    mixup_alpha: float = 0.4
    """lambda ~ Beta(alpha, alpha) per sample."""

    def validate(self) -> None:
        """Raise ``ValueError`` for values that cannot be right (``engine.config.from_dict`` reports it as a
        ``ConfigError`` with the same message)."""
        for name in (
            "gain_p",
            "noise_p",
            "shift_p",
            "polarity_p",
            "time_stretch_p",
            "pitch_shift_p",
            "mixup_p",
        ):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0 or math.isnan(p):
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {p}")
        for name in ("gain_db", "noise_snr_db", "time_stretch_rate", "pitch_shift_semitones"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"augment.{name} must be finite, got {(lo, hi)}")
            if lo > hi:
                raise ValueError(f"augment.{name} must be (low, high) with low <= high, got {(lo, hi)}")
        if self.time_stretch_rate[0] <= 0:
            raise ValueError(
                f"augment.time_stretch_rate must be > 0 (a speed factor), got {self.time_stretch_rate}"
            )
        if max(abs(v) for v in self.gain_db) > 60:
            raise ValueError(f"augment.gain_db beyond +-60 dB is not an augmentation: {self.gain_db}")
        if max(abs(v) for v in self.pitch_shift_semitones) > 24:
            raise ValueError(
                "augment.pitch_shift_semitones must stay within +-24 semitones, "
                f"got {self.pitch_shift_semitones}"
            )
        if self.noise_color not in ("white", "pink", "both"):
            raise ValueError(f"augment.noise_color must be white, pink or both, got {self.noise_color!r}")
        if self.mask_value not in ("zero", "mean"):
            raise ValueError(f"augment.mask_value must be zero or mean, got {self.mask_value!r}")
        if self.time_stretch_pad not in ("wrap", "edge"):
            raise ValueError(f"augment.time_stretch_pad must be wrap or edge, got {self.time_stretch_pad!r}")
        if self.shift_max_seconds < 0:
            raise ValueError(f"augment.shift_max_seconds must be >= 0, got {self.shift_max_seconds}")
        for name in ("shift_max_fraction", "time_mask_max_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {v}")
        for name in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if not self.mixup_alpha > 0:
            raise ValueError(f"augment.mixup_alpha must be > 0 (Beta(alpha, alpha)), got {self.mixup_alpha}")


__all__ = ["AugmentConfig"]
