"""Batched, on-device data augmentation for waveforms and spectrograms.

Every augmentation is an :class:`torch.nn.Module` that is active only in ``model.train()`` and is exactly the
identity in ``model.eval()`` (``forward`` returns its input object unchanged). Random parameters are drawn
*per sample* from a :class:`torch.Generator` that lives on the input's device (created lazily, one per
device, seeded from ``AugmentConfig.seed`` and the augmentation's name), so

* nothing is synchronised with the host and nothing loops over the samples of a batch;
* the same seed + the same inputs + the same sequence of calls give the same outputs (on the same device
  type: CPU and CUDA generators produce different streams);
* the training loop can re-seed per epoch / rank with :meth:`RandomAugment.reseed` or :func:`reseed_all`.

Inputs may be float32, float16 or bfloat16 (and float64); the output has the input dtype. Half-precision
inputs are augmented in float32 where the arithmetic needs it (noise power, FFT, interpolation).

Modules
-------
=================  ===================================  ==========================================
name               class                                input -> output
=================  ===================================  ==========================================
``shift``          :class:`TimeShift`                   wave ``[B, ..., T]``: circular roll
``polarity``       :class:`Polarity`                    wave ``[B, ..., T]``: sign flip
``gain``           :class:`Gain`                        wave ``[B, ..., T]``: random gain in dB
``noise``          :class:`AddNoise`                    wave ``[B, ..., T]``: white/pink noise at SNR
``time_stretch``   :class:`SpecTimeStretch`             spec ``[B, C, F, frames]``
``pitch_shift``    :class:`SpecPitchShift`              spec ``[B, C, F, frames]``
``freq_mask``      :class:`FreqMask`                    spec ``[B, C, F, frames]``
``time_mask``      :class:`TimeMask`                    spec ``[B, C, F, frames]``
``mixup``          :class:`Mixup`                       ``(x [B, ...], targets [B, K])``
=================  ===================================  ==========================================

They are registered in :data:`AUGMENTATIONS`; each class has ``from_config(cfg, sample_rate)`` (the recipe,
:class:`~kernels.augment_config.AugmentConfig`, is in :mod:`kernels.augment_config`). The Modules are thin:
they hold the configuration and the generator, return their input unless training, draw the per-sample
parameters and hand them to the pure tensor functions of :mod:`kernels.augment_functional`.
:class:`WaveAugment` and :class:`SpecAugment` chain the enabled ones in a fixed order;
:func:`build_augment` returns the three stages used by the model. The slow, exact, waveform-domain time
stretch / pitch shift (phase vocoder + resampling) expands a corpus offline, at ingest: ``make_shards.py
--offline-augment`` (:mod:`shards.offline_augment`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kernels import augment_functional as AF
from kernels.augment_config import AugmentConfig
from registry import Registry

logger = logging.getLogger(__name__)

AUGMENTATIONS: Registry[type[RandomAugment]] = Registry("augmentation")

#: order in which :class:`WaveAugment` applies its parts (gain before noise so the SNR is of the final level)
WAVE_ORDER = ("shift", "polarity", "gain", "noise")
#: order in which :class:`SpecAugment` applies its parts (masks last so masked regions are exact)
SPEC_ORDER = ("time_stretch", "pitch_shift", "freq_mask", "time_mask")


# ---------------------------------------------------------------------------------------- base + helpers


def _derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for augmentation ``name`` from the base seed: distinct, stable across runs/platforms."""
    digest = hashlib.blake2b(f"{int(seed)}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _check_float(x: Tensor, what: str, min_dim: int) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what}: expected a floating-point tensor, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{what}: expected at least {min_dim} dims with the batch first, got shape {tuple(x.shape)}"
        )


def _check_spec(x: Tensor, what: str) -> None:
    _check_float(x, what, 4)
    if x.dim() != 4:
        raise ValueError(f"{what}: expected a spectrogram [B, C, F, frames], got shape {tuple(x.shape)}")


class RandomAugment(nn.Module):
    """Base of all augmentations: identity in eval, per-device generators, ``reseed``.

    Subclasses set ``name`` (their registry name) and implement ``forward`` (which returns its input
    unchanged unless ``self.training and self.is_active``) and :meth:`from_config`.
    """

    name: str = "augment"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    # -- randomness
    def reseed(self, seed: int) -> None:
        """Restart the random streams from ``seed`` (e.g. ``base + 1000 * epoch + rank``) on every device."""
        self.seed = int(seed)
        self._generators = {}

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This module's generator on ``device`` (created on first use, seeded from ``seed`` and ``name``)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(_derive_seed(self.seed, self.name))
            self._generators[key] = gen
        return gen

    def _rand(self, n: int, device: torch.device) -> Tensor:
        """``n`` float32 uniforms in [0, 1) on ``device``."""
        return torch.rand(n, generator=self.generator(device), device=device)

    def _coin(self, n: int, p: float, device: torch.device) -> Tensor:
        """Per-sample Bernoulli(p) as bool ``[n]``."""
        return self._rand(n, device) < p

    def _uniform(self, n: int, lo: float, hi: float, device: torch.device) -> Tensor:
        return lo + (hi - lo) * self._rand(n, device)

    def _gate(self, values: Tensor, p: float, neutral: float = 1.0) -> Tensor:
        """``values [B]`` where a per-sample Bernoulli(p) coin (drawn now) says so, else ``neutral``."""
        on = self._coin(values.shape[0], p, values.device)
        return torch.where(on, values, torch.full_like(values, neutral))

    def _draw_per_sample(
        self,
        batch: int,
        p: float,
        device: torch.device,
        low: float = 0.0,
        high: float = 1.0,
        transform: Callable[[Tensor], Tensor] | None = None,
        neutral: float = 1.0,
    ) -> Tensor:
        """Per-sample parameters ``[B]``: ``transform(u)``, ``u`` uniform in ``[low, high)``, with probability
        ``p``, else ``neutral``. Draws ``batch`` uniforms, then ``batch`` coins (the order is the stream)."""
        u = self._uniform(batch, low, high, device)
        return self._gate(u if transform is None else transform(u), p, neutral)

    def __getstate__(self) -> dict[str, Any]:
        # generators are device-bound runtime state: a copy / unpickled module re-creates them from the seed
        state = self.__dict__.copy()
        state["_generators"] = {}
        return state

    @property
    def is_active(self) -> bool:
        """False when the parameters make this module a no-op (then ``forward`` returns its input)."""
        return True

    @classmethod
    def from_config(
        cls, cfg: AugmentConfig, sample_rate: int | None = None
    ) -> RandomAugment:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"seed={self.seed}"


def reseed_all(module: nn.Module, seed: int) -> int:
    """Reseed every :class:`RandomAugment` inside ``module`` (e.g. a whole model) from ``seed``.

    Each augmentation still derives its own stream from ``seed`` and its name. Returns how many were reseeded.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, RandomAugment):
            m.reseed(seed)
            n += 1
    return n


def augment_rng_state(module: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module path: {"seed", "generators": {device: state}}}`` of every :class:`RandomAugment` in ``module``.

    What a mid-epoch checkpoint stores so a resumed run draws exactly the augmentation the stopped run would have.
    """
    return {
        name: {"seed": m.seed, "generators": {dev: g.get_state() for dev, g in m._generators.items()}}
        for name, m in module.named_modules()
        if isinstance(m, RandomAugment)
    }


def set_augment_rng_state(module: nn.Module, state: dict[str, dict[str, Any]]) -> None:
    """Inverse of :func:`augment_rng_state` (modules absent from ``state`` are left as they are)."""
    for name, m in module.named_modules():
        if isinstance(m, RandomAugment) and name in state:
            m.seed = int(state[name]["seed"])
            m._generators = {}
            for dev, gen_state in state[name]["generators"].items():
                gen = torch.Generator(device=dev)
                gen.set_state(gen_state)
                m._generators[dev] = gen


# ------------------------------------------------------------------------------------------- waveform


def _wave_input(x: Tensor, what: str) -> Tensor:
    """Accept float ``[B, ..., T]`` (full scale 1.0) or int16 PCM (converted to float32 / 32768)."""
    if torch.is_tensor(x) and x.dtype == torch.int16:
        x = x.float() / 32768.0
    _check_float(x, what, 2)
    return x


@AUGMENTATIONS.register("gain")
class Gain(RandomAugment):
    """Multiply each sample by a random gain, uniform in ``db_range`` dB, with probability ``p``.

    ``x [B, ..., T]`` -> same shape and dtype; the RMS ratio out/in of an augmented sample is
    ``10 ** (g / 20)`` with ``g`` in ``db_range``.
    """

    name = "gain"

    def __init__(self, db_range: tuple[float, float] = (-6.0, 6.0), p: float = 0.5, seed: int = 0) -> None:
        super().__init__(seed)
        self.db_range = (float(db_range[0]), float(db_range[1]))
        self.p = float(p)

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int | None = None) -> Gain:
        return cls(cfg.gain_db, cfg.gain_p, cfg.seed)

    @property
    def is_active(self) -> bool:
        return self.p > 0 and self.db_range != (0.0, 0.0)

    def gains(self, batch: int, device: torch.device) -> Tensor:
        """Per-sample linear gain factors float32 ``[B]`` (1 where not applied)."""
        return self._draw_per_sample(batch, self.p, device, *self.db_range, transform=AF.db_to_amplitude)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.is_active:
            return x
        x = _wave_input(x, "Gain")
        return AF.apply_gain(x, self.gains(x.shape[0], x.device))

    def extra_repr(self) -> str:
        return f"db_range={self.db_range}, p={self.p}, seed={self.seed}"


@AUGMENTATIONS.register("polarity")
class Polarity(RandomAugment):
    """Invert the sign of each sample with probability ``p``. ``x [B, ..., T]`` -> same shape and dtype."""

    name = "polarity"

    def __init__(self, p: float = 0.5, seed: int = 0) -> None:
        super().__init__(seed)
        self.p = float(p)

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int | None = None) -> Polarity:
        return cls(cfg.polarity_p, cfg.seed)

    @property
    def is_active(self) -> bool:
        return self.p > 0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.is_active:
            return x
        x = _wave_input(x, "Polarity")
        return AF.invert_polarity(x, self._coin(x.shape[0], self.p, x.device))

    def extra_repr(self) -> str:
        return f"p={self.p}, seed={self.seed}"


@AUGMENTATIONS.register("shift")
class TimeShift(RandomAugment):
    """Circularly roll each sample along time by a random integer shift, with probability ``p``.

    The shift is uniform in ``[-m, m]`` samples with ``m = min(max_seconds * sample_rate, max_fraction * T)``
    (without a ``sample_rate`` only the fraction limits it).
    ``x [B, ..., T]`` -> same shape and dtype; ``out[b, ..., t] = x[b, ..., (t - s_b) mod T]``.
    """

    name = "shift"

    def __init__(
        self,
        sample_rate: int | None,
        max_seconds: float = 1.0,
        max_fraction: float = 0.5,
        p: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if sample_rate is not None and sample_rate <= 0:
            raise ValueError(f"TimeShift: sample_rate must be > 0 Hz, got {sample_rate}")
        self.sample_rate = None if sample_rate is None else int(sample_rate)
        self.max_seconds = float(max_seconds)
        self.max_fraction = float(max_fraction)
        self.p = float(p)

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int | None = None) -> TimeShift:
        return cls(sample_rate, cfg.shift_max_seconds, cfg.shift_max_fraction, cfg.shift_p, cfg.seed)

    @property
    def is_active(self) -> bool:
        return self.p > 0 and self.max_seconds > 0 and self.max_fraction > 0

    def max_shift(self, num_samples: int) -> int:
        """Largest shift in samples for a clip of ``num_samples``."""
        by_time = math.inf if self.sample_rate is None else self.max_seconds * self.sample_rate
        return int(min(by_time, self.max_fraction * num_samples, num_samples - 1))

    def shifts(self, batch: int, num_samples: int, device: torch.device) -> Tensor:
        """Per-sample shifts int64 ``[B]`` in ``[-m, m]`` (0 where not applied)."""
        m = self.max_shift(num_samples)

        def to_shift(u: Tensor) -> Tensor:  # uniform in [0, 1) -> integer uniform in [-m, m]
            return torch.floor(u * (2 * m + 1)).long().clamp_(max=2 * m) - m

        return self._draw_per_sample(batch, self.p, device, transform=to_shift, neutral=0)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.is_active:
            return x
        x = _wave_input(x, "TimeShift")
        return AF.circular_shift(x, self.shifts(x.shape[0], x.shape[-1], x.device))

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, max_seconds={self.max_seconds}, "
            f"max_fraction={self.max_fraction}, p={self.p}, seed={self.seed}"
        )


@AUGMENTATIONS.register("noise")
class AddNoise(RandomAugment):
    """Add white or pink Gaussian noise at a random SNR (uniform in ``snr_db``), with probability ``p``.

    The SNR is ``10 log10(mean(x^2) / mean(n^2))`` per sample over all non-batch dims, exact up to float
    rounding (the noise is normalised to the target power). Pink noise (power ~ 1/f) is complex Gaussian
    noise shaped by ``1/sqrt(f)`` in the FFT domain and inverse-transformed, on device. A silent sample
    gets no noise (its SNR is undefined). ``x [B, ..., T]`` -> same shape and dtype. Cost: one ``randn`` of
    the batch (+ one inverse FFT for pink), for every sample whatever ``p`` (no data-dependent shapes).
    """

    name = "noise"

    def __init__(
        self,
        snr_db: tuple[float, float] = (15.0, 40.0),
        color: Literal["white", "pink", "both"] = "both",
        p: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if color not in ("white", "pink", "both"):
            raise ValueError(f"AddNoise: color must be white, pink or both, got {color!r}")
        self.snr_db = (float(snr_db[0]), float(snr_db[1]))
        self.color = color
        self.p = float(p)

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int | None = None) -> AddNoise:
        return cls(cfg.noise_snr_db, cfg.noise_color, cfg.noise_p, cfg.seed)

    @property
    def is_active(self) -> bool:
        return self.p > 0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.is_active:
            return x
        x = _wave_input(x, "AddNoise")
        b, dev = x.shape[0], x.device
        wd = AF.work_dtype(x.dtype)
        gen = self.generator(dev)
        snr = self._uniform(b, *self.snr_db, dev)
        on = self._coin(b, self.p, dev)
        if self.color == "white":
            noise = torch.randn(x.shape, generator=gen, device=dev, dtype=wd)
        else:
            pink = (
                self._coin(b, 0.5, dev)
                if self.color == "both"
                else torch.ones(b, dtype=torch.bool, device=dev)
            )
            noise = AF.colored_noise(x.shape, pink, gen, wd)
        return AF.add_noise(x, noise, snr, on)

    def extra_repr(self) -> str:
        return f"snr_db={self.snr_db}, color={self.color!r}, p={self.p}, seed={self.seed}"


class _Chain(nn.Module):
    """Apply child augmentations in order; identity in eval or when none is active."""

    def __init__(self, parts: dict[str, RandomAugment], enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled
        self.parts = nn.ModuleDict(parts)

    @property
    def is_active(self) -> bool:
        return self.enabled and any(p.is_active for p in self.parts.values())

    def reseed(self, seed: int) -> None:
        """Reseed every part (each derives its own stream from ``seed`` and its name)."""
        reseed_all(self, seed)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.is_active:
            return x
        for part in self.parts.values():
            x = part(x)
        return x


class WaveAugment(_Chain):
    """Waveform augmentation chain: circular shift, polarity, gain, additive noise (in that order).

    ``forward(x float [B, T] or [B, ..., T])`` -> same shape and dtype (int16 PCM is accepted and returned
    as float32 / 32768 in training); the identity (the same object) in eval or when ``cfg.enabled`` is False.
    ``sample_rate`` (Hz) converts ``shift_max_seconds`` to samples; pass it (``build_augment`` does).
    """

    def __init__(self, cfg: AugmentConfig, sample_rate: int | None = None) -> None:
        if sample_rate is None and cfg.enabled and cfg.shift_p > 0:
            logger.warning(
                "WaveAugment without sample_rate: the time shift is limited by shift_max_fraction only "
                "(shift_max_seconds=%s is ignored)",
                cfg.shift_max_seconds,
            )
        parts = {name: AUGMENTATIONS.get(name).from_config(cfg, sample_rate) for name in WAVE_ORDER}
        super().__init__({k: v for k, v in parts.items() if v.is_active}, cfg.enabled)


# ---------------------------------------------------------------------------------------- spectrogram


@AUGMENTATIONS.register("time_stretch")
class SpecTimeStretch(RandomAugment):
    """Resample a spectrogram along time by a per-sample rate, keeping the frame count.

    ``rate`` is drawn log-uniformly in ``rate_range`` (>1 = faster: the content is compressed). Output frame
    ``t`` reads input frame ``offset + t * rate`` (linear interpolation). For ``rate < 1`` the stretched
    content is longer than the clip and a random window of it is kept (random ``offset``); for ``rate > 1``
    it is shorter and the tail is filled by looping (``pad="wrap"``) or repeating the last frame
    (``"edge"``). ``x [B, C, F, frames]`` -> same shape and dtype. Unlike a phase vocoder this interpolates
    frame magnitudes (onsets smear slightly when slowing down); it is a cheap approximation of a tempo change.
    """

    name = "time_stretch"

    def __init__(
        self,
        rate_range: tuple[float, float] = (0.8, 1.25),
        p: float = 0.3,
        pad: Literal["wrap", "edge"] = "wrap",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if not 0 < rate_range[0] <= rate_range[1]:
            raise ValueError(f"SpecTimeStretch: rate_range must be 0 < low <= high, got {rate_range}")
        if pad not in ("wrap", "edge"):
            raise ValueError(f"SpecTimeStretch: pad must be wrap or edge, got {pad!r}")
        self.rate_range = (float(rate_range[0]), float(rate_range[1]))
        self.p = float(p)
        self.pad = pad

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int | None = None) -> SpecTimeStretch:
        return cls(cfg.time_stretch_rate, cfg.time_stretch_p, cfg.time_stretch_pad, cfg.seed)

    @property
    def is_active(self) -> bool:
        return self.p > 0 and self.rate_range != (1.0, 1.0)

    def rates(self, batch: int, device: torch.device) -> Tensor:
        """Per-sample rates float32 ``[B]`` (1 where not applied)."""
        lo, hi = math.log(self.rate_range[0]), math.log(self.rate_range[1])
        return self._draw_per_sample(batch, self.p, device, lo, hi, transform=torch.exp)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.is_active:
            return x
        _check_spec(x, "SpecTimeStretch")
        rates = self.rates(x.shape[0], x.device)
        offset_fraction = self._rand(x.shape[0], x.device)  # where the kept window starts when slowing down
        return AF.spec_time_stretch(x, rates, offset_fraction, self.pad)

    def extra_repr(self) -> str:
        return f"rate_range={self.rate_range}, p={self.p}, pad={self.pad!r}, seed={self.seed}"


@AUGMENTATIONS.register("pitch_shift")
class SpecPitchShift(RandomAugment):
    """Resample a spectrogram along frequency by ``2 ** (s / 12)``, ``s`` uniform in ``semitones``, keeping F.

    Output bin ``f`` reads input bin ``f / 2 ** (s / 12)`` (linear interpolation; bins above the top are
    filled with the top bin). This is exact (up to bin resolution) for a *linear*-frequency spectrogram whose
    bin 0 is 0 Hz. On mel bins it is an approximation: mel spacing is roughly linear below ~1 kHz (where it is
    right) and roughly logarithmic above (where a pitch shift is really a constant translation of bins), so
    high-frequency content is moved too far for upward shifts and too little for downward ones. Use small
    ranges (a few semitones), or exact waveform-domain copies at ingest (``make_shards.py --offline-augment``).
    ``x [B, C, F, frames]`` -> same shape and dtype.
    """

    name = "pitch_shift"

    def __init__(self, semitones: tuple[float, float] = (-2.0, 2.0), p: float = 0.3, seed: int = 0) -> None:
        super().__init__(seed)
        if semitones[0] > semitones[1]:
            raise ValueError(f"SpecPitchShift: semitones must be (low, high), got {semitones}")
        self.semitones = (float(semitones[0]), float(semitones[1]))
        self.p = float(p)

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int | None = None) -> SpecPitchShift:
        return cls(cfg.pitch_shift_semitones, cfg.pitch_shift_p, cfg.seed)

    @property
    def is_active(self) -> bool:
        return self.p > 0 and self.semitones != (0.0, 0.0)

    def factors(self, batch: int, device: torch.device) -> Tensor:
        """Per-sample frequency factors ``2 ** (s / 12)`` float32 ``[B]`` (1 where not applied)."""
        return self._draw_per_sample(batch, self.p, device, *self.semitones, transform=AF.semitones_to_ratio)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.is_active:
            return x
        _check_spec(x, "SpecPitchShift")
        return AF.spec_pitch_shift(x, self.factors(x.shape[0], x.device))

    def extra_repr(self) -> str:
        return f"semitones={self.semitones}, p={self.p}, seed={self.seed}"


class _Mask(RandomAugment):
    """``count`` masks per sample along ``dim`` of ``[B, C, F, frames]``; width uniform in {0..max}."""

    dim = -1

    def __init__(
        self,
        count: int,
        max_width: int,
        max_fraction: float = 1.0,
        value: Literal["zero", "mean"] = "mean",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if count < 0 or max_width < 0:
            raise ValueError(
                f"{type(self).__name__}: count and max_width must be >= 0, got {count}, {max_width}"
            )
        if value not in ("zero", "mean"):
            raise ValueError(f"{type(self).__name__}: value must be zero or mean, got {value!r}")
        self.count = int(count)
        self.max_width = int(max_width)
        self.max_fraction = float(max_fraction)
        self.value = value

    @property
    def is_active(self) -> bool:
        return self.count > 0 and self.max_width > 0 and self.max_fraction > 0

    def width_limit(self, size: int) -> int:
        """Largest mask width for an axis of ``size``."""
        return max(0, min(self.max_width, int(self.max_fraction * size), size))

    def masks(self, batch: int, size: int, device: torch.device) -> Tensor:
        """bool ``[B, size]``: True where masked (union of ``count`` intervals per sample)."""
        u = self._rand(2 * batch * self.count, device).view(2, batch, self.count)
        start, width = AF.intervals_from_uniforms(u[0], u[1], size, self.width_limit(size))
        return AF.interval_mask(start, width, size)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.is_active:
            return x
        _check_spec(x, type(self).__name__)
        m = self.masks(x.shape[0], x.shape[self.dim], x.device)
        return AF.mask_along(x, m, self.dim, self.value)

    def extra_repr(self) -> str:
        return (
            f"count={self.count}, max_width={self.max_width}, max_fraction={self.max_fraction}, "
            f"value={self.value!r}, seed={self.seed}"
        )


@AUGMENTATIONS.register("freq_mask")
class FreqMask(_Mask):
    """SpecAugment frequency masks: ``count`` bands of ``0..max_width`` bins per sample, same on all channels.

    ``x [B, C, F, frames]`` -> same shape and dtype; masked bins are 0 or the sample's mean.
    """

    name = "freq_mask"
    dim = -2

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int | None = None) -> FreqMask:
        return cls(cfg.freq_masks, cfg.freq_mask_width, 1.0, cfg.mask_value, cfg.seed)


@AUGMENTATIONS.register("time_mask")
class TimeMask(_Mask):
    """SpecAugment time masks: ``count`` spans of ``0..min(max_width, max_fraction*frames)`` frames per sample.

    ``x [B, C, F, frames]`` -> same shape and dtype; masked frames are 0 or the sample's mean.
    """

    name = "time_mask"
    dim = -1

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int | None = None) -> TimeMask:
        return cls(cfg.time_masks, cfg.time_mask_width, cfg.time_mask_max_fraction, cfg.mask_value, cfg.seed)


class SpecAugment(_Chain):
    """Spectrogram augmentation chain: time stretch, pitch shift, frequency masks, time masks (in that order).

    ``forward(x [B, C, F, frames])`` -> same shape and dtype; the identity (the same object) in eval or when
    ``cfg.enabled`` is False.
    """

    def __init__(self, cfg: AugmentConfig, sample_rate: int | None = None) -> None:
        parts = {name: AUGMENTATIONS.get(name).from_config(cfg, sample_rate) for name in SPEC_ORDER}
        super().__init__({k: v for k, v in parts.items() if v.is_active}, cfg.enabled)


# ---------------------------------------------------------------------------------------------- mixup


@AUGMENTATIONS.register("mixup")
class Mixup(RandomAugment):
    """Mixup within the batch with a per-sample ``lambda ~ Beta(alpha, alpha)``.

    ``forward(x [B, ...], targets float [B, K])`` -> ``(x_mixed, targets_mixed)`` with, for every sample ``i``,
    ``x_mixed[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]]`` and the same for targets, where ``perm`` is a
    random permutation of the batch and ``lam[i] = 1`` for samples not selected (probability ``1 - p``).
    Soft/one-hot targets that sum to 1 still sum to 1. ``lambda`` is sampled as ``G1 / (G1 + G2)`` with
    ``G ~ Gamma(alpha)`` from the module's generator (reproducible). Identity (the same objects) in eval.
    """

    name = "mixup"

    def __init__(self, alpha: float = 0.4, p: float = 0.5, seed: int = 0) -> None:
        super().__init__(seed)
        if not alpha > 0:
            raise ValueError(f"Mixup: alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)
        self.p = float(p)
        self.enabled = True  # AugmentConfig.enabled master switch

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int | None = None) -> Mixup:
        m = cls(cfg.mixup_alpha, cfg.mixup_p, cfg.seed)
        m.enabled = cfg.enabled
        return m

    @property
    def is_active(self) -> bool:
        return self.enabled and self.p > 0

    def params(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Draw ``(lam float32 [B], perm int64 [B])`` from the module's generator."""
        gen = self.generator(device)
        conc = torch.full((2, batch), self.alpha, device=device, dtype=torch.float32)
        g = torch._standard_gamma(conc, generator=gen)  # (2, B)
        lam = self._gate(g[0] / (g[0] + g[1]).clamp_min(torch.finfo(torch.float32).tiny), self.p)
        perm = torch.randperm(batch, generator=gen, device=device)
        return lam, perm

    def forward(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        if not self.training or not self.is_active:
            return x, targets
        _check_float(x, "Mixup x", 1)
        if not torch.is_tensor(targets) or not targets.is_floating_point() or targets.dim() != 2:
            got = (
                f"{targets.dtype} {tuple(targets.shape)}"
                if torch.is_tensor(targets)
                else type(targets).__name__
            )
            raise TypeError(
                f"Mixup: targets must be float [B, K] (one-hot or soft), got {got}; "
                "convert class indices with F.one_hot(labels, K).float()"
            )
        if targets.shape[0] != x.shape[0]:
            raise ValueError(f"Mixup: batch sizes differ: x {tuple(x.shape)}, targets {tuple(targets.shape)}")
        lam, perm = self.params(x.shape[0], x.device)
        return AF.mixup(x, targets, lam, perm)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, p={self.p}, seed={self.seed}"


def build_augment(cfg: AugmentConfig, sample_rate: int) -> tuple[WaveAugment, SpecAugment, Mixup]:
    """The three training-time stages: ``(WaveAugment, SpecAugment, Mixup)`` from one config.

    Each is the identity in eval mode and when ``cfg.enabled`` is False.
    """
    cfg.validate()
    return WaveAugment(cfg, sample_rate), SpecAugment(cfg, sample_rate), Mixup.from_config(cfg, sample_rate)


__all__ = [
    "AUGMENTATIONS",
    "AddNoise",
    "FreqMask",
    "Gain",
    "Mixup",
    "Polarity",
    "RandomAugment",
    "SpecAugment",
    "SpecPitchShift",
    "SpecTimeStretch",
    "TimeMask",
    "TimeShift",
    "WaveAugment",
    "build_augment",
    "reseed_all",
]
