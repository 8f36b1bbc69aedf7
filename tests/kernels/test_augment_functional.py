"""Properties of the pure augmentation functions (kernels.augment_functional), one property per test: each
function applies the per-sample parameters it is given, exactly, without drawing anything itself."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import augment_functional as AF


def _wave(b: int = 4, t: int = 1000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, generator=g) * (torch.rand(b, 1, generator=g) * 0.5 + 0.1)


def _spec(b: int = 3, c: int = 2, f: int = 24, n: int = 30, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, f, n, generator=g) + 0.5  # positive, so a zero fill is told apart


# --------------------------------------------------------------------------------------- parameters


def test_db_to_amplitude_maps_20_db_to_a_factor_of_ten_and_0_db_to_one():
    out = AF.db_to_amplitude(torch.tensor([-20.0, 0.0, 6.0, 20.0]))
    torch.testing.assert_close(out, torch.tensor([0.1, 1.0, 10 ** 0.3, 10.0]))


def test_semitones_to_ratio_maps_an_octave_to_two_and_0_to_one():
    out = AF.semitones_to_ratio(torch.tensor([-12.0, 0.0, 7.0, 12.0]))
    torch.testing.assert_close(out, torch.tensor([0.5, 1.0, 2 ** (7 / 12), 2.0]))


# ------------------------------------------------------------------------------------------- waveform


def test_gain_scales_each_sample_by_its_factor():
    x = _wave()
    gains = torch.tensor([0.5, 1.0, 2.0, 0.0])
    out = AF.apply_gain(x, gains)
    for i, g in enumerate(gains):
        torch.testing.assert_close(out[i], x[i] * g)


def test_gain_keeps_dtype_and_shape_of_multichannel_input():
    x = _wave(4, 200).reshape(4, 2, 100).to(torch.bfloat16)
    out = AF.apply_gain(x, torch.full((4,), 2.0))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert torch.equal(out, x * 2)


def test_polarity_negates_exactly_the_flipped_samples():
    x = _wave()
    flip = torch.tensor([True, False, True, False])
    out = AF.invert_polarity(x, flip)
    assert torch.equal(out[flip], -x[flip])
    assert torch.equal(out[~flip], x[~flip])


def test_polarity_is_an_involution():
    x = _wave()
    flip = torch.tensor([True, False, True, True])
    assert torch.equal(AF.invert_polarity(AF.invert_polarity(x, flip), flip), x)


def test_circular_shift_matches_roll_per_sample():
    x = _wave(4, 50)
    shifts = torch.tensor([0, 3, -7, 49])
    out = AF.circular_shift(x, shifts)
    for i, s in enumerate(shifts.tolist()):
        assert torch.equal(out[i], torch.roll(x[i], s))


def test_circular_shift_by_minus_s_undoes_a_shift_by_s():
    x = _wave(4, 64).reshape(4, 2, 32)
    shifts = torch.tensor([5, -3, 0, 31])
    assert torch.equal(AF.circular_shift(AF.circular_shift(x, shifts), -shifts), x)


def test_colored_noise_has_no_dc_and_pink_falls_off_as_one_over_f():
    gen = torch.Generator().manual_seed(0)
    pink = torch.tensor([False, True])
    noise = AF.colored_noise(torch.Size((2, 8, 4096)), pink, gen, torch.float64)
    assert noise.shape == (2, 8, 4096) and noise.dtype == torch.float64
    power = torch.fft.rfft(noise, dim=-1).abs().square().mean(dim=1)  # (2, K)
    assert torch.allclose(power[:, 0], torch.zeros(2, dtype=torch.float64), atol=1e-18)
    low, high = power[:, 10:50].mean(dim=1), power[:, 1000:2000].mean(dim=1)
    assert 0.7 < (low[0] / high[0]).item() < 1.4  # white: flat
    assert (low[1] / high[1]).item() > 20  # pink: ~1/f, so ~50x between these bands


def test_colored_noise_is_reproducible_from_the_generator():
    pink = torch.tensor([True, False, True])
    a = AF.colored_noise(torch.Size((3, 100)), pink, torch.Generator().manual_seed(5), torch.float32)
    b = AF.colored_noise(torch.Size((3, 100)), pink, torch.Generator().manual_seed(5), torch.float32)
    assert torch.equal(a, b)


def test_add_noise_reaches_the_stated_snr():
    x = _wave(4, 2000).double()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    snr = torch.tensor([0.0, 10.0, 20.0, 35.0])
    out = AF.add_noise(x, noise, snr)
    added = out - x
    measured = 10 * torch.log10(x.square().mean(dim=1) / added.square().mean(dim=1))
    torch.testing.assert_close(measured, snr.double(), atol=1e-6, rtol=0)


def test_add_noise_leaves_samples_that_are_off_or_silent_unchanged():
    x = _wave(3, 500)
    x[2] = 0.0
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = AF.add_noise(x, noise, torch.full((3,), 10.0), on=torch.tensor([True, False, True]))
    assert not torch.equal(out[0], x[0])
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2], x[2])


# ---------------------------------------------------------------------------------------- spectrogram


def test_interpolate_along_at_integer_positions_is_a_gather():
    x = _spec()
    pos = torch.tensor([[0.0, 5.0, 29.0], [1.0, 1.0, 2.0], [3.0, 0.0, 7.0]])
    out = AF.interpolate_along(x, pos, -1, wrap=False)
    for b in range(3):
        assert torch.equal(out[b], x[b][..., pos[b].long()])


def test_interpolate_along_halfway_is_the_mean_of_the_neighbours():
    x = _spec()
    out = AF.interpolate_along(x, torch.full((3, 1), 4.5), -2, wrap=False)  # (B, C, 1, N)
    torch.testing.assert_close(out[:, :, 0], (x[:, :, 4] + x[:, :, 5]) / 2)


def test_interpolate_along_wraps_or_clamps_out_of_range_positions():
    x = _spec(n=10)
    pos = torch.tensor([[10.0, 12.0, -1.0]]).expand(3, 3)
    wrapped = AF.interpolate_along(x, pos, -1, wrap=True)
    clamped = AF.interpolate_along(x, pos, -1, wrap=False)
    assert torch.equal(wrapped, x[..., [0, 2, 9]])
    assert torch.equal(clamped, x[..., [9, 9, 0]])


def test_time_stretch_with_rate_one_is_the_identity():
    x = _spec()
    out = AF.spec_time_stretch(x, torch.ones(3), torch.rand(3))
    assert torch.equal(out, x)


def test_time_stretch_by_two_reads_every_other_frame_then_loops():
    x = _spec(n=20)
    out = AF.spec_time_stretch(x, torch.full((3,), 2.0), torch.zeros(3), pad="wrap")
    assert torch.equal(out[..., :10], x[..., 0::2])
    assert torch.equal(out[..., 10:], x[..., 0::2])
    edge = AF.spec_time_stretch(x, torch.full((3,), 2.0), torch.zeros(3), pad="edge")
    assert torch.equal(edge[..., 10:], x[..., -1:].expand(-1, -1, -1, 10))


def test_time_stretch_slowing_down_keeps_a_window_chosen_by_the_offset_fraction():
    x = _spec(n=21)
    # rate 0.5: offset = fraction * 20 * 0.5, so fraction 1 would start at frame 10 and end at frame 20
    out = AF.spec_time_stretch(x, torch.full((3,), 0.5), torch.ones(3))
    assert torch.equal(out[..., 0::2], x[..., 10:21])


def test_pitch_shift_by_0_semitones_is_the_identity():
    x = _spec()
    assert torch.equal(AF.spec_pitch_shift(x, AF.semitones_to_ratio(torch.zeros(3))), x)


def test_pitch_shift_up_an_octave_moves_bin_f_to_bin_2f():
    x = torch.zeros(1, 1, 32, 4)
    x[0, 0, 5] = 1.0  # a partial at bin 5 of a linear-frequency spectrogram
    out = AF.spec_pitch_shift(x, torch.tensor([2.0]))
    assert torch.equal(out[0, 0].argmax(dim=0), torch.full((4,), 10))
    torch.testing.assert_close(out[0, 0, 10], torch.ones(4))


def test_pitch_shift_keeps_shape_and_half_precision_dtype():
    x = _spec().to(torch.float16)
    out = AF.spec_pitch_shift(x, torch.tensor([0.9, 1.0, 1.1]))
    assert out.shape == x.shape and out.dtype == torch.float16
    assert torch.equal(out[1], x[1])


def test_intervals_from_uniforms_stay_inside_the_axis_and_the_width_limit():
    g = torch.Generator().manual_seed(3)
    u = torch.rand(2, 500, 3, generator=g)
    u[:, 0] = 0.0
    u[:, 1] = 1.0 - 2**-24  # the largest float32 below 1
    start, width = AF.intervals_from_uniforms(u[0], u[1], size=40, max_width=7)
    assert width.min() >= 0 and width.max() <= 7
    assert start.min() >= 0 and (start + width).max() <= 40
    assert torch.equal(width, width.floor()) and torch.equal(start, start.floor())
    assert width[1].eq(7).all() and (start[1] + width[1]).eq(40).all()


def test_interval_mask_marks_exactly_the_union_of_the_intervals():
    start = torch.tensor([[2.0, 10.0], [0.0, 0.0]])
    width = torch.tensor([[3.0, 0.0], [1.0, 4.0]])
    mask = AF.interval_mask(start, width, 12)
    expected = torch.zeros(2, 12, dtype=torch.bool)
    expected[0, 2:5] = True
    expected[1, 0:4] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("dim", [-2, -1])
def test_mask_zeroes_exactly_the_stated_band(dim):
    x = _spec()
    size = x.shape[dim]
    mask = torch.zeros(3, size, dtype=torch.bool)
    mask[0, 3:7] = True
    mask[2, 0] = True
    out = AF.mask_along(x, mask, dim, "zero")
    masked = mask[:, None, None, :] if dim == -1 else mask[:, None, :, None]
    masked = masked.expand_as(x)
    assert torch.equal(out[masked], torch.zeros(int(masked.sum())))
    assert torch.equal(out[~masked], x[~masked])


def test_mean_mask_fills_with_each_samples_mean():
    x = _spec()
    mask = torch.zeros(3, x.shape[-2], dtype=torch.bool)
    mask[:, 1] = True
    out = AF.mask_along(x, mask, -2, "mean")
    for b in range(3):
        assert torch.equal(out[b, :, 1], x[b].mean().expand(x.shape[1], x.shape[-1]))


def test_mask_refuses_an_axis_other_than_bins_or_frames():
    with pytest.raises(ValueError, match="dim must be -1"):
        AF.mask_along(_spec(), torch.zeros(3, 2, dtype=torch.bool), 1, "zero")


# ---------------------------------------------------------------------------------------------- mixup


def test_mixup_with_lambda_one_is_the_identity():
    x = _spec()
    targets = torch.eye(3)
    xm, tm = AF.mixup(x, targets, torch.ones(3), torch.tensor([2, 0, 1]))
    assert torch.equal(xm, x) and torch.equal(tm, targets)


def test_mixup_is_the_stated_convex_combination_and_keeps_targets_summing_to_one():
    x = _wave(3, 40)
    targets = torch.softmax(torch.randn(3, 5, generator=torch.Generator().manual_seed(4)), dim=1)
    lam, perm = torch.tensor([0.25, 0.5, 1.0]), torch.tensor([1, 2, 0])
    xm, tm = AF.mixup(x, targets, lam, perm)
    torch.testing.assert_close(xm, lam[:, None] * x + (1 - lam[:, None]) * x[perm])
    torch.testing.assert_close(tm, lam[:, None] * targets + (1 - lam[:, None]) * targets[perm])
    torch.testing.assert_close(tm.sum(dim=1), torch.ones(3))


def test_mixup_keeps_half_precision_inputs_in_their_dtype():
    x = _spec().to(torch.bfloat16)
    targets = torch.eye(3, dtype=torch.float16)
    xm, tm = AF.mixup(x, targets, torch.full((3,), 0.3), torch.tensor([1, 2, 0]))
    assert xm.dtype == torch.bfloat16 and tm.dtype == torch.float16
    assert math.isclose(float(tm.float().sum()), 3.0, rel_tol=1e-3)


# ---------------------------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    ("dtype", "work"),
    [(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.float32),
     (torch.float64, torch.float64)],
)
def test_work_dtype_lifts_only_half_precision_to_float32(dtype, work):
    assert AF.work_dtype(dtype) == work
