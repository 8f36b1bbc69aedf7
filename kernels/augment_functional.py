"""Pure tensor functions of the augmentations (torchaudio-style ``functional``; the Modules are in
:mod:`kernels.augment`).

Every function here is stateless and batched over the leading dimension: it takes the per-sample random
parameters (gains, shifts, rates, masks, mixing weights...) as tensors and applies them, with no Python loop
over samples and no host synchronisation. Drawing the parameters (from each augmentation's own generator) is
the Modules' job; the one exception is :func:`colored_noise`, whose noise *is* the random draw, so it takes
the generator.

Conventions: waveforms are ``[B, ..., T]`` (full scale 1.0), spectrograms ``[B, C, F, frames]``, per-sample
parameters ``[B]``. Outputs have the input dtype; float16/bfloat16 inputs are computed in float32 where the
arithmetic needs it (:func:`work_dtype`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "work_dtype",
    "per_sample",
    "db_to_amplitude",
    "semitones_to_ratio",
    "apply_gain",
    "invert_polarity",
    "circular_shift",
    "colored_noise",
    "add_noise",
    "interpolate_along",
    "spec_time_stretch",
    "spec_pitch_shift",
    "intervals_from_uniforms",
    "interval_mask",
    "mask_along",
    "mixup",
]

_HALF = (torch.float16, torch.bfloat16)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are augmented in float32; float32/float64 in themselves."""
    return torch.float32 if dtype in _HALF else dtype


def per_sample(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample ``[B]`` tensor to broadcast against ``x [B, ...]``."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


# ------------------------------------------------------------------------------------------- parameters


def db_to_amplitude(db: Tensor) -> Tensor:
    """Gain in dB -> linear amplitude factor ``10 ** (db / 20)``."""
    return torch.pow(10.0, db / 20.0)


def semitones_to_ratio(semitones: Tensor) -> Tensor:
    """Pitch shift in semitones -> frequency ratio ``2 ** (s / 12)``."""
    return torch.pow(2.0, semitones / 12.0)


# ------------------------------------------------------------------------------------------- waveform


def apply_gain(x: Tensor, gains: Tensor) -> Tensor:
    """``x [B, ..., T]`` times the linear per-sample ``gains [B]`` -> same shape and dtype."""
    return x * per_sample(gains, x).to(x.dtype)


def invert_polarity(x: Tensor, flip: Tensor) -> Tensor:
    """Negate the samples of ``x [B, ..., T]`` where ``flip`` (bool ``[B]``) is True -> same shape and dtype."""
    sign = 1.0 - 2.0 * flip.to(torch.float32)  # (B,) in {+1, -1}
    return x * per_sample(sign, x).to(x.dtype)


def circular_shift(x: Tensor, shifts: Tensor) -> Tensor:
    """Roll each sample of ``x [B, ..., T]`` along time by ``shifts`` (int ``[B]``, in samples, either sign).

    ``out[b, ..., t] = x[b, ..., (t - shifts[b]) mod T]``, as one gather (no loop over the batch).
    """
    n = x.shape[-1]
    # (B, 1.., T) source index of each output sample
    idx = torch.remainder(torch.arange(n, device=x.device) - shifts[:, None], n)
    idx = idx.reshape(x.shape[0], *([1] * (x.dim() - 2)), n).expand_as(x)
    return torch.gather(x, -1, idx)


def colored_noise(shape: torch.Size, pink: Tensor, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Gaussian noise ``[B, ..., T]`` of ``dtype`` drawn in the frequency domain from ``generator``, no DC.

    ``pink`` bool ``[B]`` (on the generator's device) selects per sample a 1/f power spectrum (amplitude
    ``1/sqrt(f)``) instead of a flat one; a single complex draw + one inverse FFT serves both colours, so no
    white->pink forward FFT.
    """
    n = shape[-1]
    k = n // 2 + 1
    device = pink.device
    z = torch.view_as_complex(torch.randn((*shape[:-1], k, 2), generator=generator, device=device, dtype=dtype))
    f = torch.arange(k, device=device, dtype=dtype)
    flat = (f > 0).to(dtype)
    one_over_sqrt_f = flat * torch.rsqrt(f.clamp(min=1.0))
    bshape = (shape[0], *([1] * (len(shape) - 1)))
    amp = torch.where(pink.reshape(bshape), one_over_sqrt_f, flat)  # (B, 1.., K)
    return torch.fft.irfft(z * amp, n=n, dim=-1)


def add_noise(x: Tensor, noise: Tensor, snr_db: Tensor, on: Tensor | None = None) -> Tensor:
    """``x [B, ..., T]`` plus ``noise`` (same shape, in :func:`work_dtype` of ``x``) scaled to ``snr_db [B]``.

    The SNR is ``10 log10(mean(x^2) / mean(n^2))`` per sample over all non-batch dims, exact up to float
    rounding. A silent sample gets no noise (its SNR is undefined), nor do samples where ``on`` (bool ``[B]``)
    is False. The signal power is a random parameter, not differentiated. -> same shape and dtype as ``x``.
    """
    wd = work_dtype(x.dtype)
    dims = tuple(range(1, x.dim()))
    xw = x.detach().to(wd)
    p_sig = xw.square().mean(dim=dims)  # (B,)
    p_noise = noise.square().mean(dim=dims).clamp_min(torch.finfo(wd).tiny)
    scale = torch.sqrt(p_sig / p_noise * torch.pow(10.0, -snr_db.to(wd) / 10.0))
    if on is not None:
        scale = torch.where(on, scale, torch.zeros_like(scale))
    return (x.to(wd) + noise * per_sample(scale, x)).to(x.dtype)


# ---------------------------------------------------------------------------------------- spectrogram


def interpolate_along(x: Tensor, pos: Tensor, dim: int, wrap: bool) -> Tensor:
    """Linear interpolation of ``x [B, C, F, N]`` at per-sample fractional positions along ``dim``.

    ``pos [B, M]`` are input indices (float) for each output index along ``dim`` (-1 = frames, -2 = bins);
    returns ``[B, C, F, M]`` or ``[B, C, M, N]``. Out-of-range positions wrap around (``wrap``) or clamp to
    the edge. An integer position returns the input value exactly.
    """
    n = x.shape[dim]
    i0 = torch.floor(pos)
    w = (pos - i0).to(x.dtype)
    i0 = i0.long()
    i1 = i0 + 1
    if wrap:
        i0, i1 = torch.remainder(i0, n), torch.remainder(i1, n)
    else:
        i0, i1 = i0.clamp(0, n - 1), i1.clamp(0, n - 1)
    b, m = pos.shape
    shape = (b, 1, 1, m) if dim == -1 else (b, 1, m, 1)
    out_shape = list(x.shape)
    out_shape[dim] = m
    i0 = i0.reshape(shape).expand(out_shape)
    i1 = i1.reshape(shape).expand(out_shape)
    w = w.reshape(shape)
    x0 = torch.gather(x, dim, i0)
    x1 = torch.gather(x, dim, i1)
    return x0 + w * (x1 - x0)


def spec_time_stretch(
    x: Tensor, rates: Tensor, offset_fraction: Tensor, pad: Literal["wrap", "edge"] = "wrap"
) -> Tensor:
    """Resample ``x [B, C, F, frames]`` along time by per-sample speed factors ``rates [B]``, keeping frames.

    Output frame ``t`` reads input frame ``offset + t * rate`` (linear interpolation), with ``offset =
    offset_fraction * (frames - 1) * max(0, 1 - rate)``: for ``rate < 1`` the stretched content is longer
    than the clip and ``offset_fraction [B]`` in [0, 1) picks which window of it is kept; for ``rate > 1``
    it is shorter and the tail is filled by looping (``pad="wrap"``) or repeating the last frame
    (``"edge"``). Samples with ``rate == 1`` are returned exactly. -> same shape and dtype.
    """
    n, dev = x.shape[-1], x.device
    offset = offset_fraction * (n - 1) * (1.0 - rates).clamp(min=0.0)  # (B,) window start in input frames
    t = torch.arange(n, device=dev, dtype=torch.float32)
    pos = offset[:, None] + t[None, :] * rates[:, None]  # (B, frames) input frame of each output frame
    out = interpolate_along(x.to(work_dtype(x.dtype)), pos, -1, wrap=pad == "wrap").to(x.dtype)
    return torch.where(per_sample(rates != 1.0, x), out, x)


def spec_pitch_shift(x: Tensor, ratios: Tensor) -> Tensor:
    """Resample ``x [B, C, F, frames]`` along frequency by per-sample ``ratios [B]``, keeping F.

    Output bin ``f`` reads input bin ``f / ratio`` (linear interpolation; bins above the top are filled with
    the top bin): exact up to bin resolution for a linear-frequency spectrogram whose bin 0 is 0 Hz (see
    :class:`kernels.augment.SpecPitchShift` for mel bins). Samples with ``ratio == 1`` are returned exactly.
    -> same shape and dtype.
    """
    nf, dev = x.shape[-2], x.device
    f = torch.arange(nf, device=dev, dtype=torch.float32)
    pos = f[None, :] / ratios[:, None]  # (B, F) input bin of each output bin
    out = interpolate_along(x.to(work_dtype(x.dtype)), pos, -2, wrap=False).to(x.dtype)
    return torch.where(per_sample(ratios != 1.0, x), out, x)


def intervals_from_uniforms(
    u_width: Tensor, u_start: Tensor, size: int, max_width: int
) -> tuple[Tensor, Tensor]:
    """Uniforms in [0, 1) ``[B, count]`` -> float ``(start, width)`` ``[B, count]`` of intervals in ``[0, size)``.

    ``width`` is uniform in ``{0, ..., max_width}`` (``max_width <= size``), then ``start`` uniform in
    ``{0, ..., size - width}``, so every interval lies inside the axis.
    """
    width = torch.floor(u_width * (max_width + 1)).clamp_(max=max_width)
    start = torch.floor(u_start * (size - width + 1)).clamp_(max=size - width)
    return start, width


def interval_mask(start: Tensor, width: Tensor, size: int) -> Tensor:
    """bool ``[B, size]``: True at the indices ``start <= i < start + width`` of any of the ``count``
    intervals per sample (``start``, ``width`` ``[B, count]``, in indices)."""
    i = torch.arange(size, device=start.device, dtype=torch.float32)
    inside = (i >= start[..., None]) & (i < (start + width)[..., None])  # (B, count, size)
    return inside.any(dim=1)


def mask_along(x: Tensor, mask: Tensor, dim: int, value: Literal["zero", "mean"] = "mean") -> Tensor:
    """Set ``x [B, C, F, frames]`` to ``value`` where ``mask`` (bool ``[B, size]``) is True along ``dim``.

    ``dim`` is -2 (frequency bins, ``size = F``) or -1 (frames, ``size = frames``); the same mask applies to
    every channel. ``value`` is 0 or the sample's mean over (C, F, frames). -> same shape and dtype.
    """
    if dim not in (-1, -2):
        raise ValueError(f"mask_along: dim must be -1 (frames) or -2 (bins), got {dim}")
    m = mask[:, None, None, :] if dim == -1 else mask[:, None, :, None]
    if value == "zero":
        fill = torch.zeros((), dtype=x.dtype, device=x.device)
    else:
        fill = x.detach().to(work_dtype(x.dtype)).mean(dim=(1, 2, 3)).to(x.dtype)
        fill = per_sample(fill, x)
    return torch.where(m, fill, x)


# ---------------------------------------------------------------------------------------------- mixup


def mixup(x: Tensor, targets: Tensor, lam: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """Mix every sample with another of the batch: ``out[i] = lam[i] * v[i] + (1 - lam[i]) * v[perm[i]]``.

    Applied to ``x [B, ...]`` and to ``targets float [B, K]`` (which may live on another device) with the same
    ``lam float [B]`` and ``perm int64 [B]``; targets that sum to 1 still sum to 1, and ``lam == 1`` leaves a
    sample as it is. -> ``(x_mixed, targets_mixed)`` in the input dtypes.
    """
    wd = work_dtype(x.dtype)
    lx = per_sample(lam, x).to(wd)
    xm = (lx * x.to(wd) + (1.0 - lx) * x[perm].to(wd)).to(x.dtype)
    lt = lam.to(device=targets.device, dtype=work_dtype(targets.dtype))[:, None]
    perm_t = perm.to(targets.device)
    tm = (lt * targets + (1.0 - lt) * targets[perm_t]).to(targets.dtype)
    return xm, tm
