"""The ``musicnn`` feature: librosa parity at 16 kHz, on-device resampling, frame count, float32 on loud input."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soxr
import torch

from kernels import FEATURES, FrontendConfig, build_frontend
from kernels.musicnn_input import MUSICNN_RATE, MusicnnInput, resampled_length
from tests.kernels.conftest import synth_music

CFG = FrontendConfig(features=["musicnn"], n_fft=512, hop_length=256, n_mels=96, top_db=None)
FLOAT16_MAX = 65504.0


def librosa_musicnn(y16k: np.ndarray) -> np.ndarray:
    """``musicnn/extractor.py``'s input in float32: ``log10(1 + 10000 * melspectrogram)`` -> (96, frames)."""
    mel = librosa.feature.melspectrogram(y=y16k, sr=MUSICNN_RATE, n_fft=512, hop_length=256, n_mels=96)
    return np.log10(1 + 10000 * mel.astype(np.float32))


def ours(y: np.ndarray, sample_rate: int) -> np.ndarray:
    frontend = build_frontend(CFG, sample_rate).eval()
    with torch.no_grad():
        return frontend(torch.from_numpy(y)[None]).numpy()[0, 0]  # (96, frames)


def test_registered_by_name() -> None:
    assert FEATURES.get("musicnn") is MusicnnInput


def test_equals_librosa_at_16k() -> None:
    y = synth_music(3, seconds=3.0, sr=MUSICNN_RATE)
    got, want = ours(y, MUSICNN_RATE), librosa_musicnn(y)
    assert got.shape == want.shape == (96, 1 + len(y) // 256)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert want.max() > 2.0  # a real dynamic range, not a near-zero comparison


def test_patch_of_47616_samples_is_187_frames() -> None:
    frontend = build_frontend(CFG, MUSICNN_RATE)
    assert frontend.out_shape(47616) == (1, 96, 187)
    assert frontend(torch.zeros(2, 47616)).shape == (2, 1, 96, 187)


@pytest.mark.parametrize("sample_rate", [22050, 44100, 8000])
def test_out_shape_matches_output_after_resampling(sample_rate: int) -> None:
    n = int(3.1 * sample_rate) + 7
    frontend = build_frontend(CFG, sample_rate)
    out = frontend(torch.zeros(1, n))
    assert tuple(out.shape[1:]) == frontend.out_shape(n)
    assert out.shape[-1] == 1 + resampled_length(n, sample_rate) // 256
    assert resampled_length(n, sample_rate) == int(np.ceil(n * MUSICNN_RATE / sample_rate))


@pytest.mark.parametrize("sample_rate", [22050, 44100])
def test_resampling_close_to_librosa_load(sample_rate: int) -> None:
    """The original resamples with librosa.load(sr=16000) (soxr 'HQ'); ours runs on the device in the model.
    Below the top three bands (7.5-8 kHz, the resamplers' transition bands) they agree closely."""
    y = synth_music(5, seconds=3.0, sr=sample_rate)
    y = y + 0.02 * np.random.default_rng(0).standard_normal(len(y)).astype(np.float32)  # full-band content
    want = librosa_musicnn(soxr.resample(y, sample_rate, MUSICNN_RATE, "HQ").astype(np.float32))
    got = ours(y, sample_rate)
    assert got.shape == want.shape
    diff = got - want
    assert np.abs(diff[:-3]).max() < 0.05
    assert np.abs(diff[-3:].mean(axis=1)).max() < 0.15  # per-band mean in the transition band


def test_loud_input_is_finite_where_float16_overflows() -> None:
    """A full-scale square wave: its mel power exceeds float16's 65504 / 10000, where the original's float16
    cast gives inf; the float32 feature stays finite and keeps the level differences."""
    t = np.arange(47616) / MUSICNN_RATE
    square = np.sign(np.sin(2 * np.pi * 220 * t)).astype(np.float32) * 0.999
    mel = librosa.feature.melspectrogram(y=square, sr=MUSICNN_RATE, n_fft=512, hop_length=256, n_mels=96)
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(10000) * mel.astype(np.float16)).any()  # the original's overflow
    loud, quieter = ours(square, MUSICNN_RATE), ours(0.5 * square, MUSICNN_RATE)
    assert np.isfinite(loud).all()
    assert loud.max() > np.log10(1 + FLOAT16_MAX)
    assert (loud - quieter).max() > 0.5  # the level still shows (log10(4) = 0.6 where 10000 * mel >> 1)


def test_int16_input_equals_scaled_float() -> None:
    y = synth_music(7, seconds=1.0, sr=MUSICNN_RATE)
    pcm = torch.from_numpy(np.round(y * 32767).astype(np.int16))[None]
    frontend = build_frontend(CFG, MUSICNN_RATE)
    torch.testing.assert_close(frontend(pcm), frontend(pcm.float() / 32768.0))


@pytest.mark.parametrize("sample_rate", [16000, 22050])
def test_no_state_in_checkpoints(sample_rate: int) -> None:
    """Kernel, window and filterbank are rebuilt from the config: a model's state dict is the same at any rate."""
    assert build_frontend(CFG, sample_rate).state_dict() == {}


def test_mixing_with_a_shard_rate_feature_is_refused() -> None:
    cfg = FrontendConfig(features=["musicnn", "logmel"], n_fft=512, hop_length=256, n_mels=96)
    with pytest.raises(ValueError, match="different frame rates"):
        build_frontend(cfg, 22050)


def test_f_max_above_16k_nyquist_is_refused() -> None:
    cfg = FrontendConfig(features=["musicnn"], n_fft=512, hop_length=256, n_mels=96, f_max=11000.0)
    with pytest.raises(ValueError, match="Nyquist"):
        build_frontend(cfg, 44100)
