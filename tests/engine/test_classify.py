"""Batch classification: hostile inputs, windows, chunked decoding, resume after kill, 2-process runs, CSV."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.checkpoint import load_model
from engine.classify import (
    CheckpointInputError,
    classify,
    decode_track,
    iter_inputs,
    merge_parts,
    read_records,
    repair_tail,
)
from shards.audio import load_audio
from shards.windows import window_starts

SR = 8000  # model rate, Hz
SEG = 8000  # 1-s windows
LABELS = ["blues", "jazz", "metal", "pop"]
REPO = Path(__file__).resolve().parents[2]




def tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    f = rng.uniform(100, 900)
    x = 0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(n)
    x = np.repeat(x[:, None], channels, axis=1) * np.linspace(1.0, 0.5, channels)[None, :]
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, make_tiny_checkpoint) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", LABELS, SR, SEG)


def eager_probs(ckpt: Path, path: Path, max_windows: int | None = None) -> np.ndarray:
    """Reference: librosa-equivalent whole-file decode, windows cut by hand, model run eagerly, mean."""
    model, info = load_model(ckpt, "cpu")
    wave, _ = load_audio(path, info["sample_rate"])
    starts = window_starts(len(wave), SEG, max_windows=max_windows)
    if 0 < len(wave) < SEG:
        wave = np.resize(wave, SEG)  # a short file: looped to one window (classify's default --pad loop)
    pcm = np.clip(np.rint(wave * 32768.0), -32768, 32767).astype(np.int16)
    x = torch.from_numpy(np.stack([pcm[s : s + SEG] for s in starts]))
    with torch.no_grad():
        return torch.softmax(model(x), -1).mean(0).double().numpy()


def probs_of(rec: dict) -> dict[str, float]:
    return {t["label"]: t["prob"] for t in rec["top"]}


# ------------------------------------------------------------------------------------------ pure parts


def test_window_starts_tile_the_track_and_spread_evenly() -> None:
    assert window_starts(100, 1000).tolist() == [0]  # short: one filled window
    assert window_starts(3000, 1000).tolist() == [0, 1000, 2000]
    assert window_starts(3400, 1000).tolist() == [0, 1000, 2000]  # remainder < half a window: dropped
    assert window_starts(3600, 1000).tolist() == [0, 1000, 2000, 2600]  # >= half: one more, end-aligned
    assert window_starts(10_000, 1000, max_windows=3).tolist() == [0, 4500, 9000]
    assert window_starts(10_000, 1000, max_windows=1).tolist() == [4500]


def test_folder_walk_skips_hidden_and_non_audio_but_keeps_named_files(tmp_path: Path) -> None:
    d = tmp_path / "music"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / ".hidden_dir").mkdir()
    for rel in [
        "a.wav",
        "sub/b.FLAC",
        "sub/deeper/c.mp3",
        "notes.txt",
        ".h.wav",
        "._a.wav",
        ".hidden_dir/x.wav",
    ]:
        (d / rel).write_bytes(b"x")
    (d / "sub" / "loop").symlink_to(d, target_is_directory=True)  # a cycle must not hang the walk
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n\n{d / 'notes.txt'}\n{tmp_path / 'missing.ogg'}\n", encoding="utf-8")
    got = list(iter_inputs([d / "notes.txt", d], from_list=listing))
    rel = sorted(os.path.relpath(p, tmp_path) for p in got)
    assert rel == sorted(
        [
            "music/notes.txt",
            "music/a.wav",
            "music/sub/b.FLAC",
            "music/sub/deeper/c.mp3",
            "music/notes.txt",
            "missing.ogg",
        ]
    )


def test_repair_tail_truncates_a_partial_last_line(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_bytes(b'{"path": "a", "status": "ok"}\n{"path": "b", "sta')
    assert repair_tail(out) == len(b'{"path": "b", "sta')
    assert out.read_bytes() == b'{"path": "a", "status": "ok"}\n'
    assert repair_tail(out) == 0


def test_part_files_merge_into_the_output_once_each_csv(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    header = "path,status,reason,duration,label_1,prob_1,windows,note\n"
    out.write_text(header + "a.wav,ok,,1.0,jazz,0.5,1,\n")
    Path(f"{out}.rank0.part").write_text(
        header + "a.wav,ok,,1.0,jazz,0.5,1,\n" + '"b, c.wav",error,empty,,,,0,\n'
    )
    Path(f"{out}.rank1.part").write_text(header + '"line\nbreak.wav",ok,,2.0,pop,0.75,2,\nd.wav,ok,,1.0,po')
    assert merge_parts(str(out), "csv", 1, False) == 2  # a.wav already there, d.wav torn
    recs = list(read_records(out, "csv"))
    assert [r["path"] for r in recs] == ["a.wav", "b, c.wav", "line\nbreak.wav"]
    assert recs[2]["top"] == [{"label": "pop", "prob": 0.75}]
    assert not list(tmp_path.glob("*.part"))


def test_chunked_long_file_decoding_matches_whole_file_decoding(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, tone(40.0, 22050, seed=3), 22050)  # resampled 22050 -> 8000 Hz
    whole = list(decode_track(0, str(path), SR, SEG))
    chunked = list(decode_track(0, str(path), SR, SEG, chunk_seconds=7.0, whole_file_seconds=10.0))
    assert [p.windows.shape[0] for p in chunked] == [7, 7, 7, 7, 7, 5]  # pieces bound memory
    a = np.concatenate([p.windows for p in whole]).astype(np.int32)
    b = np.concatenate([p.windows for p in chunked]).astype(np.int32)
    assert a.shape == b.shape == (40, SEG)
    assert np.abs(a - b).max() <= 2  # int16 LSB: aligned resampler phase, margins absorb edge effects
    assert chunked[-1].last and not any(p.last for p in chunked[:-1])
    assert chunked[-1].duration == pytest.approx(40.0)


# ------------------------------------------------------------------------------------------ classify


def build_hostile_folder(root: Path) -> dict[str, tuple[str, str | None]]:
    """Files of every kind; returns relative path -> (expected status, expected reason prefix)."""
    root.mkdir()
    (root / "sub dir").mkdir()
    exp: dict[str, tuple[str, str | None]] = {}

    def audio(rel: str, x: np.ndarray, sr: int, **kw: object) -> None:
        sf.write(root / rel, x, sr, **kw)
        exp[rel] = ("ok", None)

    audio("plain.wav", tone(2.5, SR, seed=1), SR)
    audio("sub dir/näme with spaces ü.flac", tone(2.0, 44100, channels=6, seed=2), 44100)
    audio("hires.wav", tone(1.5, 96000, channels=2, seed=3), 96000, subtype="PCM_24")
    audio("short.ogg", tone(0.3, 22050, seed=4), 22050)
    audio("song.mp3", tone(2.0, 22050, seed=5), 22050)
    audio("song.aiff", tone(1.2, 16000, seed=6), 16000)
    audio("silence.wav", np.zeros(2 * SR, dtype=np.float32), SR)
    # a 20-minute file: decoded in chunks (WHOLE_FILE_SECONDS = 600)
    audio("hour-long.wav", tone(1200.0, SR, seed=7) * 0.5, SR, subtype="PCM_16")
    (root / "empty.wav").write_bytes(b"")
    exp["empty.wav"] = ("error", "empty file")
    (root / "text.mp3").write_text("this is not an mp3 at all\n" * 20)
    exp["text.mp3"] = ("error", "not audio")
    good = (root / "plain.wav").read_bytes()
    (root / "corrupt.wav").write_bytes(good[:12] + bytes(range(256)) * 8)
    exp["corrupt.wav"] = ("error", "corrupt")
    sf.write(root / "full.flac", tone(3.0, 22050, seed=8), 22050)
    flac = (root / "full.flac").read_bytes()
    (root / "full.flac").unlink()
    (root / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    exp["truncated.flac"] = ("error", "undecodable")
    (root / "folder.wav").mkdir()  # a directory with an audio name: how we test "unreadable" as root
    exp["folder.wav"] = ("error", "is a directory")
    (root / "dangling.wav").symlink_to(root / "gone.wav")
    exp["dangling.wav"] = ("error", "dangling symlink")
    # skipped silently: hidden, AppleDouble, non-audio names
    (root / ".hidden.wav").write_bytes(good)
    (root / "._plain.wav").write_bytes(good)
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    if os.geteuid() != 0:  # root reads chmod-000 files; the permission case is only testable as a user
        (root / "locked.wav").write_bytes(good)
        (root / "locked.wav").chmod(0)
        exp["locked.wav"] = ("error", "unreadable: permission denied")
    return exp


def test_hostile_folder_gets_exactly_one_line_per_file_with_specific_status(
    tmp_path: Path, ckpt: Path
) -> None:
    root = tmp_path / "hostile"
    exp = build_hostile_folder(root)
    out = tmp_path / "out.jsonl"
    missing = tmp_path / "not there.wav"
    named_text = tmp_path / "README.txt"
    named_text.write_text("hello")
    # --max-windows 4 keeps the 20-minute file cheap to classify; its full decode is checked below
    summary = classify(
        ckpt, [root, missing, named_text], out, num_workers=2, batch_size=16, max_windows=4, timeline=True,
        progress=False,
    )  # fmt: skip
    recs = list(read_records(out, "jsonl"))
    by_path = {r["path"]: r for r in recs}
    assert len(recs) == len(by_path) == len(exp) + 2  # one line per file, no duplicates, no skipped ones
    for rel, (status, reason) in exp.items():
        rec = by_path[str(root / rel)]
        assert rec["status"] == status, (rel, rec)
        if reason is None:
            assert rec["reason"] is None and len(rec["top"]) == 3
            assert sum(probs_of(rec).values()) <= 1.0 + 1e-6
            assert all(0.0 <= p <= 1.0 for p in probs_of(rec).values())
        else:
            assert rec["reason"].startswith(reason), (rel, rec["reason"])
            assert rec["duration"] is None and "top" not in rec
    assert by_path[str(missing)]["reason"] == "missing file"
    assert by_path[str(named_text)]["reason"].startswith("not audio")  # explicitly named: still a line

    short = by_path[str(root / "short.ogg")]
    assert short["windows"] == 1 and short["duration"] == pytest.approx(0.3, abs=1e-3)
    assert any(n.startswith("short") for n in short["notes"])
    assert "silence" in by_path[str(root / "silence.wav")]["notes"]
    long = by_path[str(root / "hour-long.wav")]
    assert long["duration"] == pytest.approx(1200.0) and long["windows"] == 4
    assert [w["start"] for w in long["timeline"]] == [0.0, 399.667, 799.333, 1199.0]
    assert by_path[str(root / "hires.wav")]["windows"] == 2  # 1.5 s: 1 window + 0.5 s remainder, end-aligned
    pieces = [p.windows.shape[0] for p in decode_track(0, str(root / "hour-long.wav"), SR, SEG)]
    assert sum(pieces) == 1200 and max(pieces) == 120  # all windows, in pieces of chunk_seconds (120 s)
    # the decode path (any rate / channel count) agrees with the eager model on the librosa-style decode
    for rel in ["plain.wav", "sub dir/näme with spaces ü.flac", "hires.wav", "short.ogg", "song.mp3"]:
        ref = eager_probs(ckpt, root / rel, max_windows=4)
        for label, p in probs_of(by_path[str(root / rel)]).items():
            assert p == pytest.approx(ref[LABELS.index(label)], abs=1e-5), rel

    n_err = sum(1 for s, _ in exp.values() if s == "error") + 2
    assert summary["files"] == len(recs) and summary["error"] == n_err and summary["ok"] == len(recs) - n_err
    assert summary["errors_by_reason"]["dangling symlink"] == 1
    assert sum(summary["genres"].values()) == summary["ok"]
    assert summary["world_size"] == 1 and summary["new"] == len(recs)
    assert summary["audio_hours"] == pytest.approx(sum(r["duration"] or 0 for r in recs) / 3600)

    # rerun: everything is already there -> nothing new, file unchanged
    before = out.read_bytes()
    again = classify(ckpt, [root, missing, named_text], out, num_workers=0, max_windows=4, progress=False)
    assert again["new"] == 0 and again["skipped"] == len(recs) and out.read_bytes() == before


def test_max_windows_and_precision_follow_the_eager_model(tmp_path: Path, ckpt: Path) -> None:
    path = tmp_path / "ten.wav"
    sf.write(path, tone(10.0, 16000, seed=9), 16000)
    out = tmp_path / "r.jsonl"
    classify(ckpt, [path], out, max_windows=3, top_k=4, timeline=True, num_workers=0, progress=False)
    (rec,) = read_records(out, "jsonl")
    assert rec["windows"] == 3 and [w["start"] for w in rec["timeline"]] == [0.0, 4.5, 9.0]
    ref = eager_probs(ckpt, path, max_windows=3)
    got = probs_of(rec)
    assert [t["label"] for t in rec["top"]] == [LABELS[i] for i in np.argsort(-ref, kind="stable")]
    assert max(abs(got[lab] - ref[i]) for i, lab in enumerate(LABELS)) < 1e-5
    bf = tmp_path / "bf16.jsonl"
    s = classify(ckpt, [path], bf, max_windows=3, top_k=4, precision="bf16", num_workers=0, progress=False)
    assert s["precision"] == "bf16"
    (rec16,) = read_records(bf, "jsonl")
    assert max(abs(p - got[lab]) for lab, p in probs_of(rec16).items()) < 0.05  # bf16 backbone, fp32 features


def test_bad_device_and_worker_options_are_clear_errors(tmp_path: Path, ckpt: Path) -> None:
    path = tmp_path / "one.wav"
    sf.write(path, tone(1.0, 16000, seed=1), 16000)
    out = tmp_path / "r.jsonl"
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        classify(ckpt, [path], out, num_workers=-1, progress=False)
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        classify(ckpt, [path], out, device="gpu0", num_workers=0, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            classify(ckpt, [path], out, device="cuda", num_workers=0, progress=False)
    assert not out.exists()


def test_csv_output_parses_and_equals_jsonl(tmp_path: Path, ckpt: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    sf.write(d / "a, with comma.wav", tone(2.0, SR, seed=1), SR)
    sf.write(d / 'quote".flac', tone(3.0, 22050, seed=2), 22050)
    (d / "bad.wav").write_bytes(b"nope")
    classify(ckpt, [d], tmp_path / "r.jsonl", num_workers=0, progress=False)
    s = classify(ckpt, [d], tmp_path / "r.csv", num_workers=0, timeline=True, progress=False)
    assert s["files"] == 3
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:10] == [
        "path",
        "status",
        "reason",
        "duration",
        "label_1",
        "prob_1",
        "label_2",
        "prob_2",
        "label_3",
        "prob_3",
    ]
    js = {r["path"]: r for r in read_records(tmp_path / "r.jsonl", "jsonl")}
    assert {r["path"] for r in rows} == set(js)
    for row in rows:
        rec = js[row["path"]]
        assert row["status"] == rec["status"]
        if rec["status"] == "ok":
            assert row["label_1"] == rec["top"][0]["label"]
            assert float(row["prob_1"]) == pytest.approx(rec["top"][0]["prob"], abs=1e-12)
            assert float(row["duration"]) == pytest.approx(rec["duration"])
            assert len(json.loads(row["timeline"])) == rec["windows"]
        else:
            assert row["reason"] == rec["reason"] and row["label_1"] == ""


def test_msd_feature_checkpoint_is_refused_with_a_clear_error(tmp_path: Path, ckpt: Path) -> None:
    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    data["config"]["model"]["features"]["features"] = ["precomputed"]
    bad = tmp_path / "msd.pt"
    torch.save(data, bad)
    sf.write(tmp_path / "a.wav", tone(1.0, SR), SR)
    with pytest.raises(CheckpointInputError, match="MSD features, not audio"):
        classify(bad, [tmp_path / "a.wav"], tmp_path / "r.jsonl", num_workers=0, progress=False)
    assert not (tmp_path / "r.jsonl").exists()


# ------------------------------------------------------------------------------------------ processes


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _many_tracks(d: Path, n: int, seconds: float = 2.0) -> list[Path]:
    d.mkdir()
    paths = []
    for i in range(n):
        p = d / f"track {i:03d}.wav"
        sf.write(p, tone(seconds, 16000, seed=i), 16000)
        paths.append(p)
    return paths


@pytest.mark.slow
def test_run_killed_midway_then_resumed_gives_every_file_exactly_once(tmp_path: Path, ckpt: Path) -> None:
    files = _many_tracks(tmp_path / "in", 120, seconds=3.0)
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "engine.classify", str(ckpt), str(tmp_path / "in"), "--out", str(out),
           "--batch-size", "1", "--num-workers", "1", "--no-progress", "--timeline"]  # fmt: skip
    # its own process group: the kill takes the decode workers too, as killing the job would
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 5:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    first = out.read_bytes()
    n_first = first.count(b"\n")
    assert 5 <= n_first < len(files)
    with open(out, "ab") as fh:  # and a torn write on top, as a kill inside write() would leave
        fh.write(b'{"path": "' + str(files[-1]).encode() + b'", "sta')
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == n_first and summary["new"] == len(files) - n_first
    recs = list(read_records(out, "jsonl"))
    paths = [r["path"] for r in recs]
    assert sorted(paths) == sorted(str(p) for p in files)  # every file exactly once
    assert all(r["status"] == "ok" and r["windows"] == 3 for r in recs)
    assert out.read_bytes().startswith(first)  # earlier lines kept byte for byte


@pytest.mark.slow
def test_two_process_run_equals_one_process_and_resumes(tmp_path: Path, gloo_runs) -> None:
    """11 tracks and a broken file classified by the shared two-process launch (``tests.engine.gloo_runs``) into
    an output that already held 3 of them (resume in multi-process mode), against one process here."""
    run = gloo_runs["classify"]
    ckpt, files, inputs, two = run.info["ckpt"], run.info["files"], run.info["in"], run.info["out"]
    one = tmp_path / "one.jsonl"
    classify(ckpt, [inputs], one, num_workers=0, progress=False)
    run.check()
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2
    assert summary["skipped"] == 3 and summary["new"] == len(files) - 3 + 1
    assert not list(two.parent.glob("two.jsonl.rank*.part"))  # merged and removed
    a = {r["path"]: r for r in read_records(one, "jsonl")}
    b_recs = list(read_records(two, "jsonl"))
    b = {r["path"]: r for r in b_recs}
    assert len(b_recs) == len(b) == len(a) == len(files) + 1
    for path, rec in a.items():
        assert b[path]["status"] == rec["status"]
        if rec["status"] == "ok":
            pa, pb = probs_of(rec), probs_of(b[path])
            assert pa.keys() == pb.keys() and max(abs(pa[k] - pb[k]) for k in pa) < 1e-5
    assert b[str(inputs / "broken.wav")]["status"] == "error"
    assert summary["files"] == len(b_recs) and summary["error"] == 1
    assert math.isfinite(summary["files_per_s"])


def test_help_states_each_default_once() -> None:
    from engine.classify import build_parser

    text = " ".join(build_parser().format_help().split())  # argparse wraps lines
    assert "(default: None)" not in text
    assert "spread evenly (default: all) --pad" in text  # stated by the help itself, not appended twice
    assert "genres per file (default: 3)" in text  # appended from the parser


def test_resume_with_another_model_or_line_layout_is_refused(tmp_path: Path, ckpt: Path, make_tiny_checkpoint) -> None:
    tracks = _many_tracks(tmp_path / "in", 3)
    out = tmp_path / "r.jsonl"
    classify(ckpt, tracks[:2], out, num_workers=0, progress=False)
    other = make_tiny_checkpoint(tmp_path / "other.pt", LABELS, SR, SEG, seed=1)
    with pytest.raises(ValueError, match="another model"):
        classify(other, tracks, out, num_workers=0, progress=False)
    csv_out = tmp_path / "r.csv"
    classify(ckpt, tracks[:1], csv_out, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="top_k=3"):  # a CSV header is fixed by top-k
        classify(ckpt, tracks, csv_out, top_k=2, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="pad='loop'"):  # a short file's scores depend on how it is filled
        classify(ckpt, tracks, out, pad="zero", num_workers=0, progress=False)
    assert len(list(read_records(out, "jsonl"))) == 2  # nothing was appended by the refused runs
    assert len(list(read_records(csv_out, "csv"))) == 1
    s = classify(ckpt, tracks, out, num_workers=0, progress=False)  # the same model resumes
    assert s["new"] == 1 and len(list(read_records(out, "jsonl"))) == 3
