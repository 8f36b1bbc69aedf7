"""shards.audio beyond libsndfile: AAC/ALAC in MP4, Opus, WMA, WebM/Matroska, AC-3 through PyAV; content over
names; ranged reads by seeking; specific reasons for broken files; never a hang; the walkers' helpers.

References are independent of our decoder: the ``ffmpeg`` command (imageio-ffmpeg's binary) through
``librosa.load``'s audioread fallback, libsndfile for Opus, and the PCM fed to the encoders for ALAC.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shards import ffmpeg_decode
from shards.audio import (
    AudioError,
    ignored_key,
    ignored_summary,
    is_audio_file,
    is_audio_name,
    load_audio,
    probe,
    to_mono,
)
from shards.sniff import sniff, sniff_bytes

ROOT = Path(__file__).resolve().parents[2]
# ffmpeg's s16 pipe to audioread: 2**-15 per sample before averaging and resampling
S16_TOL = 6e-5


@pytest.mark.parametrize(
    "name,codec,kw",
    [
        ("voice memo.m4a", "aac", {}),
        ("clip.mp4", "aac", {"video": True}),
        ("song.wma", "wma", {}),
        ("rip.mka", "mka", {"channels": 1}),
        ("film.ac3", "ac3", {}),
        ("lossless.m4a", "alac", {"sample_rate": 48000}),
    ],
)
def test_decode_equals_librosa_load_through_the_ffmpeg_command(tmp_path, av_writer, ffmpeg_command, name, codec,
                                                                kw):  # fmt: skip
    import librosa

    p, _ = av_writer(tmp_path / name, codec, seconds=1.5, **kw)
    y, info = load_audio(p, 22050)
    ref, _ = librosa.load(str(p), sr=22050, mono=True)  # soundfile refuses these: audioread -> ffmpeg
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert np.max(np.abs(y - ref)) < S16_TOL
    assert info.orig_sample_rate == kw.get("sample_rate", 44100)
    assert info.channels == kw.get("channels", 2)


def test_aac_priming_and_padding_are_dropped_as_ffmpeg_drops_them(tmp_path, av_writer, ffmpeg_command):
    # 1.5 s = 66150 frames: not a multiple of AAC's 1024, so the encoder pads the last packet
    p, pcm = av_writer(tmp_path / "a.m4a", "aac", seconds=1.5)
    raw = subprocess.run([ffmpeg_command, "-v", "error", "-i", str(p), "-f", "s16le", "-"],
                         capture_output=True, check=True).stdout  # fmt: skip
    ref = np.frombuffer(raw, "<i2").reshape(-1, 2) / 32768
    x, info = ffmpeg_decode.read(p)
    assert x.shape == ref.shape == pcm.shape  # exactly the samples fed to the encoder, no more, no less
    assert probe(p).frames == info.frames == pcm.shape[0]
    assert np.max(np.abs(x - ref)) < 2**-15
    # and it is the signal that went in, aligned: no priming delay left (AAC's 1024 samples would show)
    a, b = x[4096:-4096, 0], pcm[:, 0] / 32768
    lags = list(range(-1500, 1501, 1))
    score = [float(np.dot(a, b[4096 + lag : 4096 + lag + a.size])) for lag in lags]
    assert lags[int(np.argmax(score))] == 0
    assert np.corrcoef(a, b[4096:-4096])[0, 1] > 0.9  # lossy, with noise substitution on the noise


def test_alac_is_bit_exact(tmp_path, av_writer):
    p, pcm = av_writer(tmp_path / "a.m4a", "alac", sample_rate=44100, channels=2, seconds=1.0)
    x, info = ffmpeg_decode.read(p)
    assert (info.codec, info.frames) == ("alac", pcm.shape[0])
    np.testing.assert_array_equal(x, pcm / np.float32(32768))
    y, _ = load_audio(p, 44100)  # no resampling: the channel average of the exact PCM
    np.testing.assert_array_equal(y, to_mono((pcm / np.float32(32768)).astype(np.float32)))


def test_opus_equals_libsndfile_and_is_the_same_in_webm(tmp_path, av_writer):
    import librosa

    a, _ = av_writer(tmp_path / "podcast intro.opus", "opus", seconds=1.5, seed=3)
    b, _ = av_writer(tmp_path / "video.webm", "webm", seconds=1.5, seed=3)
    y, info = load_audio(a, 22050)
    ref, _ = librosa.load(str(a), sr=22050, mono=True)  # librosa reads .opus through libsndfile (libopus)
    assert y.shape == ref.shape and np.max(np.abs(y - ref)) < 1e-6
    assert (info.orig_sample_rate, info.frames) == (48000, 72000)
    # the same Opus stream in WebM: same decoder (libopus), same priming removal, same samples
    np.testing.assert_array_equal(load_audio(b, 22050)[0], y)


def test_content_decides_not_the_name(tmp_path, av_writer):
    import librosa

    mp3, _ = av_writer(tmp_path / "real.mp3", "mp3", seconds=1.0, seed=5)
    wav = tmp_path / "mislabelled.wav"
    wav.write_bytes(mp3.read_bytes())
    y, info = load_audio(wav, 22050)
    ref, _ = librosa.load(str(mp3), sr=22050, mono=True)  # libsndfile, as for any MP3
    assert y.shape == ref.shape and np.max(np.abs(y - ref)) < 2e-6
    assert sniff(wav).kind == "mp3"
    # an AAC .m4a renamed .mp3 is still AAC
    m4a, _ = av_writer(tmp_path / "x.m4a", "aac", seconds=1.0, seed=6)
    renamed = tmp_path / "renamed.mp3"
    renamed.write_bytes(m4a.read_bytes())
    np.testing.assert_array_equal(load_audio(renamed, 16000)[0], load_audio(m4a, 16000)[0])


def test_first_audio_stream_of_a_video_file(tmp_path, av_writer):
    plain, _ = av_writer(tmp_path / "plain.m4a", "aac", seconds=1.0, seed=9)
    video, _ = av_writer(tmp_path / "music video.mp4", "aac", seconds=1.0, seed=9, video=True)
    np.testing.assert_array_equal(load_audio(video, 22050)[0], load_audio(plain, 22050)[0])


@pytest.mark.parametrize(
    "name,codec,kw,tol",
    [
        ("a.m4a", "alac", {}, 0.0),
        ("b.m4a", "aac", {"options": {"aac_pns": "0"}}, 0.0),  # see test_aac_noise_substitution_after_a_seek
        ("c.opus", "opus", {}, 0.0),
        # Matroska and ASF stamp packets in whole ms: placed exactly by the constant frame size; libopus may
        # differ in the last bits after a seek into WebM
        ("d.webm", "webm", {}, 1e-6),
        ("e.mka", "mka", {}, 0.0),
        ("f.wma", "wma", {}, 0.0),
    ],
)
def test_ranged_reads_seek_and_equal_slices_of_the_full_decode(tmp_path, av_writer, name, codec, kw, tol):
    p, _ = av_writer(tmp_path / name, codec, seconds=4.0, **kw)
    sr = probe(p).orig_sample_rate
    full, _ = load_audio(p, sr)  # at the source rate: no resampler between slice and reference
    for offset, dur in [(0.0, 0.8), (1.3, 1.1), (2.05, None), (3.9, 2.0), (0.6, 0.05)]:
        y, _ = load_audio(p, sr, offset_seconds=offset, max_seconds=dur)
        a = int(round(offset * sr))
        b = None if dur is None else a + int(round(dur * sr))
        ref = full[a:b]
        msg = f"{name} offset {offset} duration {dur}"
        assert y.shape == ref.shape, msg
        assert np.max(np.abs(y - ref), initial=0.0) <= tol, msg


def test_aac_noise_substitution_after_a_seek(tmp_path, av_writer):
    # AAC's perceptual noise substitution draws from the decoder's random generator: after a seek the
    # noise bands hold other noise of the same spectrum, everything else is identical
    p, _ = av_writer(tmp_path / "pns.m4a", "aac", seconds=4.0, seed=0)
    full, _ = load_audio(p, 44100)
    y, _ = load_audio(p, 44100, offset_seconds=2.0, max_seconds=1.0)

    def rel_err(shift: int) -> float:
        ref = full[88200 + shift : 88200 + shift + 44100]
        return float(np.sqrt(np.mean((y - ref) ** 2)) / np.sqrt(np.mean(ref**2)))

    assert y.size == 44100
    # other noise in the noise bands (0.31 for this clip), against 0.9 for a read misplaced by 7 samples
    assert rel_err(0) < 0.5 and rel_err(0) < 0.5 * min(rel_err(-7), rel_err(7))


def test_truncated_index_first_mp4_decodes_what_is_there(tmp_path, av_writer, broken_av_writer):
    full, _ = av_writer(tmp_path / "full.m4a", "aac", seconds=2.0, faststart=True)
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    y, info = load_audio(cut, 44100)
    ref, _ = load_audio(full, 44100)
    assert probe(cut).frames == 88200 and 0 < y.size < ref.size  # as ffmpeg: what the file still holds
    assert info.frames == y.size  # a whole-file read reports what it decoded, not the header
    np.testing.assert_array_equal(y, ref[: y.size])


@pytest.mark.parametrize(
    "name,kind,reason",
    [
        ("cut.m4a", "truncated_m4a", "truncated or incomplete MP4: no 'moov' atom (the file ends at"),
        ("no index.mp4", "moovless_mp4", "truncated or incomplete MP4: no 'moov' atom"),
        ("bought.m4p", "drm_m4p", "DRM-protected: cannot be decoded (iTunes FairPlay, 'drms')"),
        ("page.m4a", "html_m4a", "not audio or unsupported format (an HTML page)"),
        ("empty.opus", "zero_opus", "empty file (0 bytes)"),
        ("silent.opus", "headers_only_opus", "no audio frames"),
        ("video.mp4", "video_only_mp4", "no audio stream (only video)"),
        ("odd.wav", "unknown_codec_wav", "unsupported codec"),
    ],
)
def test_broken_files_have_specific_reasons(tmp_path, broken_av_writer, name, kind, reason):
    p = broken_av_writer(tmp_path / name, kind)
    for call in (probe, lambda q: load_audio(q, 22050, max_seconds=1.0)):
        with pytest.raises(AudioError) as err:
            call(p)
        assert err.value.reason.startswith(reason), (name, err.value.reason)
        assert err.value.path == str(p) and str(tmp_path) not in err.value.reason


def test_corrupt_files_never_hang_a_worker(tmp_path, av_writer):
    """Real subprocesses with a hard timeout: a FIFO under an audio name (opening it would block for a
    writer), packets of random bytes behind a valid MP4 index, random bytes behind an MP4 header."""
    good, _ = av_writer(tmp_path / "good.m4a", "aac", seconds=3.0)
    raw = bytearray(good.read_bytes())
    mdat = raw.index(b"mdat") + 4
    moov = raw.index(b"moov") - 4
    raw[mdat + 64 : moov - 64] = (
        np.random.default_rng(0).integers(0, 256, moov - mdat - 128, np.uint8).tobytes()
    )
    (tmp_path / "scrambled.m4a").write_bytes(bytes(raw))
    (tmp_path / "noise.m4a").write_bytes(
        bytes(raw[:32]) + np.random.default_rng(1).integers(0, 256, 200_000, np.uint8).tobytes()
    )
    os.mkfifo(tmp_path / "pipe.m4a")
    script = (
        "import sys\nfrom shards.audio import AudioError, load_audio\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n        y, _ = load_audio(p, 22050)\n        print('ok', y.size)\n"
        "    except AudioError as e:\n        print('error', e.reason)\n"
    )
    paths = [str(tmp_path / n) for n in ("pipe.m4a", "scrambled.m4a", "noise.m4a")]
    res = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert len(lines) == 3, res.stdout
    assert lines[0] == "error not a regular file (a named pipe)"
    # scrambled packets: either decoded as (noisy) audio or refused as a corrupt stream -- but answered
    assert lines[1].startswith(("ok", "error corrupt stream", "error no audio frames")), lines[1]
    assert lines[2].startswith("error "), lines[2]


def test_is_audio_file_by_name_or_content(tmp_path, av_writer, clip_writer):
    ogg, _ = av_writer(tmp_path / "download", "opus", seconds=0.3)  # a browser download without extension
    m4a, _ = av_writer(tmp_path / "memo.m4a", "aac", seconds=0.3)
    blob = tmp_path / "memo.bak"
    blob.write_bytes(m4a.read_bytes())  # brand 'M4A ': audio by content
    vid, _ = av_writer(tmp_path / "clip.mp4", "aac", seconds=0.3, video=True)
    generic = tmp_path / "clip.bin"
    generic.write_bytes(vid.read_bytes())  # brand 'isom': could be any video, audio only by name
    flac = clip_writer(tmp_path / "x.flac")
    hidden = tmp_path / "._x.flac"
    hidden.write_bytes(flac.read_bytes())
    (tmp_path / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    (tmp_path / "notes.txt").write_text("track list\n")
    (tmp_path / "folder.m4a").mkdir()
    assert is_audio_file(ogg) and is_audio_file(m4a) and is_audio_file(blob) and is_audio_file(flac)
    assert is_audio_file(vid)  # by name
    assert not is_audio_file(generic) and not is_audio_file(hidden)
    assert not is_audio_file(tmp_path / "cover.jpg") and not is_audio_file(tmp_path / "notes.txt")
    assert not is_audio_file(tmp_path / "absent.bin")
    for n in ("a.M4A", "b.opus", "c.WMA", "d.webm", "e.m4b", "f.aac", "g.mka", "h.ape", "i.wv", "j.caf"):
        assert is_audio_name(n), n
    assert load_audio(ogg, 22050)[0].size == int(np.ceil(0.3 * 22050))


def test_ignored_summary_counts_by_extension():
    names = ["cover.jpg"] * 9 + ["notes.txt", "b.TXT", "c.txt", "disc.cue", "disc2.cue", ".DS_Store",
                                 "._song.m4a", "README"]  # fmt: skip
    counts = Counter(ignored_key(n) for n in names)
    assert counts == Counter({".jpg": 9, ".txt": 3, ".cue": 2, ".DS_Store": 1, "._* (AppleDouble)": 1,
                              "(no extension)": 1})  # fmt: skip
    assert ignored_summary(Counter({".jpg": 9, ".txt": 3, ".cue": 2})) == (
        "ignored 14 non-audio files: .jpg 9, .txt 3, .cue 2"
    )
    assert ignored_summary({".nfo": 1}) == "ignored 1 non-audio file: .nfo 1"
    assert ignored_summary(Counter()) == "ignored 0 non-audio files"


def test_sniff_names_content_from_its_first_bytes(tmp_path, clip_writer):
    for ext, kind in (
        ("wav", "wav"),
        ("flac", "flac"),
        ("ogg", "ogg-vorbis"),
        ("aiff", "aiff"),
        ("mp3", "mp3"),
    ):
        assert sniff(clip_writer(tmp_path / f"s.{ext}")).kind == kind
    assert sniff_bytes(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm").what == "WebM"
    assert sniff_bytes(b"#!AMR\n" + bytes(20)).kind == "amr"
    assert sniff_bytes(b"MAC \x96\x0f" + bytes(30)).kind == "ape"
    assert sniff_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30)).what == "a PNG image"
    assert sniff_bytes(b"  <!doctype HTML><html>").kind == "html"
    assert sniff_bytes(b"MThd\x00\x00\x00\x06").kind == "midi" and not sniff_bytes(b"MThd\x00\x00").media
    assert sniff_bytes(np.random.default_rng(1).integers(0, 256, 4000, np.uint8).tobytes()).kind == "unknown"


def test_opus_ogg_header_duration_excludes_the_pre_skip(tmp_path, av_writer):
    p, pcm = av_writer(tmp_path / "p.opus", "opus", seconds=1.25)
    info = probe(p)
    x, _ = ffmpeg_decode.read(p)
    assert info.frames == x.shape[0] == pcm.shape[0] == 60000
    # and the same file's libsndfile decode agrees on the length
    assert sf.info(str(p)).frames == 60000
