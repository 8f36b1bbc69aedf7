"""classify on what a real music library holds: AAC/ALAC .m4a, Opus, WebM, WMA, an MP3 named .wav, a music
video, broken files and the non-audio files around them -- through the real CLI, decoded by FFmpeg (PyAV)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.classify import classify, decode_track, read_records
from shards.audio import exact_frames, ignored_summary, load_audio, probe
from shards.windows import window_starts

SR = 8000  # model rate, Hz
SEG = 8000  # 1-s windows
LABELS = ["blues", "jazz", "metal", "pop"]
REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 300  # a run of ~20 short files takes ~15 s here; a decoder blocked on a file never ends


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, make_tiny_checkpoint) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", LABELS, SR, SEG)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run_cli(ckpt: Path, lib: Path, out: Path, workers: int) -> tuple[str, dict]:
    """``python -m engine classify`` in a real process, bounded by a timeout: (stdout, its JSON summary)."""
    cmd = [sys.executable, "-m", "engine", "classify", str(ckpt), str(lib), "--out", str(out),
           "--num-workers", str(workers), "--batch-size", "8", "--no-progress"]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout, json.loads(res.stdout.strip().splitlines()[-1])


def _probs(rec: dict) -> dict[str, float]:
    return {t["label"]: t["prob"] for t in rec["top"]}


def test_mixed_library_gets_one_line_per_audio_file_and_counts_the_rest(
    tmp_path: Path, ckpt: Path, mixed_library_writer
) -> None:
    lib = tmp_path / "library"
    built = mixed_library_writer(lib)
    expect, ignored = built["expect"], built["ignored"]
    out = tmp_path / "genres.jsonl"
    stdout, summary = _run_cli(ckpt, lib, out, workers=2)

    recs = list(read_records(out, "jsonl"))
    by_path = {r["path"]: r for r in recs}
    assert len(recs) == len(by_path) == len(expect)  # exactly one line per audio file, none for the rest
    assert set(by_path) == {str(lib / rel) for rel in expect}
    for rel, (status, reason) in expect.items():
        rec = by_path[str(lib / rel)]
        assert rec["status"] == status, (rel, rec)
        if status == "error":
            assert rec["reason"].startswith(reason), (rel, rec["reason"])
    n_ok = sum(1 for s, _ in expect.values() if s == "ok")
    assert (summary["ok"], summary["error"]) == (n_ok, len(expect) - n_ok)

    # the non-audio files, by extension: in the printed summary, its JSON and OUT.run.json
    assert summary["ignored"] == ignored and summary["ignored_files"] == 6
    assert ignored_summary(ignored) in stdout.splitlines()
    assert "ignored 6 non-audio files: .jpg 2, " in stdout
    run_meta = json.loads(Path(f"{out}.run.json").read_text())
    assert run_meta["ignored"] == ignored and run_meta["ignored_files"] == 6

    # ok lines: the same predictions as classifying a WAV of the same decoded audio, and the decoded length
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ok = [rel for rel, (s, _) in expect.items() if s == "ok"]
    for i, rel in enumerate(ok):
        wave, _ = load_audio(lib / rel, SR)
        sf.write(ref_dir / f"{i:02d}.wav", wave, SR, subtype="FLOAT")  # bit-exact float32 at the model rate
        rec = by_path[str(lib / rel)]
        assert rec["duration"] == pytest.approx(wave.size / SR, abs=1.0 / SR), rel  # decoded, not the header
    ref_out = tmp_path / "ref.jsonl"
    classify(ckpt, [ref_dir], ref_out, num_workers=0, batch_size=8, progress=False)
    ref = {r["path"]: r for r in read_records(ref_out, "jsonl")}
    for i, rel in enumerate(ok):
        got, want = by_path[str(lib / rel)], ref[str(ref_dir / f"{i:02d}.wav")]
        assert got["windows"] == want["windows"], rel
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]], rel
        for label, p in _probs(want).items():
            assert _probs(got)[label] == pytest.approx(p, abs=1e-5), rel
    webm = probe(lib / "jazz" / "clip.webm")  # the header says 2.508 s; the line says what was decoded
    assert webm.frames / webm.orig_sample_rate - by_path[str(lib / "jazz" / "clip.webm")]["duration"] > 0.005

    # resume after an interruption: the lines not yet written are added, the walk's counts are not doubled
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]))
    _, again = _run_cli(ckpt, lib, out, workers=1)
    assert (again["skipped"], again["new"]) == (5, len(expect) - 5)
    assert again["ignored"] == ignored and again["ignored_files"] == 6
    assert json.loads(Path(f"{out}.run.json").read_text())["ignored"] == ignored
    resumed = {r["path"]: r for r in read_records(out, "jsonl")}
    assert len(list(read_records(out, "jsonl"))) == len(resumed) == len(expect)
    assert {p: r["status"] for p, r in resumed.items()} == {p: r["status"] for p, r in by_path.items()}


@pytest.mark.parametrize(
    "name,codec,seconds,truncate",
    [
        ("over.webm", "webm", 3.5, False),  # Matroska: the header says 8 ms more than the stream holds
        ("over.wma", "wma", 3.5, False),  # ASF: ~45 ms more
        ("under.aac", "adts", 3.47, False),  # raw ADTS: the bitrate estimate says less than the frames hold
        ("cut.webm", "webm", 12.0, True),  # a cut download: the header says twice what is there
    ],
)
def test_chunked_decode_follows_the_decoded_length_not_the_header(
    tmp_path: Path, av_writer, name: str, codec: str, seconds: float, truncate: bool
) -> None:
    path, _ = av_writer(tmp_path / name, codec, seconds=seconds, channels=1)
    if truncate:
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    info = probe(path)
    decoded = load_audio(path, SR)[0].size
    header = math.ceil(info.frames * SR / info.orig_sample_rate)
    assert not info.exact and header != decoded
    assert exact_frames(path, info).frames == load_audio(path, info.orig_sample_rate)[0].size
    # the header's length would place windows elsewhere: past the end (padded) or short of it (tail lost)
    assert window_starts(header, SEG).tolist() != window_starts(decoded, SEG).tolist()

    whole = list(decode_track(0, str(path), SR, SEG))  # one read: librosa.load's samples
    chunked = list(decode_track(0, str(path), SR, SEG, chunk_seconds=1.0, whole_file_seconds=0.5))
    assert len(chunked) > 1 and all(p.status == "ok" for p in chunked)
    starts = np.concatenate([p.starts for p in chunked])
    assert starts.tolist() == np.concatenate([p.starts for p in whole]).tolist()
    assert starts.tolist() == window_starts(decoded, SEG).tolist()
    a = np.concatenate([p.windows for p in whole]).astype(np.int32)
    b = np.concatenate([p.windows for p in chunked]).astype(np.int32)
    assert np.abs(a - b).max() <= 2  # resampler rounding only: no zero padding, no shifted window
    assert chunked[-1].duration == pytest.approx(whole[-1].duration) == pytest.approx(decoded / SR, abs=1 / SR)
    assert not chunked[-1].notes and not whole[-1].notes


def test_a_decode_worker_killed_mid_run_costs_no_line(tmp_path: Path, ckpt: Path, worker_killer) -> None:
    """The OOM killer takes a DataLoader decode worker of a real classify run: the run goes on with fresh
    workers, the files in flight are decoded again, every file gets exactly its one line."""
    lib = tmp_path / "lib"
    lib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        sf.write(lib / f"{i:02d}.wav", (0.2 * rng.standard_normal((3 * SR, 2))).astype(np.float32), SR)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "engine", "classify", str(ckpt), str(lib), "--out", str(out), "--num-workers", "2",
           "--batch-size", "1", "--no-progress"]  # fmt: skip
    killed, returncode, stdout, stderr = worker_killer(
        cmd, _env(), lambda: out.exists() and out.stat().st_size > 0, CLI_TIMEOUT_S
    )
    assert killed is not None, "the run ended before a worker could be killed"
    assert returncode == 0, stderr[-3000:]
    assert f"DataLoader worker (pid {killed})" in stderr or f"pid(s) {killed}" in stderr
    recs = list(read_records(out, "jsonl"))
    assert sorted(r["path"] for r in recs) == sorted(str(p) for p in lib.iterdir())  # each file exactly once
    assert all(r["status"] == "ok" and r["windows"] == 3 for r in recs)
    ref = tmp_path / "ref.jsonl"
    classify(ckpt, [lib], ref, num_workers=0, batch_size=1, progress=False)
    want = {r["path"]: _probs(r) for r in read_records(ref, "jsonl")}
    for r in recs:  # the re-decoded files score as an undisturbed run scores them
        assert _probs(r).keys() == want[r["path"]].keys()
        assert all(abs(p - want[r["path"]][k]) < 1e-6 for k, p in _probs(r).items())
