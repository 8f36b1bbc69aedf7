"""Properties of the feature front end: shapes/dtypes, int16 input, batch consistency, autocast, tracing,
autograd, backends, config validation, normalisation, buffers, and CUDA equality (``gpu`` marker)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from engine.config import ConfigError, from_dict, to_dict
from kernels import FEATURES
from kernels.features import Frontend, FrontendConfig, build_frontend, estimate_norm_stats

ALL = ["logmel", "mfcc", "chroma"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def frontend(sr: int, **kw) -> Frontend:
    return build_frontend(FrontendConfig(**kw), sr).eval()


def test_registered_feature_names():
    assert FEATURES.names() == ["chroma", "cqt", "logmel", "mfcc", "musicnn"]
    # "precomputed" (kernels.precomputed) stands for feature-sequence input (MSD), not a waveform feature:
    # a config accepts it alone, the waveform Frontend refuses it
    FrontendConfig(features=["precomputed"]).validate()
    with pytest.raises(ValueError, match="unknown feature.*valid: \\['chroma', 'cqt', 'logmel', 'mfcc', 'musicnn', 'precomputed'\\]"):
        FrontendConfig(features=["precomputed", "spectral_contrast"]).validate()
    with pytest.raises(ValueError, match="waveform Frontend cannot build them"):
        build_frontend(FrontendConfig(features=["precomputed"]), 22050)


@pytest.mark.parametrize(
    "kw, expect_cf",
    [
        ({"features": ["logmel"]}, (1, 128)),
        ({"features": ["mfcc"], "deltas": 2}, (1, 60)),
        ({"features": ["mfcc"], "deltas": 2, "stack": "channels"}, (3, 20)),
        ({"features": ALL, "deltas": 2}, (1, 128 + 60 + 12)),
        ({"features": ["logmel", "cqt", "chroma"], "n_mels": 64}, (1, 64 + 84 + 12)),
        ({"features": ["logmel", "mfcc"], "n_mfcc": 128, "deltas": 1, "stack": "channels"}, (3, 128)),
    ],
)
@pytest.mark.parametrize("num_samples", [22050, 22050 + 300])
def test_out_shape_matches_forward_and_is_float32(batch, sr, kw, expect_cf, num_samples):
    fe = frontend(sr, **kw)
    wave = torch.from_numpy(batch[:2, :num_samples])
    with torch.no_grad():
        y = fe(wave)
    frames = 1 + num_samples // 512
    assert fe.out_shape(num_samples) == (*expect_cf, frames)
    assert tuple(y.shape) == (2, *expect_cf, frames)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_int16_input_equals_float_input_divided_by_32768(batch, sr):
    fe = frontend(sr, features=ALL, deltas=2)
    pcm = torch.from_numpy(np.round(batch * 32767).astype(np.int16))
    with torch.no_grad():
        from_int = fe(pcm)
        from_float = fe(pcm.float() / 32768.0)
        from_double = fe(pcm.double() / 32768.0)
    assert from_int.dtype == from_double.dtype == torch.float32
    assert torch.equal(from_int, from_float)
    torch.testing.assert_close(from_double, from_float, atol=1e-4, rtol=0)


def test_bad_input_rank_and_dtype_raise_clear_errors(sr):
    fe = frontend(sr)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        fe(torch.zeros(22050))
    with pytest.raises(ValueError, match="int16 or floating"):
        fe(torch.zeros(1, 22050, dtype=torch.int32))


@pytest.mark.parametrize(
    "kw", [{"features": ALL, "deltas": 2}, {"features": ["chroma"], "estimate_tuning": True}]
)
def test_batch_equals_items_one_by_one(batch, sr, kw):
    # the quiet third clip checks that top_db clips relative to each clip's own maximum
    fe = frontend(sr, **kw)
    wave = torch.from_numpy(batch)
    with torch.no_grad():
        together = fe(wave)
        alone = torch.cat([fe(wave[i : i + 1]) for i in range(wave.shape[0])])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)  # dB / MFCC units


def test_cpu_chunking_changes_no_value(batch, sr, one_thread):
    # cpu_chunk_frames=200 feeds 3-s clips (130 frames) one at a time; 0 feeds the whole batch. One thread:
    # chunking itself changes no value, but 2-thread MKL GEMMs round differently for 1 and 3 clips
    wave = torch.from_numpy(batch)
    kw = {"features": ALL, "deltas": 2, "estimate_tuning": True}
    chunked = frontend(sr, cpu_chunk_frames=200, **kw)
    assert chunked._clips_per_chunk(wave) == 1
    with torch.no_grad():
        torch.testing.assert_close(
            chunked(wave), frontend(sr, cpu_chunk_frames=0, **kw)(wave), atol=0, rtol=0
        )


def test_top_db_clips_relative_to_each_clips_own_maximum(music, sr):
    loud = music.copy()
    loud[:11025] = 0.0  # digital silence: > 80 dB of range, so the floor is active
    wave = torch.from_numpy(np.stack([loud, loud * 1e-2]))  # the second clip is 40 dB quieter
    with torch.no_grad():
        y = frontend(sr, features=["logmel"])(wave)
    peak, floor = y.amax(dim=(1, 2, 3)), y.amin(dim=(1, 2, 3))
    torch.testing.assert_close(peak - floor, torch.full_like(peak, 80.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(peak[0] - peak[1], torch.tensor(40.0), atol=1e-3, rtol=0)


def test_autocast_bfloat16_keeps_features_float32_and_equal(batch, sr):
    fe = frontend(sr, features=ALL, deltas=2)
    wave = torch.from_numpy(batch)
    with torch.no_grad():
        ref = fe(wave)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fe(wave)
            single = FEATURES.get("mfcc")(FrontendConfig(deltas=1), sr)(wave)
    assert out.dtype == single.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_jit_trace_matches_eager(batch, sr):
    # torch.jit.trace (cheap on CPU); torch.compile is exercised by benchmarks/bench_features.py --compile
    fe = frontend(sr, features=ALL, deltas=2)
    wave = torch.from_numpy(batch)
    with torch.no_grad():
        traced = torch.jit.trace(fe, wave[:2], check_trace=False)
        other_batch = traced(wave)  # traced on B=2, run on B=3
        eager = fe(wave)
    torch.testing.assert_close(other_batch, eager, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_compile_matches_eager(batch, sr):
    # slow-marked: inductor takes ~10-30 s on 2 CPU cores; log-mel + MFCC keeps the graph small
    fe = frontend(sr, features=["logmel", "mfcc"], deltas=1)
    wave = torch.from_numpy(batch[:2, :22050])
    with torch.no_grad():
        compiled = torch.compile(fe, dynamic=False)(wave)
        eager = fe(wave)
    assert compiled.dtype == torch.float32
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)


def test_gradient_flows_from_features_to_waveform(batch, sr):
    fe = frontend(sr, features=ALL + ["cqt"], deltas=2)
    wave = torch.from_numpy(batch[:2, :22050]).clone().requires_grad_(True)
    y = fe(wave)
    y.square().mean().backward()
    assert wave.grad is not None
    assert torch.isfinite(wave.grad).all()
    assert wave.grad.abs().sum(dim=1).min() > 0  # every clip gets gradient


def test_gradient_is_finite_on_digital_silence(sr):
    fe = frontend(sr, features=ALL + ["cqt"], deltas=1)
    wave = torch.zeros(1, 22050, requires_grad=True)
    y = fe(wave)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(wave.grad).all()


def test_trainable_filterbanks_receive_gradients_and_default_has_no_parameters(batch, sr):
    assert list(frontend(sr, features=ALL, deltas=2).parameters()) == []
    fe = build_frontend(FrontendConfig(features=ALL, deltas=2, trainable=True), sr)
    fe(torch.from_numpy(batch[:2, :22050])).mean().backward()
    names = {n for n, p in fe.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {
        "feats.logmel.mel_fb",
        "feats.mfcc.dct",
        "feats.mfcc.logmel.mel_fb",
        "feats.chroma.chroma_fb",
    } <= names


def test_nnaudio_backend_agrees_with_torch_backend(batch, sr):
    wave = torch.from_numpy(batch[:2, :22050])
    with torch.no_grad():
        a = frontend(sr, features=ALL, deltas=2, backend="torch")(wave)
        b = frontend(sr, features=ALL, deltas=2, backend="nnaudio")(wave)
    # dB / MFCC units; chroma rows are in [0, 1]
    torch.testing.assert_close(a, b, atol=5e-3, rtol=0)


def test_shared_stft_frontend_equals_each_feature_module_alone(batch, sr):
    cfg = FrontendConfig(features=ALL, deltas=2)
    fe = build_frontend(cfg, sr)
    wave = torch.from_numpy(batch)
    with torch.no_grad():
        shared = fe.features(wave)
        for name in ALL:
            alone = FEATURES.get(name)(cfg, sr)(wave)
            torch.testing.assert_close(shared[name], alone, atol=0, rtol=0)


def test_stack_channels_with_different_bins_is_a_build_error(sr):
    with pytest.raises(ValueError, match="same number of frequency bins.*logmel: F=128.*chroma: F=12"):
        build_frontend(FrontendConfig(features=["logmel", "chroma"], stack="channels"), sr)


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            {"features": ["logmel", "mfccs"]},
            r"unknown feature\(s\) \['mfccs'\]; valid: \['chroma', 'cqt', 'logmel'",
        ),
        ({"features": []}, "features is empty"),
        ({"features": ["logmel", "logmel"]}, "twice"),
        ({"deltas": 3}, "deltas must be 0, 1 or 2"),
        ({"n_mfcc": 200}, "n_mfcc must be in"),
        ({"top_db": -5.0}, "top_db"),
        ({"tuning": 0.5}, "tuning"),
        ({"backend": "cuda"}, "backend.*not one of"),
        ({"stack": "time"}, "stack"),
        ({"norm": "stats"}, "norm_mean and norm_std"),
        ({"norm_mean": [0.0], "norm_std": [1.0]}, "use norm='stats'"),
        ({"win_length": 4096}, "win_length"),
        ({"f_min": 100.0, "f_max": 50.0}, "f_max"),
        ({"delta_width": 4}, "delta_width"),
        ({"cpu_chunk_frames": -1}, "cpu_chunk_frames"),
    ],
)
def test_validate_rejects_bad_values_with_specific_messages(kw, message):
    with pytest.raises(ValueError, match=message):
        FrontendConfig(**kw).validate()


def test_sample_rate_dependent_checks_fail_at_build_time():
    with pytest.raises(ValueError, match="above Nyquist"):
        build_frontend(FrontendConfig(f_max=12000.0), 22050)
    with pytest.raises(ValueError, match="CQT: top bin"):
        build_frontend(FrontendConfig(features=["cqt"]), 7000)


def test_config_loads_strictly_and_round_trips_through_to_dict():
    cfg = from_dict(
        FrontendConfig, {"features": "logmel,mfcc", "deltas": 2, "chroma_norm": math.inf, "f_max": 8000}
    )
    assert cfg.features == ["logmel", "mfcc"] and cfg.f_max == 8000.0
    assert from_dict(FrontendConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(FrontendConfig, {"n_mel": 64})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(FrontendConfig, {"deltas": "two"})
    with pytest.raises(ValueError, match="unknown feature"):
        from_dict(FrontendConfig, {"features": ["spectral_contrast"]})


@pytest.mark.parametrize("backend", ["torch", "nnaudio"])
def test_matrices_are_non_persistent_buffers_not_in_checkpoints(sr, backend):
    fe = frontend(sr, features=ALL + ["cqt"], deltas=2, backend=backend)
    assert fe.state_dict() == {}
    buffers = dict(fe.named_buffers())
    assert "feats.logmel.mel_fb" in buffers and "spectrogram.window" in buffers
    assert fe.to(torch.float64).spectrogram.window.dtype == torch.float64  # buffers follow .to()


def test_batchnorm_normalises_each_band(batch, sr):
    fe = build_frontend(FrontendConfig(features=["logmel", "chroma"], norm="batchnorm"), sr).train()
    y = fe(torch.from_numpy(batch))
    mean = y.mean(dim=(0, 3))
    std = y.std(dim=(0, 3), unbiased=False)
    assert mean.shape == (1, 140)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
    assert ((std - 1).abs() < 1e-2).all()
    assert set(fe.state_dict()) >= {"bn.weight", "bn.running_mean"}


def test_estimated_stats_normalise_each_band(batch, sr):
    wave = torch.from_numpy(batch)
    cfg = estimate_norm_stats(FrontendConfig(features=["mfcc"], deltas=2), sr, [wave[:2], wave[2:]])
    assert cfg.norm == "stats" and len(cfg.norm_mean) == 60
    from_dict(FrontendConfig, to_dict(cfg))  # still a valid config
    with torch.no_grad():
        y = build_frontend(cfg, sr)(wave)
    torch.testing.assert_close(y.mean(dim=(0, 3)), torch.zeros(1, 60), atol=1e-3, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 3), unbiased=False), torch.ones(1, 60), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="expected F=60 or C\\*F=60"):
        build_frontend(dataclasses.replace(cfg, norm_mean=[0.0] * 7, norm_std=[1.0] * 7), sr)


def test_deltas_need_enough_frames(sr):
    with pytest.raises(ValueError, match="at least 9 frames"):
        frontend(sr, features=["mfcc"], deltas=1)(torch.zeros(1, 512 * 4))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backend", ["torch", "nnaudio"])
def test_cuda_output_equals_cpu_output(batch, sr, backend):
    cfg = FrontendConfig(features=ALL + ["cqt"], deltas=2, backend=backend)
    wave = torch.from_numpy(batch)
    with torch.no_grad():
        cpu = build_frontend(cfg, sr)(wave)
        gpu = build_frontend(cfg, sr).cuda()(wave.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, atol=5e-3, rtol=0)


@pytest.mark.gpu
@cuda
def test_cuda_autocast_keeps_float32(batch, sr):
    fe = build_frontend(FrontendConfig(features=ALL, deltas=2), sr).cuda()
    wave = torch.from_numpy(batch).cuda()
    with torch.no_grad():
        ref = fe(wave)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fe(wave)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
