"""The synthetic corpus: determinism, formats, sanity of the audio, and genre structure that is learnable
from rich features but not from loudness or brightness alone."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shards.synthetic import GENRES, OVERLAP, clip_seed, generate_clip, make_corpus

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "tools" / "make_synthetic.py"


def _digests(paths: list[Path]) -> dict[str, str]:
    return {f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _clip(
    genre: str, index: int, seconds: float = 4.0, sr: int = 22050, seed: int = 0, overlap: float = OVERLAP
) -> np.ndarray:
    rng = np.random.default_rng(clip_seed(seed, genre, index))
    return generate_clip(genre, rng, seconds, sr, overlap=overlap)


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    kw = dict(
        clips_per_genre=4,
        duration=1.5,
        formats=("wav", "flac", "mp3", "ogg"),
        genres=("jazz", "metal"),
        workers=1,
        progress=False,
    )
    a = make_corpus(tmp_path / "a", seed=3, **kw)
    b = make_corpus(tmp_path / "b", seed=3, **kw)
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.suffix for p in a] == [".wav", ".flac", ".mp3", ".ogg"] * 2
    lossless_or_mp3 = [(pa, pb) for pa, pb in zip(a, b) if pa.suffix != ".ogg"]
    assert all(pa.read_bytes() == pb.read_bytes() for pa, pb in lossless_or_mp3)
    # libsndfile gives each Ogg stream a random serial number, so Ogg files match sample for sample instead
    for pa, pb in zip(a, b):
        if pa.suffix == ".ogg":
            np.testing.assert_array_equal(sf.read(pa)[0], sf.read(pb)[0])


def test_different_seed_changes_audio(tmp_path: Path) -> None:
    a = make_corpus(
        tmp_path / "a", clips_per_genre=2, duration=1.0, genres=("pop",), seed=0, workers=1, progress=False
    )
    b = make_corpus(
        tmp_path / "b", clips_per_genre=2, duration=1.0, genres=("pop",), seed=1, workers=1, progress=False
    )
    for pa, pb in zip(a, b):
        xa, xb = sf.read(pa)[0], sf.read(pb)[0]
        assert xa.shape == xb.shape
        assert np.mean(np.abs(xa - xb)) > 0.1 * np.mean(np.abs(xa))
    # clips of one corpus differ from each other too
    x0, x1 = sf.read(a[0])[0], sf.read(a[1])[0]
    assert not np.allclose(x0, x1)


def test_cli_with_two_workers_matches_in_process_generation(tmp_path: Path) -> None:
    genres = ("blues", "classical", "hiphop")
    ref = make_corpus(
        tmp_path / "ref",
        clips_per_genre=3,
        duration=1.0,
        formats=("wav", "flac"),
        genres=genres,
        seed=7,
        workers=1,
        progress=False,
    )
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, str(CLI), str(out), "--clips-per-genre", "3", "--duration", "1", "--formats", "wav,flac",
         "--genres", *genres, "--seed", "7", "--workers", "2", "--quiet"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote 9 clips" in proc.stdout
    cli_files = sorted(out.rglob("*.*"))
    assert len(cli_files) == 9
    assert _digests(cli_files) == _digests(ref)


def test_cli_help_and_bad_arguments() -> None:
    help_ = subprocess.run(
        [sys.executable, str(CLI), "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert help_.returncode == 0 and "--clips-per-genre" in help_.stdout and "--formats" in help_.stdout
    bad = subprocess.run(
        [sys.executable, str(CLI), "/tmp/unused", "--genres", "polka"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown genre 'polka'" in bad.stderr


@pytest.mark.parametrize(
    ("formats", "channels", "sample_rate"),
    [(("wav", "flac", "ogg", "mp3"), 1, 22050), (("flac", "mp3"), 2, 44100), (("wav", "ogg"), 2, 16000)],
)
def test_every_format_channel_rate_is_written_and_readable(
    tmp_path: Path, formats: tuple[str, ...], channels: int, sample_rate: int
) -> None:
    duration = 1.25
    paths = make_corpus(
        tmp_path, clips_per_genre=len(formats), duration=duration, sample_rate=sample_rate, formats=formats,
        genres=("disco", "reggae"), channels=channels, workers=1, progress=False,
    )  # fmt: skip
    assert len(paths) == 2 * len(formats)
    for path in paths:
        genre, index = path.parent.name, int(path.name.split(".")[1])
        assert (
            path.parent.parent == tmp_path
            and path.name == f"{genre}.{index:05d}.{formats[index % len(formats)]}"
        )
        info = sf.info(str(path))
        assert info.samplerate == sample_rate and info.channels == channels
        assert abs(info.frames - round(duration * sample_rate)) <= (
            0 if path.suffix in (".wav", ".flac") else 0.02 * sample_rate
        )
        data, _ = sf.read(str(path), always_2d=True)
        assert data.shape[1] == channels and np.isfinite(data).all() and np.sqrt(np.mean(data**2)) > 0.01
        if channels == 2:  # parts are panned: the two channels differ
            assert np.mean(np.abs(data[:, 0] - data[:, 1])) > 0.01 * np.mean(np.abs(data))
    assert not list(tmp_path.rglob(".*.part"))


def test_bad_arguments_fail_fast_with_specific_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown genre 'polka'"):
        make_corpus(tmp_path, genres=("polka",), progress=False)
    with pytest.raises(ValueError, match="unknown format 'aac'"):
        make_corpus(tmp_path, formats=("wav", "aac"), progress=False)
    with pytest.raises(ValueError, match="MP3 cannot store 12345 Hz"):
        make_corpus(tmp_path, formats=("mp3",), sample_rate=12345, progress=False)
    with pytest.raises(ValueError, match="channels"):
        generate_clip("rock", np.random.default_rng(0), 1.0, 22050, channels=6)
    with pytest.raises(ValueError, match="overlap"):
        make_corpus(tmp_path, overlap=1.5, progress=False)
    with pytest.raises(ValueError, match="duration"):
        generate_clip("rock", np.random.default_rng(0), 0.0, 22050)
    assert not list(tmp_path.rglob("*.*"))  # nothing written before validation passed


def test_clips_are_finite_bounded_and_not_silent() -> None:
    sr = 16000
    rms_db = []
    for genre in GENRES:
        for index in range(3):
            x = _clip(genre, index, seconds=2.0, sr=sr)
            assert x.dtype == np.float32 and x.shape == (2 * sr,)
            assert np.isfinite(x).all()
            assert np.max(np.abs(x)) <= 1.0
            rms_db.append(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))))
    rms_db = np.array(rms_db)
    # loudness is a per-clip random target in [-30, -14] dBFS whatever the genre
    assert rms_db.min() > -31.0 and rms_db.max() < -13.0
    assert rms_db.max() - rms_db.min() > 6.0
    stereo = generate_clip("jazz", np.random.default_rng(0), 1.0, sr, channels=2)
    assert stereo.shape == (sr, 2) and stereo.dtype == np.float32 and np.max(np.abs(stereo)) <= 1.0


def test_genre_recipes_differ_in_onset_rate() -> None:
    librosa = pytest.importorskip("librosa")
    sr = 22050

    def onset_rate(x: np.ndarray) -> float:  # detected onsets per second
        envelope = librosa.onset.onset_strength(y=x, sr=sr)
        onsets = librosa.onset.onset_detect(onset_envelope=envelope, sr=sr, wait=1, delta=0.05)
        return len(onsets) / (x.shape[0] / sr)

    genres = ("classical", "metal", "hiphop", "reggae")
    # overlap=0: the genres' own recipes, no borrowed parts
    rates = {
        g: np.array([onset_rate(_clip(g, i, seconds=4.0, sr=sr, overlap=0.0)) for i in range(8)])
        for g in genres
    }
    # metal's 16th-note chugs and double kick at 130-210 BPM vs classical's 8th/16th arpeggios at 60-115 BPM
    assert np.median(rates["metal"]) > 1.3 * np.median(rates["classical"]), rates
    # reggae's one-drop at 62-92 BPM is the sparsest; hiphop's slow beats sit below metal
    assert rates["reggae"].max() < rates["metal"].min(), rates
    assert np.median(rates["hiphop"]) < 0.7 * np.median(rates["metal"]), rates


def _features(
    x: np.ndarray, sr: int, mel_basis: np.ndarray, chroma_basis: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip ``simple`` = [RMS, mean spectral centroid] and ``rich`` = MFCC/chroma/tempogram statistics."""
    import librosa

    spec = np.abs(librosa.stft(x, n_fft=2048, hop_length=512))  # (1025, frames)
    power = spec**2
    simple = np.array(
        [np.sqrt(np.mean(x.astype(np.float64) ** 2)), librosa.feature.spectral_centroid(S=spec, sr=sr).mean()]
    )
    log_mel = librosa.power_to_db(mel_basis @ power)  # (128, frames)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=20)  # (20, frames)
    chroma = chroma_basis @ power
    chroma = chroma / np.maximum(chroma.max(axis=0, keepdims=True), 1e-10)  # (12, frames)
    onset = librosa.onset.onset_strength(S=log_mel, sr=sr)
    tempogram = librosa.feature.tempogram(onset_envelope=onset, sr=sr, win_length=192).mean(axis=1)  # (192,)
    edges = np.unique(np.geomspace(1, tempogram.shape[0], 13).astype(int))
    tempo_bands = [tempogram[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]
    chroma_profile = np.sort(chroma.mean(axis=1))[::-1]  # key-invariant: keys are random per clip
    rich = np.concatenate(
        [
            mfcc.mean(axis=1),
            mfcc.std(axis=1),
            chroma_profile,
            [chroma.std(axis=1).mean()],
            tempo_bands,
            [onset.mean(), onset.std()],
        ]
    )
    return simple, rich


def test_loudness_and_centroid_do_not_separate_genres_but_richer_features_do() -> None:
    librosa = pytest.importorskip("librosa")
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    import time

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sr, clips, seconds = 22050, 16, 4.0
    start = time.perf_counter()
    mel_basis = librosa.filters.mel(sr=sr, n_fft=2048, n_mels=128)
    chroma_basis = librosa.filters.chroma(sr=sr, n_fft=2048, tuning=0.0)
    simple, rich, labels = [], [], []
    for label, genre in enumerate(GENRES):
        for index in range(clips):
            s, r = _features(
                _clip(genre, index, seconds=seconds, sr=sr, seed=11), sr, mel_basis, chroma_basis
            )
            simple.append(s)
            rich.append(r)
            labels.append(label)
    y = np.array(labels)
    print(f"features of {len(y)} clips in {time.perf_counter() - start:.1f} s")
    cv = StratifiedKFold(n_splits=4, shuffle=True, random_state=0)
    simple_acc = cross_val_score(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), np.array(simple), y, cv=cv
    ).mean()
    rich_acc = cross_val_score(
        make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=5000)), np.array(rich), y, cv=cv
    ).mean()
    print(f"10-genre CV accuracy: [RMS, centroid] {simple_acc:.3f}  rich features {rich_acc:.3f}")
    assert simple_acc <= 0.45, simple_acc
    assert rich_acc >= simple_acc + 0.25, (simple_acc, rich_acc)
    assert rich_acc >= 0.7, rich_acc
