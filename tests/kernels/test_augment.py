"""Behaviour of kernels.augment: eval identity, statistics of each augmentation, reproducibility, dtypes."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from engine.config import ConfigError, from_dict, to_dict
from kernels.augment import (
    AUGMENTATIONS,
    AddNoise,
    FreqMask,
    Gain,
    Mixup,
    Polarity,
    SpecAugment,
    SpecPitchShift,
    SpecTimeStretch,
    TimeMask,
    TimeShift,
    WaveAugment,
    build_augment,
    reseed_all,
)
from kernels.augment_config import AugmentConfig

SR = 8000

#: every augmentation on for every sample
ALL_ON = AugmentConfig(
    gain_p=1.0,
    noise_p=1.0,
    shift_p=1.0,
    polarity_p=1.0,
    time_stretch_p=1.0,
    pitch_shift_p=1.0,
    mixup_p=1.0,
)
#: everything off; tests switch on one thing at a time
ALL_OFF = AugmentConfig(
    gain_p=0.0,
    noise_p=0.0,
    shift_p=0.0,
    polarity_p=0.0,
    freq_masks=0,
    time_masks=0,
    time_stretch_p=0.0,
    pitch_shift_p=0.0,
    mixup_p=0.0,
)


def _wave(b: int = 8, t: int = 4000, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    amp = torch.rand(b, 1, generator=g) * 0.5 + 0.05  # different loudness per sample
    return torch.randn(b, t, generator=g) * amp


def _spec(b: int = 8, c: int = 2, f: int = 64, n: int = 100, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, f, n, generator=g) + 1.0  # strictly positive: zeros can only come from masks


def _cfg(**kw) -> AugmentConfig:
    return from_dict(AugmentConfig, {**to_dict(ALL_OFF), **kw})


def _db(a: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(a.double().square().mean(dim=-1))


# ------------------------------------------------------------------------------------------ eval / config


def test_every_augmentation_is_the_same_object_in_eval_mode():
    x, s, t = _wave(), _spec(), torch.eye(8)
    for name in AUGMENTATIONS.names():
        m = AUGMENTATIONS.get(name).from_config(ALL_ON, SR).eval()
        if name == "mixup":
            xo, to = m(s, t)
            assert xo is s and to is t
        else:
            inp = s if name in ("time_stretch", "pitch_shift", "freq_mask", "time_mask") else x
            assert m(inp) is inp, name
            assert not torch.equal(m.train()(inp), inp), f"{name} does nothing in training"
    wave, spec, mix = (m.eval() for m in build_augment(ALL_ON, SR))
    assert wave(x) is x and spec(s) is s
    assert mix(s, t)[0] is s


def test_master_switch_off_is_identity_in_training():
    cfg = _cfg(**{**to_dict(ALL_ON), "enabled": False})
    wave, spec, mix = (m.train() for m in build_augment(cfg, SR))
    x, s, t = _wave(), _spec(), torch.eye(8)
    assert wave(x) is x and spec(s) is s
    xo, to = mix(s, t)
    assert xo is s and to is t


def test_registry_holds_all_nine_augmentations():
    assert AUGMENTATIONS.names() == sorted(
        [
            "gain",
            "noise",
            "shift",
            "polarity",
            "freq_mask",
            "time_mask",
            "time_stretch",
            "pitch_shift",
            "mixup",
        ]
    )


def test_config_is_strict_and_validated():
    cfg = from_dict(AugmentConfig, {"gain_db": [-3, 3], "noise_color": "pink", "seed": 7})
    assert cfg.gain_db == (-3.0, 3.0) and cfg.noise_color == "pink"
    assert from_dict(AugmentConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(AugmentConfig, {"gain_probability": 0.5})
    with pytest.raises(ConfigError, match="noise_color"):
        from_dict(AugmentConfig, {"noise_color": "brown"})
    bad = [
        ({"gain_p": 1.5}, "gain_p must be a probability"),
        ({"time_stretch_rate": [1.2, 0.8]}, "low <= high"),
        ({"time_stretch_rate": [0.0, 1.2]}, "must be > 0"),
        ({"mixup_alpha": 0.0}, "mixup_alpha"),
        ({"freq_mask_width": -1}, "freq_mask_width"),
        ({"time_mask_max_fraction": 2.0}, "time_mask_max_fraction"),
        ({"pitch_shift_semitones": [-30, 0]}, "24 semitones"),
    ]
    for data, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            from_dict(AugmentConfig, data)


# ---------------------------------------------------------------------------------------------- waveform


def test_gain_changes_rms_by_a_per_sample_amount_within_the_db_range():
    x = _wave(b=256)
    y = Gain((-6.0, 6.0), p=1.0, seed=3).train()(x)
    ratio_db = (_db(y) - _db(x)).float()
    assert ratio_db.min() >= -6.0 - 1e-3 and ratio_db.max() <= 6.0 + 1e-3
    # uniform over the range, different for every sample
    assert ratio_db.min() < -5.0 and ratio_db.max() > 5.0
    assert ratio_db.std() > 2.5
    assert torch.unique(ratio_db.round(decimals=3)).numel() > 200
    half = Gain((-6.0, 6.0), p=0.5, seed=3).train()(x)
    untouched = (half == x).all(dim=-1).float().mean()
    assert 0.35 < untouched < 0.65


def test_noise_is_added_at_the_requested_snr():
    x = _wave(b=64)
    y = AddNoise((20.0, 20.0), color="white", p=1.0, seed=0).train()(x)
    snr = _db(x) - _db(y - x)
    assert torch.allclose(snr, torch.full_like(snr, 20.0), atol=0.05), snr
    y = AddNoise((5.0, 35.0), color="both", p=1.0, seed=0).train()(x)
    snr = (_db(x) - _db(y - x)).float()
    assert snr.min() > 5.0 - 0.05 and snr.max() < 35.0 + 0.05
    assert snr.max() - snr.min() > 20  # per-sample SNR


def _spectral_slope(noise: torch.Tensor) -> torch.Tensor:
    """Per-sample slope of log10 power vs log10 frequency, from 50 Hz to 3 kHz (8 kHz audio)."""
    p = torch.fft.rfft(noise.double(), dim=-1).abs().square()
    f = torch.fft.rfftfreq(noise.shape[-1], 1 / SR, dtype=torch.float64)
    edges = torch.logspace(math.log10(50), math.log10(3000), 13, dtype=torch.float64)
    lf, lp = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (f >= lo) & (f < hi)
        lf.append(torch.log10(f[band].mean()))
        lp.append(torch.log10(p[:, band].mean(dim=-1)))
    lf = torch.stack(lf)
    lp = torch.stack(lp, dim=-1)
    lfc = lf - lf.mean()
    return ((lp - lp.mean(dim=-1, keepdim=True)) * lfc).sum(-1) / lfc.square().sum()


def test_pink_noise_has_a_1_over_f_spectrum_and_white_is_flat():
    x = _wave(b=32, t=16000)
    pink = AddNoise((10.0, 10.0), color="pink", p=1.0).train()(x) - x
    white = AddNoise((10.0, 10.0), color="white", p=1.0).train()(x) - x
    assert torch.allclose(_spectral_slope(pink), torch.tensor(-1.0, dtype=torch.float64), atol=0.2)
    assert torch.allclose(_spectral_slope(white), torch.tensor(0.0, dtype=torch.float64), atol=0.2)
    both = AddNoise((10.0, 10.0), color="both", p=1.0, seed=5).train()(x) - x
    is_pink = (_spectral_slope(both) < -0.5).float().mean()
    assert 0.2 < is_pink < 0.8


def test_shift_is_a_per_sample_circular_roll_within_the_limit():
    b, t = 64, 4000
    x = torch.arange(b * t, dtype=torch.float32).reshape(b, t)
    m = TimeShift(SR, max_seconds=0.25, max_fraction=0.5, p=1.0, seed=1).train()
    y = m(x)
    shifts = []
    for i in range(b):
        s = int(torch.nonzero(y[i] == x[i, 0])[0])  # where the first sample went
        assert torch.equal(y[i], torch.roll(x[i], s))
        shifts.append(s if s <= t // 2 else s - t)
    assert max(abs(s) for s in shifts) <= 0.25 * SR
    assert len(set(shifts)) > 50
    # extra channel dims roll together
    xc = torch.stack([x, -x], dim=1)  # (B, 2, T)
    yc = TimeShift(SR, 0.25, 0.5, p=1.0, seed=1).train()(xc)
    assert torch.equal(yc[:, 0], y) and torch.equal(yc[:, 1], -y)
    # without a sample rate only the fraction of the clip limits the shift
    wave = WaveAugment(_cfg(shift_p=1.0, shift_max_fraction=0.01), sample_rate=None).train()
    y = wave(x)
    for i in range(b):
        s = int(torch.nonzero(y[i] == x[i, 0])[0])
        assert min(s, t - s) <= 40


def test_polarity_flips_the_sign_of_selected_samples():
    x = _wave(b=128)
    assert torch.equal(Polarity(p=1.0).train()(x), -x)
    y = Polarity(p=0.5, seed=2).train()(x)
    flipped = (y == -x).all(dim=-1)
    kept = (y == x).all(dim=-1)
    assert bool((flipped ^ kept).all())
    assert 0.3 < flipped.float().mean() < 0.7


def test_wave_chain_accepts_int16_pcm_as_full_scale_float():
    pcm = (_wave(b=4) * 20000).clamp(-32768, 32767).to(torch.int16)
    wave = WaveAugment(_cfg(polarity_p=1.0), SR).train()
    y = wave(pcm)
    assert y.dtype == torch.float32
    assert torch.equal(y, -(pcm.float() / 32768.0))
    assert wave.eval()(pcm) is pcm


# ------------------------------------------------------------------------------------------- spectrogram


def _runs(mask_1d: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous True runs as (start, length)."""
    runs, start = [], None
    for i, v in enumerate(mask_1d.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_freq_masks_zero_whole_bands_of_at_most_the_max_width():
    x = _spec(b=256, f=64, n=40)
    y = FreqMask(count=1, max_width=8, value="zero", seed=0).train()(x)
    zero = y == 0
    rows = zero.all(dim=(1, 3))  # (B, F): whole band zero on every channel and frame
    assert torch.equal(zero.any(dim=(1, 3)), rows)  # nothing else is zeroed
    assert torch.equal(y[~zero], x[~zero])
    widths = []
    for i in range(256):
        runs = _runs(rows[i])
        assert len(runs) <= 1
        widths.append(runs[0][1] if runs else 0)
    assert max(widths) == 8 and min(widths) == 0
    assert len(set(widths)) == 9  # every width 0..8 occurs
    two = FreqMask(count=2, max_width=8, value="zero", seed=0).train()(x)
    rows2 = (two == 0).all(dim=(1, 3))
    assert rows2.sum(-1).max() <= 16
    assert all(len(_runs(r)) <= 2 for r in rows2)
    assert any(len(_runs(r)) == 2 for r in rows2)


def test_time_masks_respect_width_and_fraction_and_can_use_the_mean():
    x = _spec(b=256, f=16, n=100)
    y = TimeMask(count=1, max_width=50, max_fraction=0.1, value="zero", seed=4).train()(x)
    cols = (y == 0).all(dim=(1, 2))  # (B, frames)
    assert torch.equal((y == 0).any(dim=(1, 2)), cols)
    widths = [sum(n for _, n in _runs(c)) for c in cols]
    assert max(widths) == 10 and min(widths) == 0  # capped at 10 % of 100 frames
    # starts vary per sample
    starts = {_runs(c)[0][0] for c in cols if c.any()}
    assert len(starts) > 30
    m = TimeMask(count=2, max_width=20, value="mean", seed=4).train()
    y = m(x)
    changed = (y != x).all(dim=(1, 2))  # (B, frames)
    mean = x.mean(dim=(1, 2, 3))
    for i in range(8):
        assert torch.allclose(y[i][:, :, changed[i]], mean[i].expand_as(y[i][:, :, changed[i]]))


def test_time_stretch_keeps_shape_and_resamples_time_by_the_rate():
    b, n = 16, 101
    ramp = torch.arange(n, dtype=torch.float32).expand(b, 2, 8, n)  # value = frame index
    assert SpecTimeStretch((1.0, 1.0), p=1.0).train()(ramp) is ramp  # rate 1 = identity
    fast = SpecTimeStretch((2.0, 2.0), p=1.0, pad="edge").train()(ramp)
    assert fast.shape == ramp.shape
    expect = (torch.arange(n) * 2.0).clamp(max=n - 1)  # frame t reads 2t; then the last frame repeats
    assert torch.allclose(fast, expect.expand_as(fast))
    wrap = SpecTimeStretch((2.0, 2.0), p=1.0, pad="wrap").train()(ramp)
    assert torch.allclose(wrap[0, 0, 0], torch.remainder(torch.arange(n) * 2.0, n))
    slow = SpecTimeStretch((0.5, 0.5), p=1.0, seed=3).train()(ramp)
    d = slow[:, 0, 0, 1:] - slow[:, 0, 0, :-1]
    assert torch.allclose(d, torch.full_like(d, 0.5), atol=1e-5)  # half speed
    starts = slow[:, 0, 0, 0]
    assert starts.min() >= 0 and (starts + 0.5 * (n - 1)).max() <= n - 1 + 1e-4  # a window inside the clip
    assert torch.unique(starts).numel() > 10  # random window per sample
    x = _spec(b=64)
    y = SpecTimeStretch((0.8, 1.25), p=0.5, seed=1).train()(x)
    same = (y == x).all(dim=(1, 2, 3)).float().mean()
    assert 0.3 < same < 0.7  # untouched samples are bit-exact


def test_pitch_shift_keeps_shape_and_scales_the_frequency_axis():
    b, f = 8, 64
    ramp = torch.arange(f, dtype=torch.float32)[:, None].expand(b, 1, f, 30)  # value = bin index
    assert SpecPitchShift((0.0, 0.0), p=1.0).train()(ramp) is ramp
    up = SpecPitchShift((12.0, 12.0), p=1.0).train()(ramp)  # one octave up: bin f reads bin f / 2
    assert up.shape == ramp.shape
    assert torch.allclose(up, (torch.arange(f) / 2.0)[:, None].expand_as(up), atol=1e-5)
    down = SpecPitchShift((-12.0, -12.0), p=1.0).train()(ramp)  # bin f reads 2f, top bin repeats
    assert torch.allclose(down, (torch.arange(f) * 2.0).clamp(max=f - 1)[:, None].expand_as(down))
    var = SpecPitchShift((-3.0, 3.0), p=1.0, seed=2).train()(ramp)
    assert torch.unique(var[:, 0, 40, 0]).numel() == b  # a different factor per sample


# ------------------------------------------------------------------------------------------------ mixup


def test_mixup_mixes_inputs_and_targets_with_the_same_lambda():
    b = 64
    x = _spec(b=b, c=1, f=8, n=10)
    targets = torch.eye(b)  # one class per sample: lambda and partner are readable from the targets
    xm, tm = Mixup(alpha=0.4, p=1.0, seed=0).train()(x, targets)
    assert torch.allclose(tm.sum(-1), torch.ones(b))
    n_mixed = 0
    for i in range(b):
        lam = tm[i, i]
        others = torch.nonzero(tm[i] * (torch.arange(b) != i)).flatten()
        if others.numel() == 0:  # paired with itself, or lambda rounded to 1
            assert torch.allclose(xm[i], x[i])
            continue
        assert others.numel() == 1
        j = int(others[0])
        assert torch.allclose(tm[i, j], 1 - lam)
        assert torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)
        n_mixed += 1
    assert n_mixed > b // 2


def test_mixup_lambda_follows_beta_and_p_selects_samples():
    m = Mixup(alpha=2.0, p=1.0, seed=0)
    lam, perm = m.params(20000, torch.device("cpu"))
    # Beta(2, 2): mean 1/2, variance 1/20
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert abs(lam.var().item() - 0.05) < 0.003
    assert torch.equal(torch.sort(perm).values, torch.arange(20000))
    xm, tm = Mixup(alpha=0.4, p=0.3, seed=1).train()(_spec(b=256, c=1, f=4, n=4), torch.eye(256))
    unmixed = (tm.diagonal() == 1).float().mean()
    assert 0.6 < unmixed < 0.85  # 70 % not selected (+ a few self-pairs)


def test_mixup_rejects_integer_labels_with_a_hint():
    with pytest.raises(TypeError, match="one_hot"):
        Mixup(p=1.0).train()(torch.zeros(4, 3), torch.arange(4))
    with pytest.raises(ValueError, match="batch sizes differ"):
        Mixup(p=1.0).train()(torch.zeros(4, 3), torch.zeros(5, 2))


# ---------------------------------------------------------------------------------- seeds, dtypes, grads


def test_same_seed_reproduces_and_different_seeds_differ():
    x, s, t = _wave(b=16), _spec(b=16), torch.eye(16)

    def run(seed: int):
        cfg = _cfg(**{**to_dict(ALL_ON), "seed": seed})
        wave, spec, mix = (m.train() for m in build_augment(cfg, SR))
        a = wave(x)
        b2 = wave(x)  # the second call continues the stream
        xm, tm = mix(spec(s), t)
        return a, b2, xm, tm

    r1, r2, r3 = run(0), run(0), run(1)
    for a, b2 in zip(r1, r2):
        assert torch.equal(a, b2)
    assert not torch.equal(r1[0], r1[1])
    for a, c in zip(r1, r3):
        assert not torch.equal(a, c)


def test_reseed_restarts_streams_and_copies_start_fresh():
    cfg = _cfg(**{**to_dict(ALL_ON), "seed": 5})
    wave = WaveAugment(cfg, SR).train()
    x = _wave(b=8)
    first = wave(x)
    assert not torch.equal(wave(x), first)
    wave.reseed(5)
    assert torch.equal(wave(x), first)
    container = torch.nn.Sequential(wave, SpecAugment(cfg))
    assert reseed_all(container, 5) == 8
    assert torch.equal(wave(x), first)
    clone = copy.deepcopy(wave)
    assert torch.equal(clone(x), first)  # generators are not copied: re-created from the seed
    assert torch.equal(pickle.loads(pickle.dumps(wave))(x), first)


def test_half_precision_inputs_return_their_dtype():
    wave, spec, mix = (m.train() for m in build_augment(ALL_ON, SR))
    for dtype in (torch.bfloat16, torch.float16):
        y = wave(_wave().to(dtype))
        assert y.dtype == dtype and torch.isfinite(y.float()).all()
        s = spec(_spec().to(dtype))
        assert s.dtype == dtype and torch.isfinite(s.float()).all()
        xm, tm = mix(s, torch.eye(8))
        assert xm.dtype == dtype and tm.dtype == torch.float32


def test_gradients_flow_through_wave_and_spec_augment():
    wave, spec, mix = (m.train() for m in build_augment(ALL_ON, SR))
    x = _wave().requires_grad_(True)
    wave(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    s = _spec().requires_grad_(True)
    xm, _ = mix(spec(s), torch.eye(8))
    xm.sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_large_batch_gets_independent_parameters_in_one_call():
    cfg = _cfg(gain_p=1.0, shift_p=1.0, freq_masks=2, time_masks=2, mask_value="zero")
    wave, spec, _ = (m.train() for m in build_augment(cfg, SR))
    x = torch.ones(256, 1, 32, 50)
    y = spec(x)
    patterns = {tuple((y[i, 0] == 0).flatten().tolist()) for i in range(256)}
    assert len(patterns) > 200  # masks differ per sample
    w = wave(_wave(b=256))
    assert w.shape == (256, 4000)


# ---------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_a_device_generator_and_is_reproducible():
    dev = torch.device("cuda")
    x, s, t = _wave(b=32).to(dev), _spec(b=32).to(dev), torch.eye(32, device=dev)

    def run():
        wave, spec, mix = (m.train().to(dev) for m in build_augment(ALL_ON, SR))
        out = (wave(x), *mix(spec(s), t))
        return wave, out

    wave, a = run()
    _, b = run()
    for u, v in zip(a, b):
        assert u.device.type == "cuda" and torch.equal(u, v)
    gens = [m._generators for m in wave.modules() if hasattr(m, "_generators")]
    assert gens and all(k.startswith("cuda") for g in gens for k in g)
    for dtype in (torch.bfloat16, torch.float16):
        y = wave(x.to(dtype))
        assert y.dtype == dtype and y.device.type == "cuda" and torch.isfinite(y.float()).all()
