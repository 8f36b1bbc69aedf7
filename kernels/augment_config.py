"""The augmentation recipe: :class:`AugmentConfig`, the ``model.augment`` section of a run config.

Plain values only (probabilities, ranges in dB / semitones / seconds, mask sizes), each field's allowed range
declared with :func:`registry.fields.bounded` and checked by :meth:`AugmentConfig.validate`; :func:`kernels.augment.build_augment` turns it into the training-time Modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from registry.fields import bounded, check_bounds

PROBABILITY = {"ge": 0.0, "le": 1.0, "what": "a probability"}


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
    gain_p: float = bounded(0.5, **PROBABILITY)
    gain_db: tuple[float, float] = bounded((-6.0, 6.0), ge=-60, le=60, unit="dB", note="beyond is not an augmentation")
    """Gain range in dB, drawn uniformly per sample."""
    noise_p: float = bounded(0.3, **PROBABILITY)
    noise_snr_db: tuple[float, float] = bounded((15.0, 40.0), unit="dB")
    """Signal-to-noise ratio range in dB (noise power relative to the clip's mean power), uniform."""
    noise_color: Literal["white", "pink", "both"] = "both"
    """With "both", each noisy sample gets white or pink noise with equal probability."""
    shift_p: float = bounded(0.5, **PROBABILITY)
    shift_max_seconds: float = bounded(1.0, ge=0, unit="s")
    """Largest circular shift, in seconds (either direction)."""
    shift_max_fraction: float = bounded(0.5, ge=0, le=1)
    """...and at most this fraction of the clip length."""
    polarity_p: float = bounded(0.5, **PROBABILITY)

    # --- spectrogram ([B, C, F, frames])
    freq_masks: int = bounded(2, ge=0)
    """Number of frequency masks per sample (0 disables)."""
    freq_mask_width: int = bounded(12, ge=0)
    """Largest frequency-mask width in bins; widths are uniform in {0, ..., freq_mask_width}."""
    time_masks: int = bounded(2, ge=0)
    """Number of time masks per sample (0 disables)."""
    time_mask_width: int = bounded(24, ge=0)
    """Largest time-mask width in frames; widths are uniform in {0, ..., max width}."""
    time_mask_max_fraction: float = bounded(0.2, ge=0, le=1)
    """...and at most this fraction of the frames (SpecAugment's upper bound ``p``)."""
    mask_value: Literal["zero", "mean"] = "mean"
    """Masked bins become 0 or the sample's mean over (C, F, frames)."""
    time_stretch_p: float = bounded(0.3, **PROBABILITY)
    time_stretch_rate: tuple[float, float] = bounded((0.8, 1.25), gt=0, note="a speed factor")
    """Speed-up factor range (>1 = faster/shorter content), drawn log-uniformly per sample."""
    time_stretch_pad: Literal["wrap", "edge"] = "wrap"
    """How a sped-up (rate > 1) spectrogram is filled to its frame count: loop it / repeat the last frame."""
    pitch_shift_p: float = bounded(0.3, **PROBABILITY)
    pitch_shift_semitones: tuple[float, float] = bounded((-2.0, 2.0), ge=-24, le=24, unit="semitones")
    """Pitch-shift range in semitones, uniform per sample."""

    # --- mixup (on whatever the model mixes: features or waveforms)
    mixup_p: float = bounded(0.5, **PROBABILITY)
    """Fraction of samples that are mixed with another sample of the batch."""
    mixup_alpha: float = bounded(0.4, gt=0, note="Beta(alpha, alpha)")
    """lambda ~ Beta(alpha, alpha) per sample."""

    def validate(self) -> None:
        """Raise ``ValueError`` for values that cannot be right: a number out of its field's range
        (:func:`registry.fields.check_bounds`), a (low, high) range upside down (``engine.config.from_dict``
        reports it as a ``ConfigError`` with the same message)."""
        check_bounds(self, "augment")
        for name in ("gain_db", "noise_snr_db", "time_stretch_rate", "pitch_shift_semitones"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"augment.{name} must be (low, high) with low <= high, got {(lo, hi)}")
        if self.noise_color not in ("white", "pink", "both"):
            raise ValueError(f"augment.noise_color must be white, pink or both, got {self.noise_color!r}")
        if self.mask_value not in ("zero", "mean"):
            raise ValueError(f"augment.mask_value must be zero or mean, got {self.mask_value!r}")
        if self.time_stretch_pad not in ("wrap", "edge"):
            raise ValueError(f"augment.time_stretch_pad must be wrap or edge, got {self.time_stretch_pad!r}")


__all__ = ["AugmentConfig"]
