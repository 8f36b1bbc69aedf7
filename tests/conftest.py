"""Fixtures shared by every test folder: ``one_thread``, and real media files written by FFmpeg's encoders
(PyAV): ``av_writer`` (:func:`write_av_clip`), ``broken_av_writer`` (:func:`write_broken_av`),
``ffmpeg_command`` (an ``ffmpeg`` on PATH for ``librosa.load``'s audioread fallback)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with one intra-op thread, then restore the count.

    Two uses: tiny models on a shared 2-core machine, where threads cost more than they give; and exact
    (``atol=0``) comparisons between batch shapes, which multi-threaded MKL GEMMs do not give: with 2
    threads MKL splits a ``(128, 1025) @ (1025, frames)`` product differently for 1 and 3 clips, and the sums
    round differently (seen on Intel Xeon; the AMD machine before it happened to agree).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def music_like(seconds: float, sample_rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A tone + harmonics + noise clip, float32 ``(frames, channels)`` in [-0.5, 0.5], distinct per seed."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    t = np.arange(n) / sample_rate
    f0 = 110.0 * 2 ** (rng.integers(0, 24) / 12)
    out = np.empty((n, channels), dtype=np.float32)
    env = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * t)
    for c in range(channels):
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in (1, 2, 3))
        x = 0.25 * env * x / 1.84 + 0.03 * rng.standard_normal(n)
        out[:, c] = x.astype(np.float32)
    return out


# ---- files written by FFmpeg's encoders (PyAV): what libsndfile cannot decode, and broken ones

# (extension) -> (encoder, muxer, sample format the encoder takes, encoder options)
AV_CODECS = {
    "aac": ("aac", "mp4", "fltp", {}),
    "alac": ("alac", "ipod", "s16p", {}),
    "opus": ("libopus", "opus", "flt", {}),
    "webm": ("libopus", "webm", "flt", {}),
    "wma": ("wmav2", "asf", "fltp", {"b": "128k"}),
    "mp3": ("libmp3lame", "mp3", "fltp", {}),
    "mka": ("flac", "matroska", "s16", {}),
    "ac3": ("ac3", "ac3", "fltp", {}),
    "adts": ("aac", "adts", "fltp", {}),  # raw AAC (.aac): no index, the header's length is a bitrate estimate
}


def write_av_clip(
    path: str | Path,
    codec: str,
    *,
    sample_rate: int | None = None,
    channels: int = 2,
    seconds: float = 2.0,
    seed: int | None = None,
    video: bool = False,
    faststart: bool = False,
    options: dict | None = None,
) -> tuple[Path, np.ndarray]:
    """Encode a music-like clip with FFmpeg's ``codec`` encoder (a key of ``AV_CODECS``) into ``path``
    (any name: the muxer comes from the codec, so an MP3 can be written as ``x.wav``).

    ``sample_rate`` defaults to 48 kHz for Opus, 44.1 kHz otherwise. ``video`` adds a small MPEG-4 video stream before the audio (an ``.mp4`` music video), ``faststart``
    puts the MP4 index first. Returns ``(path, pcm)``: the int16 ``(frames, channels)`` the encoder was fed
    (float codecs get ``pcm / 32768``, so lossless codecs must give it back exactly).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        seed = int(hashlib.sha1(str(path).encode()).hexdigest()[:8], 16)
    encoder, muxer, fmt, opts = AV_CODECS[codec]
    if muxer in ("mp4", "ipod"):  # iTunes and iPhones write .m4a with brand 'M4A ' (the ipod muxer)
        muxer = "ipod" if path.suffix.lower() in (".m4a", ".m4b") else "mp4"
    if sample_rate is None:  # Opus codes at 48 kHz (or 8/12/16/24); everything else gets CD rate
        sample_rate = 48000 if encoder == "libopus" else 44100
    pcm = np.clip(np.round(music_like(seconds, sample_rate, channels, seed) * 32768), -32768, 32767)
    pcm = pcm.astype(np.int16)
    data = pcm if fmt.startswith("s16") else pcm.astype(np.float32) / 32768
    layout = "stereo" if channels == 2 else "mono"
    copts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=muxer, options=copts) as out:
        if video:
            vs = out.add_stream("mpeg4", rate=10)
            vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        st = out.add_stream(encoder, rate=sample_rate, options={**opts, **(options or {})})
        st.layout = layout
        st.format = fmt
        step = st.codec_context.frame_size or 1024
        shown = 0
        for a in range(0, data.shape[0], step):
            chunk = data[a : a + step]
            planar = np.ascontiguousarray(chunk.T) if fmt.endswith("p") else chunk.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(planar, format=fmt, layout=layout)
            frame.sample_rate, frame.pts = sample_rate, a
            for pkt in st.encode(frame):
                out.mux(pkt)
            while video and shown <= 10 * (a + chunk.shape[0]) / sample_rate:
                img = np.full((48, 64, 3), (37 * shown) % 256, np.uint8)
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                vf.pts = shown
                shown += 1
                for pkt in vs.encode(vf):
                    out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
        if video:
            for pkt in vs.encode(None):
                out.mux(pkt)
    return path, pcm


def write_broken_av(path: str | Path, kind: str) -> Path:
    """Broken or non-audio files under audio names: ``truncated_m4a`` (an AAC ``.m4a`` cut in half, its index
    at the end lost), ``truncated_faststart`` (index first, audio cut in half), ``moovless_mp4`` (everything
    but the ``moov`` atom), ``drm_m4p`` (an iTunes-protected sample entry ``drms``), ``video_only_mp4``,
    ``html_m4a`` (a web page saved under an audio name), ``zero_opus`` (0 bytes), ``headers_only_opus`` (no
    audio after the Ogg Opus headers), ``unknown_codec_wav``
    (a WAV whose format tag no decoder knows)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("_src_" + path.stem + ".m4a")
    if kind in ("truncated_m4a", "moovless_mp4", "drm_m4p", "truncated_faststart"):
        write_av_clip(tmp, "aac", seconds=2.0, faststart=kind == "truncated_faststart")
        raw = tmp.read_bytes()
        tmp.unlink()
        if kind == "truncated_m4a" or kind == "truncated_faststart":
            raw = raw[: len(raw) // 2]
        elif kind == "moovless_mp4":
            i = raw.index(b"moov") - 4  # the box starts with its 4-byte size
            n = int.from_bytes(raw[i : i + 4], "big")
            raw = raw[:i] + raw[i + n :]
        else:
            raw = raw.replace(b"mp4a", b"drms", 1)
        path.write_bytes(raw)
    elif kind == "video_only_mp4":
        with av.open(str(path), "w", format="mp4") as out:
            vs = out.add_stream("mpeg4", rate=10)
            vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
            for i in range(10):
                vf = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
                vf.pts = i
                for pkt in vs.encode(vf):
                    out.mux(pkt)
            for pkt in vs.encode(None):
                out.mux(pkt)
    elif kind == "headers_only_opus":  # an Ogg Opus stream's two header pages and no audio page
        write_av_clip(tmp.with_suffix(".opus"), "opus", seconds=1.0)
        raw, pages, i = tmp.with_suffix(".opus").read_bytes(), [], 0
        tmp.with_suffix(".opus").unlink()
        while i < len(raw) and len(pages) < 2:
            nseg = raw[i + 26]
            n = 27 + nseg + sum(raw[i + 27 : i + 27 + nseg])
            pages.append(raw[i : i + n])
            i += n
        path.write_bytes(b"".join(pages))
    elif kind == "html_m4a":
        path.write_text(
            "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body></body></html>\n"
        )
    elif kind == "zero_opus":
        path.write_bytes(b"")
    elif kind == "unknown_codec_wav":
        sf.write(str(path), np.zeros((4000, 1), np.float32), 22050, subtype="PCM_16")
        raw = bytearray(path.read_bytes())
        raw[20:22] = (0x7A7A).to_bytes(2, "little")  # fmt chunk's format tag: no such codec
        path.write_bytes(bytes(raw))
    else:
        raise ValueError(kind)
    return path


@pytest.fixture
def av_writer():
    """The :func:`write_av_clip` function."""
    return write_av_clip


@pytest.fixture
def broken_av_writer():
    """The :func:`write_broken_av` function."""
    return write_broken_av


@pytest.fixture
def ffmpeg_command(tmp_path_factory, monkeypatch):
    """An ``ffmpeg`` command on PATH (imageio-ffmpeg's binary), so that ``librosa.load`` can fall back to it
    through audioread as it does on a user's machine; returns the binary's path."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    bindir = tmp_path_factory.mktemp("ffmpeg_bin")
    (bindir / "ffmpeg").symlink_to(exe)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    audioread = pytest.importorskip("audioread")
    audioread.available_backends(flush_cache=True)  # audioread caches the backends it found first
    yield exe
    monkeypatch.undo()
    audioread.available_backends(flush_cache=True)


def write_mixed_library(root: str | Path) -> dict:
    """A messy music folder as a user's library holds it, in two genre folders (``rock/``, ``jazz/``), so the
    same tree serves ``classify`` and ``make_shards --layout folder``.

    Returns ``{"expect": {rel: (status, reason prefix or None)}, "ignored": {ignored_key: count}}``: every
    file whose name or content says audio with what it must give (``ok``, or ``error`` and the reason), and
    the non-audio files by the key they are counted under. Audio: AAC and ALAC ``.m4a``, Opus ``.opus`` and
    an Opus download without extension, Opus ``.webm``, WMA, an MP3 named ``.wav``, AAC in an ``.mp4`` with
    a video stream; broken: a truncated ``.m4a``, a ``moov``-less ``.mp4``, an HTML page named ``.m4a``, a
    zero-byte ``.opus``, an iTunes-protected ``.m4p`` and a named pipe called ``.m4a`` (opening it would block).
    """
    root = Path(root)
    expect: dict[str, tuple[str, str | None]] = {}
    for rel, codec, kw in [
        ("rock/aac.m4a", "aac", {}),
        ("rock/alac.m4a", "alac", {}),
        ("rock/podcast intro.opus", "opus", {}),
        ("rock/download", "opus", {}),  # audio by content only
        ("jazz/clip.webm", "webm", {"seconds": 2.5}),  # its header says 8 ms more than it holds
        ("jazz/song.wma", "wma", {}),
        ("jazz/mp3 named.wav", "mp3", {"channels": 1}),
        ("jazz/music video.mp4", "aac", {"video": True}),
    ]:
        write_av_clip(root / rel, codec, **{"seconds": 2.2, **kw})
        expect[rel] = ("ok", None)
    for rel, kind, reason in [
        ("rock/truncated.m4a", "truncated_m4a", "truncated or incomplete MP4: no 'moov' atom"),
        ("jazz/no moov.mp4", "moovless_mp4", "truncated or incomplete MP4: no 'moov' atom"),
        ("rock/page.m4a", "html_m4a", "not audio or unsupported format (an HTML page)"),
        ("jazz/empty.opus", "zero_opus", "empty file (0 bytes)"),
        ("rock/bought.m4p", "drm_m4p", "DRM-protected: cannot be decoded"),
    ]:
        write_broken_av(root / rel, kind)
        expect[rel] = ("error", reason)
    os.mkfifo(root / "jazz" / "stream.m4a")
    expect["jazz/stream.m4a"] = ("error", "not a regular file (a named pipe)")
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200))
    (root / "rock" / "folder.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(300))
    (root / "notes.txt").write_text("ripped with care\n")
    (root / "jazz" / "album.cue").write_text('FILE "song.wma" WAVE\n  TRACK 01 AUDIO\n')
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(60))
    (root / "rock" / "._aac.m4a").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # macOS resource fork
    ignored = {".jpg": 2, ".txt": 1, ".cue": 1, ".DS_Store": 1, "._* (AppleDouble)": 1}
    return {"expect": expect, "ignored": ignored}


@pytest.fixture
def mixed_library_writer():
    """The :func:`write_mixed_library` function."""
    return write_mixed_library


def kill_a_worker_mid_run(
    cmd: list[str], env: dict[str, str], ready: Callable[[], bool], timeout: float
) -> tuple[int | None, int, str, str]:
    """Run ``cmd`` and SIGKILL its first child process once it has two and ``ready()`` holds (the OOM killer
    taking a decode worker mid-run). Returns ``(killed pid or None, returncode, stdout, stderr)``."""
    import psutil  # accelerate's dependency

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        deadline = time.monotonic() + timeout
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            workers = psutil.Process(proc.pid).children()
            if len(workers) >= 2 and ready():
                workers[0].kill()
                killed = workers[0].pid
            time.sleep(0.01)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return killed, proc.returncode, stdout, stderr


@pytest.fixture(scope="session")
def worker_killer() -> Callable[..., tuple[int | None, int, str, str]]:
    """:func:`kill_a_worker_mid_run` for tests."""
    return kill_a_worker_mid_run


def tree_snapshot(root: str | Path) -> dict[str, str]:
    """``{relative path: sha256 of a file | "<dir>" | "-> target" of a link}`` of everything under ``root``
    (hidden entries included): equal before and after a refused command means nothing was created or changed."""
    root = Path(root)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = os.fsencode(p.relative_to(root)).decode("utf-8", "backslashreplace")
            if p.is_symlink():
                out[rel] = f"-> {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "<dir>"
            else:
                try:
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
                except PermissionError:  # unreadable to this process: its size and mtime stand for it
                    st = p.stat()
                    out[rel] = f"{st.st_size}:{st.st_mtime_ns}"
    return out


@pytest.fixture
def snapshot():
    """The :func:`tree_snapshot` function."""
    return tree_snapshot


def unprivileged_runner() -> Callable[..., subprocess.CompletedProcess]:
    """``run(argv, **subprocess_kw)``: ``argv`` in a subprocess where file permissions bind (tests run as
    root, which ignores them): as root it runs under ``setpriv --bounding-set -dac_override,-dac_read_search``;
    skips the test when setpriv (util-linux) is missing. ``PYTHONPATH`` is the checkout; text output captured."""
    import shutil

    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is not installed: permissions cannot be tested as root")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")

    def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*prefix, *map(str, argv)], capture_output=True, text=True, errors="replace", env=env, cwd=repo, **kw
        )

    return run


@pytest.fixture
def run_unprivileged() -> Callable[..., subprocess.CompletedProcess]:
    """:func:`unprivileged_runner`'s ``run(argv, **subprocess_kw)``."""
    return unprivileged_runner()
