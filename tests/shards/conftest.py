"""Shared fixtures for shard tests: small music-like clips written with real codecs (soundfile).

Tests use the ``clip_writer`` / ``corrupt_writer`` fixtures (the plain functions :func:`write_clip` and
:func:`write_corrupt`), so tree builders need no imports from this file. The FFmpeg-encoder writers
(``av_writer``, ``broken_av_writer``, ``ffmpeg_command``) live in ``tests/conftest.py``, shared with
``tests/engine``; they are re-exported here for ``benchmarks/formats.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import AV_CODECS, music_like, write_av_clip, write_broken_av  # noqa: F401 (re-exported)

_SUBTYPE = {
    ".wav": "PCM_16",
    ".flac": "PCM_16",
    ".ogg": "VORBIS",
    ".mp3": "MPEG_LAYER_III",
    ".aiff": "PCM_16",
}
_FORMAT = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3", ".aiff": "AIFF", ".au": "AU"}


def write_clip(
    path: str | Path,
    *,
    sample_rate: int = 22050,
    channels: int = 1,
    seconds: float = 0.5,
    seed: int | None = None,
) -> Path:
    """Write a music-like clip; the codec comes from the extension (wav/flac/ogg/mp3/aiff/au, any case).

    ``seed`` defaults to a hash of the path so that distinct files never have identical content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        seed = int(hashlib.sha1(str(path).encode()).hexdigest()[:8], 16)
    ext = path.suffix.lower()
    data = music_like(seconds, sample_rate, channels, seed)
    sf.write(str(path), data, sample_rate, format=_FORMAT[ext], subtype=_SUBTYPE.get(ext))
    return path


def write_corrupt(path: str | Path, kind: str = "garbage") -> Path:
    """Broken files: ``garbage`` (random bytes), ``text``, ``empty`` (0 bytes), ``header_only`` (a WAV header
    declaring 0 frames), ``truncated`` (a WAV cut inside its header)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("this is not audio, just a text file named like one\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind in ("header_only", "truncated"):
        tmp = path.with_name("_tmp_" + path.name + ".wav")
        sf.write(str(tmp), np.zeros((100, 1), np.float32), 22050, subtype="PCM_16")
        raw = tmp.read_bytes()
        tmp.unlink()
        path.write_bytes(raw[:44] if kind == "header_only" else raw[:30])
    else:
        raise ValueError(kind)
    return path


@pytest.fixture
def clip_writer():
    """The :func:`write_clip` function."""
    return write_clip


@pytest.fixture
def corrupt_writer():
    """The :func:`write_corrupt` function."""
    return write_corrupt


def read_shard_set(out: str | Path) -> dict:
    """Read a shard set back with tarfile: ``{"manifest", "samples": {key: (int16 pcm, meta)}, "per_shard":
    {name: [keys]}}``; asserts members come in (pcm, json) pairs of one key."""
    import json
    import tarfile

    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text())
    samples: dict = {}
    per_shard: dict = {}
    for split, entry in manifest["splits"].items():
        for sh in entry["shards"]:
            keys = []
            with tarfile.open(out / sh["name"]) as tar:
                members = tar.getmembers()
                assert len(members) % 2 == 0
                for m_pcm, m_meta in zip(members[::2], members[1::2]):
                    key = m_pcm.name.split(".", 1)[0]
                    assert m_pcm.name == f"{key}.pcm" and m_meta.name == f"{key}.json"
                    pcm = np.frombuffer(tar.extractfile(m_pcm).read(), dtype="<i2")
                    meta = json.loads(tar.extractfile(m_meta).read())
                    assert meta["split"] == split
                    assert key not in samples, f"{key} stored twice"
                    samples[key] = (pcm, meta)
                    keys.append(key)
            per_shard[sh["name"]] = keys
    return {"manifest": manifest, "samples": samples, "per_shard": per_shard}


def write_tagged_audio(
    path: str | Path,
    genres: list[str] | None,
    *,
    id3_version: int = 4,
    id3v1_genre: int | None = None,
    seconds: float = 0.5,
) -> Path:
    """A real audio file whose container comes from the extension, with ``genres`` written by mutagen.

    ``.mp3`` (FFmpeg's LAME; ID3v2.``id3_version`` ``TCON``, or with ``id3v1_genre`` only an ID3v1 tag with
    that genre byte), ``.flac`` (libsndfile; Vorbis ``GENRE``), ``.opus`` (``genre``), ``.m4a`` (AAC; ``©gen``),
    ``.wma`` (``WM/Genre``), ``.wav`` (no tags). ``genres`` None: no genre (an MP3 then gets a title only).
    """
    from mutagen.asf import ASF
    from mutagen.flac import FLAC
    from mutagen.id3 import ID3, TCON, TIT2
    from mutagen.mp4 import MP4
    from mutagen.oggopus import OggOpus

    path = Path(path)
    ext = path.suffix.lower()
    if ext in (".flac", ".wav"):
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = int(hashlib.sha1(str(path).encode()).hexdigest()[:8], 16)
        rate = 44100 if ext == ".flac" else 22050
        sf.write(path, music_like(seconds, rate, seed=seed), rate)
    else:
        codec = {".mp3": "mp3", ".opus": "opus", ".m4a": "aac", ".wma": "wma"}[ext]
        write_av_clip(path, codec, seconds=seconds, channels=1)
    if ext == ".mp3" and id3v1_genre is not None:  # ID3v1 only: 128 bytes at the end
        ID3(path).delete(path)  # FFmpeg writes an ID3v2 header: remove it so only ID3v1 is left
        v1 = b"TAG" + b"Title".ljust(30, b"\0") + bytes(60) + b"2001" + bytes(30) + bytes([id3v1_genre])
        with open(path, "ab") as f:
            f.write(v1)
    elif ext == ".mp3":
        tags = ID3()
        tags.add(TCON(encoding=3, text=genres) if genres is not None else TIT2(encoding=3, text=["A song"]))
        tags.save(path, v2_version=id3_version)
    elif genres is not None and ext != ".wav":
        f = {".flac": FLAC, ".opus": OggOpus, ".m4a": MP4, ".wma": ASF}[ext](path)
        f[{".flac": "GENRE", ".opus": "genre", ".m4a": "\xa9gen", ".wma": "WM/Genre"}[ext]] = list(genres)
        f.save()
    return path


@pytest.fixture
def tagged_audio_writer():
    """The :func:`write_tagged_audio` function."""
    return write_tagged_audio


@pytest.fixture
def shard_set_reader():
    """The :func:`read_shard_set` function."""
    return read_shard_set
