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

import numpy as np
import torch
import torch.nn.functional as F
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
    window (periodic Hann for librosa parity); equals ``np.abs(librosa.stft(y, ...)) ** 2``. The square-sum of
    the real view keeps the gradient finite where the spectrum is exactly zero (``abs`` would not).
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
    )  # (B, n_freq, frames) complex64
    return torch.view_as_real(spec).pow(2).sum(-1)


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


def savgol_delta(x: Tensor, kernel: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """Apply :func:`savgol_operators` along the last (time) axis of ``x (..., frames)`` -> same shape.

    Vectorised: one ``conv1d`` for the interior and two small matmuls for the edges. Needs
    ``frames >= width`` (as librosa's ``mode='interp'`` does).
    """
    width = kernel.shape[0]
    half = width // 2
    frames = x.shape[-1]
    if frames < width:
        raise ValueError(f"delta with width {width} needs at least {width} frames, got {frames}")
    lead = x.shape[:-1]
    flat = x.reshape(-1, 1, frames)
    mid = F.conv1d(flat, kernel.view(1, 1, width)).reshape(*lead, frames - 2 * half)
    head = torch.matmul(x[..., :width], left.t())  # (..., half)
    tail = torch.matmul(x[..., frames - width :], right.t())  # (..., half)
    return torch.cat([head, mid, tail], dim=-1)


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


def _masked_median(values: Tensor, mask: Tensor) -> Tensor:
    """numpy-style median (mean of the two middles) of ``values[b][mask[b]]`` per row; 0 for empty rows."""
    flat_v = values.flatten(1)
    flat_m = mask.flatten(1)
    count = flat_m.sum(dim=1)  # (B,)
    inf = torch.full_like(flat_v, float("inf"))
    ordered = torch.sort(torch.where(flat_m, flat_v, inf), dim=1).values
    lo = ((count - 1).clamp_min(0) // 2).unsqueeze(1)
    hi = (count // 2).clamp_max(flat_v.shape[1] - 1).unsqueeze(1)
    med = 0.5 * (ordered.gather(1, lo) + ordered.gather(1, hi)).squeeze(1)
    return torch.where(count > 0, med, torch.zeros_like(med))


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
    Same steps as librosa: ``piptrack`` (parabolic peak interpolation of thresholded local maxima between
    ``fmin`` and ``fmax``), keep the peaks at or above the median peak magnitude, histogram of their
    deviation from the equal-tempered grid with ``resolution``, return the left edge of the fullest bin
    (0.0 for a clip without peaks). Computed in float64; not differentiable (tuning is a discrete choice).
    """
    s = power.to(torch.float64)
    nb, n_freq, _ = s.shape
    dev = s.device
    fft_freqs = torch.arange(n_freq, dtype=torch.float64, device=dev) * (float(sample_rate) / n_fft)
    fmax = min(fmax, float(sample_rate) / 2)
    freq_mask = ((fft_freqs >= max(fmin, 0.0)) & (fft_freqs < fmax)).view(1, -1, 1)

    # np.gradient along frequency: central differences inside, one-sided at the ends
    avg = torch.cat([s[:, 1:2] - s[:, :1], 0.5 * (s[:, 2:] - s[:, :-2]), s[:, -1:] - s[:, -2:-1]], dim=1)
    # parabolic interpolation (librosa._parabolic_interpolation): 0 at the edges and where |b| >= |a|
    a = s[:, 2:] + s[:, :-2] - 2.0 * s[:, 1:-1]
    b = 0.5 * (s[:, 2:] - s[:, :-2])
    inner = torch.where(
        b.abs() >= a.abs(), torch.zeros_like(a), -b / torch.where(a == 0, torch.ones_like(a), a)
    )
    zero = torch.zeros_like(s[:, :1])
    shift = torch.cat([zero, inner, zero], dim=1)
    dskew = 0.5 * avg * shift

    ref_value = threshold * s.amax(dim=1, keepdim=True)
    x = s * (s > ref_value)
    # librosa.util.localmax with edge padding: x > previous and x >= next
    prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    nxt = torch.cat([x[:, 1:], x[:, -1:]], dim=1)
    peaks = freq_mask & (x > prev) & (x >= nxt)
    bins = torch.arange(n_freq, dtype=torch.float64, device=dev).view(1, -1, 1)
    pitch = torch.where(peaks, (bins + shift) * (float(sample_rate) / n_fft), torch.zeros_like(s))
    mag = torch.where(peaks, s + dskew, torch.zeros_like(s))

    pitch_mask = pitch > 0
    med = _masked_median(mag, pitch_mask).view(-1, 1, 1)
    keep = (mag >= med) & pitch_mask  # (B, n_freq, frames)

    octs = torch.log2(torch.where(keep, pitch, torch.ones_like(pitch)) / (440.0 / 16.0))
    residual = torch.remainder(bins_per_octave * octs, 1.0)
    residual = torch.where(residual >= 0.5, residual - 1.0, residual)
    n_hist = int(math.ceil(1.0 / resolution))
    edges = torch.from_numpy(np.linspace(-0.5, 0.5, n_hist + 1)).to(dev)
    # np.histogram: bins are [e_i, e_{i+1}), the last one closed
    idx = (torch.bucketize(residual.flatten(1), edges, right=True) - 1).clamp(0, n_hist - 1)
    counts = torch.zeros(nb, n_hist, dtype=torch.float64, device=dev)
    counts.scatter_add_(1, idx, keep.flatten(1).to(torch.float64))
    best = counts.argmax(dim=1)  # first maximum, as np.argmax
    tuning = edges[best]
    return torch.where(keep.flatten(1).any(dim=1), tuning, torch.zeros_like(tuning))
