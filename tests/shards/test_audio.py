"""shards.audio: decoding parity with librosa, header probing, specific failure reasons, helpers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from shards.audio import (
    AudioError,
    is_audio_name,
    load_audio,
    peak_normalize,
    probe,
    resample,
    to_mono,
    trim_silence,
)


@pytest.mark.parametrize(
    "ext,sr,ch",
    [("wav", 44100, 2), ("flac", 96000, 6), ("ogg", 8000, 1), ("mp3", 48000, 2), ("wav", 22050, 1)],
)
def test_load_audio_equals_librosa_load(tmp_path, clip_writer, ext, sr, ch):
    import librosa

    p = clip_writer(tmp_path / f"c.{ext}", sample_rate=sr, channels=ch, seconds=0.7)
    y, info = load_audio(p, 22050)
    ref, _ = librosa.load(str(p), sr=22050, mono=True)
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert np.max(np.abs(y - ref)) < 2e-6
    assert (info.orig_sample_rate, info.channels) == (sr, ch)
    # a window of the file equals librosa's offset/duration window
    y2, _ = load_audio(p, 16000, offset_seconds=0.1, max_seconds=0.4)
    ref2, _ = librosa.load(str(p), sr=16000, mono=True, offset=0.1, duration=0.4)
    assert y2.shape == ref2.shape and np.max(np.abs(y2 - ref2)) < 2e-6


def test_probe_reads_header_only_values(tmp_path, clip_writer):
    p = clip_writer(tmp_path / "x.flac", sample_rate=32000, channels=2, seconds=0.5)
    info = probe(p)
    assert (info.orig_sample_rate, info.channels, info.frames) == (32000, 2, 16000)


def test_failures_have_specific_reasons(tmp_path, clip_writer, corrupt_writer):
    cases = {
        "empty.wav": ("empty", "empty file (0 bytes)"),
        "header.wav": ("header_only", "no audio frames (header declares 0 frames)"),
        "text.wav": ("text", "not audio or unsupported format"),
        "garbage.mp3": ("garbage", "not audio or unsupported format"),
        "cut.wav": ("truncated", "corrupt or truncated"),
    }
    for name, (kind, reason) in cases.items():
        p = corrupt_writer(tmp_path / name, kind)
        with pytest.raises(AudioError) as err:
            load_audio(p, 22050)
        assert err.value.reason.startswith(reason), (name, err.value.reason)
        assert err.value.path == str(p) and str(tmp_path) not in err.value.reason
    with pytest.raises(AudioError, match="missing file"):
        probe(tmp_path / "absent.wav")
    os.symlink(tmp_path / "absent.wav", tmp_path / "link.wav")
    with pytest.raises(AudioError, match="dangling symlink"):
        probe(tmp_path / "link.wav")
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(AudioError, match="is a directory"):
        probe(tmp_path / "d.wav")


def test_is_audio_name_is_case_insensitive_and_skips_hidden_and_appledouble():
    assert is_audio_name("a/b/Song.FLAC") and is_audio_name("x.Mp3") and is_audio_name("y.aiff")
    assert not is_audio_name("._Song.flac") and not is_audio_name(".hidden.wav")
    assert not is_audio_name("cover.jpg") and not is_audio_name("features_30_sec.csv")


def test_to_mono_resample_and_peak_normalize():
    x = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(to_mono(x), [0.0, 0.5])
    assert to_mono(x[:, :1]).shape == (2,)
    # channel-planar (PyAV) input takes the row-sum path: bit-identical to the interleaved reduction
    planar = np.random.default_rng(0).standard_normal((6, 1001)).astype(np.float32)
    np.testing.assert_array_equal(
        to_mono(planar.T), np.ascontiguousarray(planar.T).mean(axis=1, dtype=np.float32)
    )
    sig = np.sin(np.arange(44100) / 10).astype(np.float32)
    assert resample(sig, 44100, 22050).shape == (22050,)
    assert resample(sig[:1001], 44100, 22050).shape == (501,)  # ceil(1001 / 2), as librosa
    assert resample(sig, 22050, 22050) is sig
    y = peak_normalize(0.1 * sig)
    assert np.max(np.abs(y)) == pytest.approx(0.99, abs=1e-6)
    z = np.zeros(10, np.float32)
    assert peak_normalize(z) is z


@pytest.mark.parametrize("n", [300, 5000, 50000])
def test_trim_silence_matches_librosa_effects_trim(n):
    import librosa

    rng = np.random.default_rng(n)
    x = np.concatenate([np.zeros(n), 0.3 * rng.standard_normal(n), 1e-4 * rng.standard_normal(n)])
    x = x.astype(np.float32)
    for top_db in (20, 60):
        ref, (start, _) = librosa.effects.trim(x, top_db=top_db)
        got = trim_silence(x, top_db)
        assert got.shape == ref.shape
        assert np.array_equal(got, ref)
    assert trim_silence(np.zeros(100, np.float32), 60).size == 0


def test_wav_written_by_soundfile_round_trips_exactly(tmp_path):
    # int16 in, 22050 Hz mono: no resampling, so the float decode is exact
    pcm = (np.arange(-2000, 2000, dtype=np.int16) * 7).astype(np.int16)
    sf.write(str(tmp_path / "a.wav"), pcm, 22050, subtype="PCM_16")
    y, _ = load_audio(tmp_path / "a.wav", 22050)
    np.testing.assert_array_equal(np.rint(y * 32768).astype(np.int16), pcm)


def test_without_pyav_libsndfile_formats_decode_and_ffmpeg_formats_say_how_to_install(tmp_path, av_writer):
    """PyAV missing (a bare machine): WAV still decodes exactly; an AAC file gets one specific reason."""
    import subprocess
    import sys

    wav = tmp_path / "a.wav"
    sf.write(wav, np.linspace(-0.5, 0.5, 22050, dtype=np.float32), 22050, subtype="FLOAT")
    m4a, _ = av_writer(tmp_path / "b.m4a", "aac", sample_rate=22050, channels=1, seconds=1.0)
    code = f"""
import sys
sys.modules["av"] = None  # `import av` raises ImportError, as on a machine without PyAV
import numpy as np
from shards.audio import AudioError, load_audio
wave, _ = load_audio({str(wav)!r}, 22050)
assert np.array_equal(wave, np.linspace(-0.5, 0.5, 22050, dtype=np.float32))
try:
    load_audio({str(m4a)!r}, 22050)
except AudioError as err:
    print(err)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{m4a}: needs FFmpeg through PyAV, which is not installed (pip install av)"
