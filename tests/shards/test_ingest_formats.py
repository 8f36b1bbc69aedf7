"""make_shards on what a real music library holds: every audio file stored or skipped with its reason, every
other file counted in the manifest's ``ignored`` -- through the real CLI (a subprocess under a timeout), and
for the GTZAN (Kaggle copy) and FMA layouts."""

from __future__ import annotations

import csv
import faulthandler
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from shards.audio import ignored_summary, load_audio
from shards.format import encode_pcm
from shards.ingest import IngestConfig, run_ingest
from shards.layouts import scan_source
from shards.procs import Mapper, crash_reason

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "make_shards.py"
CLI_TIMEOUT_S = 300  # ~10 s here; a worker blocked on a file (the named pipe) would never finish


def _make_shards(src: Path, out: Path) -> str:
    cmd = [sys.executable, str(TOOL), str(src), "--out", str(out), "--layout", "folder", "--sample-rate", "22050",
           "--workers", "2", "--no-progress", "--seed", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_mixed_library_through_make_shards_skips_with_reasons_and_counts_the_rest(
    tmp_path, mixed_library_writer, shard_set_reader
):
    lib = tmp_path / "library"
    built = mixed_library_writer(lib)
    expect, ignored = built["expect"], built["ignored"]
    out = tmp_path / "shards"
    stdout = _make_shards(lib, out)
    got = shard_set_reader(out)
    manifest = got["manifest"]

    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    errors = {rel: reason for rel, (status, reason) in expect.items() if status == "error"}
    assert set(skipped) == set(errors)  # each broken file once, with its specific reason
    for rel, reason in errors.items():
        assert skipped[rel].startswith(reason), (rel, skipped[rel])
    stored = {meta["path"]: (pcm, meta) for pcm, meta in got["samples"].values()}
    assert set(stored) == {rel for rel, (status, _) in expect.items() if status == "ok"}
    assert manifest["labels"] == ["jazz", "rock"]
    assert manifest["ignored"] == ignored  # cover art, notes, cue sheet, .DS_Store, AppleDouble: counted
    assert ignored_summary(ignored) in stdout.splitlines() and "ignored 6 non-audio files" in stdout

    # the shards hold exactly what load_audio decodes of each source (FFmpeg for all of these but the WAV-named MP3)
    for rel, (pcm, meta) in stored.items():
        wave, _ = load_audio(lib / rel, 22050)
        assert pcm.tobytes() == encode_pcm(wave), rel
        assert meta["num_samples"] == wave.size and meta["label"] == rel.split("/")[0]

    # an interrupted run resumed: same shards, same skips, the ignored files recounted (not added twice)
    shards_before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.tar")}
    first = sorted((out / ".ingest" / "done").glob("*.json"))[0]
    (out / first.name.removesuffix(".json")).unlink(missing_ok=True)
    first.unlink()
    (out / "manifest.json").unlink()
    _make_shards(lib, out)
    again = json.loads((out / "manifest.json").read_text())
    assert again["ignored"] == ignored and again["skipped"] == manifest["skipped"]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.tar")} == shards_before


def test_gtzan_kaggle_copy_counts_images_and_feature_csvs_as_ignored(tmp_path, clip_writer, corrupt_writer):
    src = tmp_path / "gtzan-dataset-music-genre-classification"  # the Kaggle download, unzipped
    data = src / "Data"
    for g in ("blues", "jazz"):
        for i in range(3):
            clip_writer(data / "genres_original" / g / f"{g}.{i:05d}.wav", sample_rate=22050, seconds=0.3)
            (data / "images_original" / g).mkdir(parents=True, exist_ok=True)
            (data / "images_original" / g / f"{g}{i:05d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    corrupt_writer(data / "genres_original" / "jazz" / "jazz.00054.wav", "garbage")  # the known bad file
    (data / "features_30_sec.csv").write_text("filename,length,label\nblues.00000.wav,661794,blues\n")
    (data / "features_3_sec.csv").write_text("filename,length,label\n")
    clip_writer(data / "preview.mp3", sample_rate=22050, seconds=0.3)  # audio, but in no genre folder
    (src / ".DS_Store").write_bytes(bytes(16))
    res = run_ingest(IngestConfig(source=src, out=tmp_path / "out", workers=1, progress=False))
    m = res.manifest
    assert res.layout == "gtzan" and m["labels"] == ["blues", "jazz"]
    assert sum(e["tracks"] for e in m["splits"].values()) == 6
    assert m["ignored"] == {".png": 6, ".csv": 2, ".DS_Store": 1}
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(skipped) == {"Data/genres_original/jazz/jazz.00054.wav", "Data/preview.mp3"}
    assert skipped["Data/genres_original/jazz/jazz.00054.wav"].startswith("not audio")
    assert skipped["Data/preview.mp3"] == "not in a genre folder (Data/genres_original/<genre>/): not a GTZAN track"


def test_fma_counts_the_audio_folders_other_files_and_skips_unlisted_audio(tmp_path, clip_writer):
    src = tmp_path / "fma"
    (src / "fma_metadata").mkdir(parents=True)
    with open(src / "fma_metadata" / "tracks.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows([["", "artist", "set", "set", "track"], ["", "id", "split", "subset", "genre_top"],
                     ["track_id", "", "", "", ""], [2, 1, "training", "small", "Hip-Hop"],
                     [5, 2, "test", "small", "Rock"], [7, 3, "training", "medium", "Pop"]])  # fmt: skip
    for tid in (2, 5, 99):  # 99: a file no row of the subset names
        clip_writer(src / "fma_small" / "000" / f"{tid:06d}.mp3", sample_rate=22050, seconds=0.3)
    (src / "fma_small" / "README.txt").write_text("fma_small: 8000 tracks of 30s, 8 balanced genres\n")
    (src / "fma_small" / "checksums").write_text("abc  000/000002.mp3\n")
    scan = scan_source(src, "fma")
    assert sorted(t.rel for t in scan.tracks) == ["fma_small/000/000002.mp3", "fma_small/000/000005.mp3"]
    assert [(s.path, s.reason) for s in scan.skipped] == [
        ("fma_small/000/000099.mp3", "not a track of --subset small in fma_metadata/tracks.csv")
    ]
    assert scan.ignored == {".txt": 1, "(no extension)": 1}


def test_csv_layout_walks_nothing_so_ignores_nothing(tmp_path, clip_writer):
    labels = ["a", "b", "a", "b"]
    for i in range(len(labels)):
        clip_writer(tmp_path / "audio" / f"{i}.flac", seconds=0.3)
    (tmp_path / "audio" / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(32))  # not listed: not looked at
    rows = "".join(f"audio/{i}.flac,{lab}\n" for i, lab in enumerate(labels))
    (tmp_path / "list.csv").write_text("path,label\n" + rows)
    m = run_ingest(IngestConfig(source=tmp_path / "list.csv", out=tmp_path / "out", workers=1, progress=False))
    assert m.manifest["ignored"] == {} and not m.manifest["skipped"]
    assert sum(e["tracks"] for e in m.manifest["splits"].values()) == 4


def _square_or_die(x: int) -> int:
    """A task that takes its own process down on two inputs, as a decoder crash or the OOM killer would."""
    if x == 13:
        os.kill(os.getpid(), signal.SIGKILL)
    if x == 27:
        faulthandler.disable()  # pytest's traceback dump would only add noise
        os.kill(os.getpid(), signal.SIGSEGV)
    return x * x


def test_a_task_that_kills_its_worker_neither_hangs_the_pool_nor_costs_other_tasks():
    mapper = Mapper(2)
    try:
        for window in (None, 8):
            got = list(mapper.imap(_square_or_die, range(40), chunksize=3, window=window, on_crash=crash_reason))
            want = [x * x for x in range(40)]
            want[13] = "decoder crashed: the worker process decoding this file alone killed by SIGKILL (out of memory?)"
            want[27] = "decoder crashed: the worker process decoding this file alone crashed with SIGSEGV"
            assert got == want  # in order, every other task's own result
    finally:
        mapper.close()


def test_make_shards_with_a_decode_worker_killed_mid_run_finishes_every_track(
    tmp_path, clip_writer, shard_set_reader, worker_killer
):
    """The OOM killer takes a worker of a real make_shards run (offline augmentation keeps the decode phase
    busy for seconds): the run goes on, the tracks in flight are decoded again, nothing is lost."""
    src, out = tmp_path / "src", tmp_path / "out"
    for label in ("a", "b"):
        for i in range(6):
            clip_writer(src / label / f"{i}.flac", seconds=1.0)
    cmd = [sys.executable, str(TOOL), str(src), "--out", str(out), "--layout", "folder", "--workers", "2",
           "--shard-size", "2", "--offline-augment", "0.9:1", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    killed, returncode, stdout, stderr = worker_killer(
        cmd, env, lambda: any((out / ".ingest" / "done").glob("*.json")), CLI_TIMEOUT_S
    )
    assert killed is not None, "the run ended before a worker could be killed"
    assert returncode == 0, stderr[-3000:]
    assert "a worker process killed by SIGKILL" in stderr
    got = shard_set_reader(out)
    metas = [meta for _, meta in got["samples"].values()]
    originals = sorted(m["path"] for m in metas if "augment_of" not in m)
    assert not got["manifest"]["skipped"]
    assert originals == sorted(f"{label}/{i}.flac" for label in ("a", "b") for i in range(6))  # every track
    n_train = sum(1 for m in metas if "augment_of" not in m and m["split"] == "train")
    assert sum(1 for m in metas if "augment_of" in m) == n_train > 0  # and every augmented copy
