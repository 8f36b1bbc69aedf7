"""Shared audio for the feature tests: synthetic music and white noise at 22,050 Hz, made in memory."""

from __future__ import annotations

import numpy as np
import pytest

SR = 22050
SECONDS = 3.0


def synth_music(seed: int, seconds: float = SECONDS, sr: int = SR, detune: float = 0.0) -> np.ndarray:
    """A few harmonic notes (slightly detuned by ``detune`` semitones, with decaying partials and onsets),
    a chord, noise bursts and a low noise floor; float32 in [-1, 1), ``(round(seconds * sr),)``."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    y = np.zeros(n)
    note_len = int(0.5 * sr)
    midi = rng.choice([45, 48, 52, 55, 57, 60, 64, 67, 69, 72], size=int(np.ceil(n / note_len)))
    for i, m in enumerate(midi):
        start = i * note_len
        seg = slice(start, min(n, start + note_len))
        tt = t[seg] - t[start]
        f0 = 440.0 * 2 ** ((m - 69 + detune) / 12)
        env = np.exp(-3.0 * tt) * np.minimum(1.0, tt / 0.01)
        for h in range(1, 6):
            if h * f0 < sr / 2:
                y[seg] += (0.25 / h) * env * np.sin(2 * np.pi * h * f0 * tt + rng.uniform(0, 2 * np.pi))
    # a sustained chord underneath (C major, detuned like the notes)
    for m in (60, 64, 67):
        y += 0.05 * np.sin(2 * np.pi * 440.0 * 2 ** ((m - 69 + detune) / 12) * t)
    # noise bursts (drum-like) every 0.25 s
    for start in range(0, n, sr // 4):
        k = min(n - start, int(0.05 * sr))
        y[start : start + k] += 0.3 * rng.standard_normal(k) * np.exp(-np.arange(k) / (0.01 * sr))
    y += 0.003 * rng.standard_normal(n)
    y = 0.9 * y / np.abs(y).max()
    return y.astype(np.float32)


@pytest.fixture(scope="session")
def sr() -> int:
    return SR


@pytest.fixture(scope="session")
def music() -> np.ndarray:
    return synth_music(0)


@pytest.fixture(scope="session")
def noise() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (0.3 * rng.standard_normal(int(SECONDS * SR))).clip(-1, 1).astype(np.float32)


@pytest.fixture(scope="session")
def clips(music: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    """Named test clips of equal length: music, detuned music, white noise."""
    return {"music": music, "music_detuned": synth_music(2, detune=0.23), "noise": noise}


@pytest.fixture(scope="session")
def batch(clips: dict[str, np.ndarray]) -> np.ndarray:
    """``(3, T)`` float32 batch of the clips, the last one 30 dB quieter (tests per-sample top_db)."""
    rows = [clips["music"], clips["music_detuned"], clips["noise"] * 0.03]
    return np.stack(rows).astype(np.float32)
