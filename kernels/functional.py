"""Pure tensor functions of the feature front end (torchaudio-style ``functional``).

Every function here is stateless, batched over the leading dimension, free of Python loops over samples and
differentiable where the maths is. The Modules in :mod:`kernels.features` hold the constant matrices these
functions take (windows, filterbanks, DCT and delta operators) as buffers.

Conventions: waveforms are ``(B, T)`` in samples; spectrograms are ``(B, F, frames)`` with the frequency axis
before time (librosa's layout), so filterbanks are applied as ``fb @ S`` with ``fb`` of shape ``(F_out, F_in)``.
The parity of each function with librosa is stated in its docstring and checked in
``tests/kernels/test_features_librosa.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "to_float_wave",
    "power_spectrogram",
    "apply_filterbank",
    "power_to_db",
    "normalize_frames",
    "savgol_operators",
    "savgol_delta",
    "chroma_filterbank",
    "estimate_tuning",
    "out_frames",
]

INT16_SCALE = 1.0 / 32768.0
# np.finfo(np.float32).tiny: librosa.util.normalize's default threshold for float32 input
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def out_frames(num_samples: int, hop_length: int) -> int:
    """Number of STFT frames for ``num_samples`` samples with ``center=True``: ``1 + num_samples // hop``."""
    return 1 + num_samples // hop_length


def to_float_wave(wave: Tensor) -> Tensor:
    """``(B, T)`` int16 or floating waveform -> float32 ``(B, T)``; int16 is scaled by 1/32768 to [-1, 1).

    Raises ``ValueError`` for other ranks or integer dtypes, so a wrong batch fails with a clear message.
    """
    if wave.dim() != 2:
        raise ValueError(f"expected a waveform batch of shape (B, T), got shape {tuple(wave.shape)}")
    if wave.dtype == torch.int16:
        return wave.to(torch.float32) * INT16_SCALE
    if not wave.is_floating_point():
        raise ValueError(f"expected int16 or floating waveform, got dtype {wave.dtype}")
    return wave.to(torch.float32)


def power_spectrogram(
    wave: Tensor, window: Tensor, n_fft: int, hop_length: int, win_length: int | None = None
) -> Tensor:
    """Power STFT ``|X|^2`` of float waveforms ``(B, T)`` -> ``(B, n_fft // 2 + 1, 1 + T // hop_length)``.

    ``center=True`` with zero padding (``pad_mode='constant'``, librosa >= 0.10's default) and the given
    window (periodic Hann for librosa parity); equals ``np.abs(librosa.stft(y, ...)) ** 2``. ``re^2 + im^2``
    keeps the gradient finite where the spectrum is exactly zero. The result is a view with the frequency axis
    contiguous (strides ``(frames * F, 1, F)``), which ``fb @ S`` consumes without a copy.
    """
    spec = torch.stft(
        wave,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length if win_length is not None else n_fft,
        window=window,
        center=True,
        pad_mode="constant",
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # (B, n_freq, frames) complex64, stored frequency-contiguous (a transposed view)
    # square the real and imaginary parts in storage order (contiguous, no strided reduction), and hand the
    # result back as a (B, n_freq, frames) view: the filterbank GEMMs read it transposed at no cost
    ri = torch.view_as_real(spec.transpose(1, 2))  # (B, frames, n_freq, 2) contiguous
    return (ri[..., 0].square() + ri[..., 1].square()).transpose(1, 2)


def apply_filterbank(fb: Tensor, spec: Tensor) -> Tensor:
    """``fb (F_out, F_in) @ spec (B, F_in, frames) -> (B, F_out, frames)`` (no transposes, one batched GEMM)."""
    return torch.matmul(fb, spec)


def power_to_db(
    power: Tensor, amin: float = 1e-10, ref: float = 1.0, top_db: float | None = 80.0, eps_dims: int = 2
) -> Tensor:
    """``10 log10(max(amin, S)) - 10 log10(ref)``, clipped to ``top_db`` below the maximum of **each sample**.

    ``power`` is ``(B, ...)``; the maximum for ``top_db`` is taken over all dims but the first, so a batch row
    equals ``librosa.power_to_db(S, ref=ref, amin=amin, top_db=top_db)`` on that clip alone.
    """
    db = 10.0 * torch.log10(torch.clamp(power, min=amin))
    db = db - 10.0 * math.log10(max(amin, ref))
    if top_db is not None:
        peak = db.flatten(1).amax(dim=1)  # (B,)
        floor = (peak - top_db).view([-1] + [1] * (db.dim() - 1))
        db = torch.maximum(db, floor)
    return db


def normalize_frames(x: Tensor, norm: float | None, dim: int = -2, threshold: float = FLOAT32_TINY) -> Tensor:
    """Normalise each frame along ``dim`` to unit ``norm`` (``inf``: max-abs), like ``librosa.util.normalize``.

    Frames whose norm is below ``threshold`` are left as they are (librosa's ``fill=None``), so silence stays
    zero instead of becoming NaN. ``norm=None`` returns ``x`` unchanged.
    """
    if norm is None:
        return x
    mag = x.abs()
    if math.isinf(norm):
        length = mag.amax(dim=dim, keepdim=True)
    elif norm == 1.0:
        length = mag.sum(dim=dim, keepdim=True)
    else:
        length = mag.pow(norm).sum(dim=dim, keepdim=True).pow(1.0 / norm)
    length = torch.where(length < threshold, torch.ones_like(length), length)
    return x / length


def savgol_operators(width: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Savitzky-Golay derivative as linear operators: ``(kernel (width,), left (h, width), right (h, width))``.

    Equals ``scipy.signal.savgol_filter(x, width, polyorder=order, deriv=order, delta=1, mode='interp')``,
    which is what ``librosa.feature.delta(x, width, order, mode='interp')`` calls: interior frames are the
    derivative of the least-squares polynomial over the centred window (``kernel``, applied as correlation);
    the first / last ``h = width // 2`` frames are the derivative of the polynomial fitted to the first / last
    ``width`` frames, evaluated at their own positions (``left`` / ``right`` rows). Computed in float64.
    """
    if width < 3 or width % 2 == 0:
        raise ValueError(f"delta width must be odd and >= 3, got {width}")
    if order < 1 or order >= width:
        raise ValueError(f"delta order must be in [1, width), got {order}")
    t = np.arange(width, dtype=np.float64)
    vander = t[:, None] ** np.arange(order + 1)[None, :]  # (width, order + 1)
    pinv = np.linalg.pinv(vander)  # (order + 1, width): window values -> polynomial coefficients

    def deriv_row(pos: float) -> np.ndarray:
        # d^order/dt^order of sum_k c_k t^k at t = pos, as a linear form in c
        k = np.arange(order + 1)
        fall = np.array([math.perm(int(kk), order) if kk >= order else 0 for kk in k], dtype=np.float64)
        powers = np.where(k >= order, float(pos) ** np.maximum(k - order, 0), 0.0)
        return (fall * powers) @ pinv  # (width,)

    half = width // 2
    kernel = deriv_row(half)
    left = np.stack([deriv_row(i) for i in range(half)])
    right = np.stack([deriv_row(width - half + i) for i in range(half)])
    return kernel, left, right


def savgol_delta(
    x: Tensor, kernel: Tensor | Sequence[Sequence[float]], left: Tensor, right: Tensor
) -> Tensor:
    """Apply :func:`savgol_operators` along the last (time) axis of ``x (..., frames)``.

    One operator (``kernel (width,)``, ``left`` / ``right (h, width)``) -> ``(..., frames)``; ``K`` stacked
    operators (``kernel (K, width)``, ``left`` / ``right (K, h, width)``, e.g. orders 1 and 2 at once) ->
    ``(..., K, frames)``. The interior is ``width`` shifted multiply-adds per operator (for a 9-tap filter
    this is ~10x faster on CPU than a windowed GEMM or a 1-channel conv); the edges are one small GEMM each.
    Pass ``kernel`` as nested Python floats to avoid reading a device tensor back. Needs
    ``frames >= width`` (as librosa's ``mode='interp'`` does).
    """
    single = left.dim() == 2
    if single:
        left, right = left.unsqueeze(0), right.unsqueeze(0)
    coeffs = kernel.tolist() if isinstance(kernel, Tensor) else kernel
    if single and coeffs and not isinstance(coeffs[0], (list, tuple)):
        coeffs = [coeffs]
    n_ops, half, width = left.shape
    frames = x.shape[-1]
    if frames < width:
        raise ValueError(f"delta with width {width} needs at least {width} frames, got {frames}")
    lead = x.shape[:-1]
    inner = frames - 2 * half
    mids = []
    for taps in coeffs:
        acc = x[..., :inner] * float(taps[0])
        for j in range(1, width):
            acc.add_(x[..., j : j + inner], alpha=float(taps[j]))
        mids.append(acc)
    mid = torch.stack(mids, dim=-2)  # (..., K, frames - 2h)
    head = torch.matmul(x[..., :width], left.reshape(n_ops * half, width).t())  # (..., K * h)
    tail = torch.matmul(x[..., frames - width :], right.reshape(n_ops * half, width).t())
    out = torch.cat([head.view(*lead, n_ops, half), mid, tail.view(*lead, n_ops, half)], dim=-1)
    return out.squeeze(-2) if single else out  # (..., K, frames) or (..., frames)


def chroma_filterbank(
    sample_rate: float,
    n_fft: int,
    tuning: Tensor,
    n_chroma: int = 12,
    ctroct: float = 5.0,
    octwidth: float = 2.0,
) -> Tensor:
    """Batched torch port of ``librosa.filters.chroma`` (norm=2, base_c=True) for per-sample ``tuning (B,)``.

    Returns float64 ``(B, n_chroma, n_fft // 2 + 1)``; used when the tuning is estimated per clip. With a
    fixed tuning the front end uses nnAudio's numpy port of the same function instead.
    """
    dev = tuning.device
    tuning = tuning.to(torch.float64).view(-1, 1)  # (B, 1)
    freqs = torch.arange(1, n_fft, dtype=torch.float64, device=dev) * (
        float(sample_rate) / n_fft
    )  # (n_fft-1,)
    a440 = 440.0 * torch.pow(2.0, tuning / n_chroma)  # (B, 1)
    frqbins = n_chroma * torch.log2(freqs.view(1, -1) / (a440 / 16.0))  # (B, n_fft-1)
    frqbins = torch.cat([frqbins[:, :1] - 1.5 * n_chroma, frqbins], dim=1)  # (B, n_fft)
    binwidth = torch.cat(
        [torch.clamp(frqbins[:, 1:] - frqbins[:, :-1], min=1.0), torch.ones_like(frqbins[:, :1])], dim=1
    )  # (B, n_fft)
    chroma_idx = torch.arange(n_chroma, dtype=torch.float64, device=dev).view(1, -1, 1)
    d = frqbins.unsqueeze(1) - chroma_idx  # (B, n_chroma, n_fft)
    half = float(round(n_chroma / 2))
    d = torch.remainder(d + half + 10 * n_chroma, n_chroma) - half
    wts = torch.exp(-0.5 * (2.0 * d / binwidth.unsqueeze(1)) ** 2)
    wts = wts / torch.linalg.vector_norm(wts, ord=2, dim=1, keepdim=True).clamp_min(np.finfo(np.float64).tiny)
    wts = wts * torch.exp(-0.5 * ((frqbins / n_chroma - ctroct) / octwidth) ** 2).unsqueeze(1)
    wts = torch.roll(wts, shifts=-3 * (n_chroma // 12), dims=1)
    # librosa casts to float32 before use
    return wts[:, :, : 1 + n_fft // 2].to(torch.float32).to(torch.float64)


def _grouped_median(values: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """numpy-style median (mean of the two middle values) of positive float32 ``values[group == g]`` per ``g``.

    ``values`` / ``group`` are 1-D; empty groups get 0. One sort of an int64 key ``(group << 32) | bits``:
    the IEEE bits of positive float32 numbers sort like the numbers, so this orders by group, then value.
    """
    if values.numel() == 0:
        return torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    ordered = torch.sort((group.to(torch.int64) << 32) | bits).values.to(torch.int32).view(torch.float32)
    counts = torch.bincount(group, minlength=num_groups)
    offsets = torch.cumsum(counts, 0) - counts
    last = values.numel() - 1
    lo = (offsets + (counts - 1).clamp_min(0) // 2).clamp_max(last)
    hi = (offsets + counts // 2).clamp_max(last)
    med = 0.5 * (ordered[lo] + ordered[hi])
    return torch.where(counts > 0, med, torch.zeros_like(med))


@torch.no_grad()
def estimate_tuning(
    power: Tensor,
    sample_rate: float,
    n_fft: int,
    bins_per_octave: int = 12,
    resolution: float = 0.01,
    fmin: float = 150.0,
    fmax: float = 4000.0,
    threshold: float = 0.1,
) -> Tensor:
    """Batched port of ``librosa.estimate_tuning(S=power, sr, bins_per_octave)`` -> tuning ``(B,)`` in bins.

    ``power`` is ``(B, n_fft // 2 + 1, frames)`` (the power spectrogram, as ``chroma_stft`` passes it).
    Same steps and float32 arithmetic as librosa: ``piptrack`` (parabolic interpolation at thresholded local
    maxima between ``fmin`` and ``fmax`` Hz), keep the peaks at or above the clip's median peak magnitude,
    histogram of their deviation from the equal-tempered grid at ``resolution``, return the left edge of the
    fullest bin (0.0 for a clip without peaks). Only the ``fmin..fmax`` band is processed and the peaks are
    handled as a compact list, so it costs a fraction of the STFT. Not differentiable (a discrete choice).
    """
    s = power.to(torch.float32)
    nb, n_freq, _ = s.shape
    dev = s.device
    hz_per_bin = float(sample_rate) / n_fft
    fmax = min(fmax, float(sample_rate) / 2)
    fft_freqs = np.arange(n_freq) * hz_per_bin
    band = np.nonzero((fft_freqs >= max(fmin, 0.0)) & (fft_freqs < fmax))[0]
    # a peak needs both neighbours (localmax is false at bin 0; the Nyquist bin is never below fmax)
    k0 = max(int(band[0]), 1) if band.size else 1
    k1 = min(int(band[-1]) + 1, n_freq - 1) if band.size else 1
    if k1 <= k0:
        return torch.zeros(nb, dtype=torch.float64, device=dev)

    ref = threshold * s.amax(dim=1, keepdim=True)  # (B, 1, frames)
    c, prev, nxt = s[:, k0:k1], s[:, k0 - 1 : k1 - 1], s[:, k0 + 1 : k1 + 1]  # (B, band, frames)
    xc, xp, xn = c * (c > ref), prev * (prev > ref), nxt * (nxt > ref)
    peaks = (xc > xp) & (xc >= xn)  # librosa.util.localmax of the thresholded spectrum
    bidx, fidx, _ = peaks.nonzero(as_tuple=True)  # row-major: grouped by clip
    pc, pp, pn = c[peaks], prev[peaks], nxt[peaks]  # (P,) float32 at the peaks only
    a = pn + pp - 2.0 * pc
    b = (pn - pp) / 2.0  # also np.gradient's central difference
    shift = torch.where(
        b.abs() >= a.abs(), torch.zeros_like(a), -b / torch.where(a == 0, torch.ones_like(a), a)
    )
    mag = pc + 0.5 * b * shift  # > 0: at a local maximum a < 0, so the skew term -b^2 / 2a >= 0
    # librosa: (int64 bin + float32 shift) * sr / n_fft in float64, stored as float32
    pitch = ((fidx + k0).to(torch.float64) + shift.to(torch.float64)) * hz_per_bin
    pitch = pitch.to(torch.float32)
    valid = pitch > 0
    med = _grouped_median(mag[valid], bidx[valid], nb)
    keep = valid & (mag >= med[bidx])
    octs = torch.log2(pitch[keep] / (440.0 / 16.0))
    residual = torch.remainder(bins_per_octave * octs, 1.0)
    residual = torch.where(residual >= 0.5, residual - 1.0, residual)
    n_hist = int(math.ceil(1.0 / resolution))
    edges = torch.from_numpy(np.linspace(-0.5, 0.5, n_hist + 1)).to(dev)
    # np.histogram: bins are [e_i, e_{i+1}), the last one closed
    hist_bin = (torch.bucketize(residual.to(torch.float64), edges, right=True) - 1).clamp(0, n_hist - 1)
    kept_clip = bidx[keep]
    counts = torch.bincount(kept_clip * n_hist + hist_bin, minlength=nb * n_hist).view(nb, n_hist)
    tuning = edges[counts.argmax(dim=1)]  # first maximum, as np.argmax
    return torch.where(counts.sum(dim=1) > 0, tuning, torch.zeros_like(tuning))
