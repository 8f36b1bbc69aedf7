"""Ingest behaviour: decoding parity with librosa, manifest vs tar contents, splits, folds, determinism, options."""

from __future__ import annotations

import csv
import hashlib
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shards.format import SAMPLE_META_FIELDS
from shards.ingest import IngestConfig, IngestError, run_ingest
from shards.ingest_config import parse_shard_size
from shards.splits import gtzan_filtered_lists


def _ingest(src: Path, out: Path, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return run_ingest(IngestConfig(source=src, out=out, **kw))


def _folder(root: Path, clip_writer, labels=("a", "b", "c"), n=20, **clip_kw) -> Path:
    for lab in labels:
        for i in range(n):
            clip_writer(root / lab / f"{lab}{i:03d}.wav", seconds=clip_kw.get("seconds", 0.2), **{
                k: v for k, v in clip_kw.items() if k != "seconds"
            })  # fmt: skip
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- decoding
MIXED = [
    ("wav", 8000, 1),
    ("flac", 44100, 2),
    ("ogg", 96000, 6),
    ("mp3", 48000, 2),
    ("wav", 96000, 2),
    ("flac", 16000, 6),
    ("ogg", 8000, 1),
    ("mp3", 22050, 1),
    ("wav", 22050, 6),
]


def test_mixed_formats_rates_channels_match_librosa_within_1_lsb(tmp_path, clip_writer, shard_set_reader):
    import librosa

    src = tmp_path / "src"
    for i, (ext, sr, ch) in enumerate(MIXED):
        clip_writer(src / ("x" if i % 2 else "y") / f"clip{i}_{sr}_{ch}.{ext}", sample_rate=sr, channels=ch,
                    seconds=0.6)  # fmt: skip
    res = _ingest(src, tmp_path / "out")
    got = shard_set_reader(tmp_path / "out")
    assert res.manifest["skipped"] == []
    assert len(got["samples"]) == len(MIXED)
    for pcm, meta in got["samples"].values():
        assert tuple(sorted(meta)) == tuple(sorted(SAMPLE_META_FIELDS))
        path = src / meta["path"]
        info = sf.info(str(path))
        assert (meta["orig_sample_rate"], meta["channels"]) == (info.samplerate, info.channels)
        ref, _ = librosa.load(str(path), sr=22050, mono=True)
        ref16 = np.clip(np.round(ref.astype(np.float64) * 32768), -32768, 32767)
        assert pcm.shape == ref16.shape == (meta["num_samples"],)
        assert np.max(np.abs(pcm.astype(np.int32) - ref16)) <= 1, meta["path"]
        assert meta["duration"] == pytest.approx(meta["num_samples"] / 22050)
        assert np.abs(pcm).max() > 1000  # real signal, not silence


def test_options_max_seconds_peak_normalize_trim_silence(tmp_path, clip_writer, shard_set_reader):
    src = tmp_path / "src"
    sr = 44100
    tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr).astype(np.float32)
    padded = np.concatenate([np.zeros(sr // 2, np.float32), tone, np.zeros(sr // 2, np.float32)])
    for gain, lab in ((1.0, "a"), (0.5, "b")):  # distinct content: identical files would be deduplicated
        (src / lab).mkdir(parents=True)
        sf.write(str(src / lab / "padded.wav"), gain * padded, sr, subtype="FLOAT")
        sf.write(str(src / lab / "silent.wav"), np.zeros(sr + int(gain * 10), np.float32), sr)
    base = _ingest(src, tmp_path / "base", split_ratios=(1, 0, 0))
    assert {s["reason"].split(":")[0] for s in base.manifest["skipped"]} == set()
    trimmed = _ingest(src, tmp_path / "trim", split_ratios=(1, 0, 0), trim_silence=40.0, peak_normalize=True)
    got = shard_set_reader(tmp_path / "trim")
    # the all-silent files have nothing left after trimming: skipped with a reason
    assert sorted(s["path"] for s in trimmed.manifest["skipped"]) == ["a/silent.wav", "b/silent.wav"]
    assert all(s["reason"].startswith("silent") for s in trimmed.manifest["skipped"])
    for pcm, meta in got["samples"].values():
        assert 22050 <= meta["num_samples"] <= 22050 + 2 * 2048  # ~1 s tone, frame-quantized edges
        assert np.abs(pcm).max() == pytest.approx(0.99 * 32768, abs=2)
    short = _ingest(src, tmp_path / "short", split_ratios=(1, 0, 0), max_seconds=0.25)
    got = shard_set_reader(tmp_path / "short")
    assert {m["num_samples"] for _, m in got["samples"].values()} == {math.ceil(0.25 * sr * 22050 / sr)}
    assert short.manifest["splits"]["train"]["seconds"] == pytest.approx(4 * 5513 / 22050)


# --------------------------------------------------------------------------------------------- manifest
def test_manifest_counts_equal_tar_contents_and_every_track_accounted_once(
    tmp_path, clip_writer, corrupt_writer, shard_set_reader
):
    src = _folder(tmp_path / "src", clip_writer, n=12)
    corrupt_writer(src / "a" / "bad_text.wav", "text")
    corrupt_writer(src / "b" / "bad_header.wav", "header_only")
    corrupt_writer(src / "c" / "bad_trunc.wav", "truncated")
    corrupt_writer(src / "c" / "bad_empty.flac", "empty")
    res = _ingest(src, tmp_path / "out", shard_size="5")
    got = shard_set_reader(tmp_path / "out")
    m = res.manifest
    assert m["format_version"] == 1 and m["kind"] == "audio" and m["sample_rate"] == 22050
    assert m["labels"] == ["a", "b", "c"] and m["layout"] == "folder" and m["seed"] == 0 and m["folds"] == 0
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"a/bad_text.wav", "b/bad_header.wav", "c/bad_trunc.wav", "c/bad_empty.flac"}
    assert reasons["b/bad_header.wav"] == "no audio frames (header declares 0 frames)"
    assert reasons["c/bad_empty.flac"] == "empty file (0 bytes)"
    assert reasons["c/bad_trunc.wav"].startswith("corrupt or truncated")
    inputs = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    stored = [meta["path"] for _, meta in got["samples"].values()]
    assert len(stored) == len(set(stored)) == 36
    assert set(stored) | set(reasons) == inputs and not set(stored) & set(reasons)
    for split, entry in m["splits"].items():
        keys = [k for sh in entry["shards"] for k in got["per_shard"][sh["name"]]]
        assert entry["tracks"] == len(keys)
        assert all(0 < sh["samples"] <= 5 for sh in entry["shards"])
        assert [sh["samples"] for sh in entry["shards"]] == [
            len(got["per_shard"][sh["name"]]) for sh in entry["shards"]
        ]
        for sh in entry["shards"]:
            path = tmp_path / "out" / sh["name"]
            assert sh["bytes"] == path.stat().st_size and sh["sha256"] == _sha(path)
            assert sh["name"].startswith(f"{split}-")
        counts = Counter(got["samples"][k][1]["label"] for k in keys)
        assert entry["per_label"] == {lab: counts.get(lab, 0) for lab in m["labels"]}
        secs = sum(got["samples"][k][1]["num_samples"] for k in keys) / 22050
        assert entry["seconds"] == pytest.approx(secs, abs=1e-5)
        for k in keys:
            meta = got["samples"][k][1]
            assert m["labels"][meta["label_index"]] == meta["label"] and meta["fold"] == -1
    # 12 per label at 0.7/0.15/0.15 -> 8/2/2 (largest remainder per label)
    assert [m["splits"][s]["per_label"] for s in ("train", "valid", "test")] == [
        dict.fromkeys("abc", 8), dict.fromkeys("abc", 2), dict.fromkeys("abc", 2)
    ]  # fmt: skip


def test_shard_size_in_bytes_bounds_each_shard(tmp_path, clip_writer, shard_set_reader):
    src = _folder(tmp_path / "src", clip_writer, labels=("a", "b"), n=10, seconds=0.5)
    res = _ingest(src, tmp_path / "out", shard_size="60KB", split_ratios=(1, 0, 0))
    shards = res.manifest["splits"]["train"]["shards"]
    # 0.5 s at 22050 Hz = 22050 B of PCM + headers: two samples per 60 KB shard
    assert [s["samples"] for s in shards] == [2] * 10
    assert all(s["bytes"] <= 60_000 for s in shards)
    assert parse_shard_size("256MB") == ("bytes", 256_000_000)
    assert parse_shard_size("1GiB") == ("bytes", 2**30)
    assert parse_shard_size("1000") == ("count", 1000)
    with pytest.raises(IngestError, match="shard-size"):
        parse_shard_size("lots")


# ------------------------------------------------- splits and folds through the ingest (algorithm: test_splits)
def _csv_with_artists(base: Path, clip_writer, n_artists=12, per_artist=3) -> Path:
    rows = []
    for a in range(n_artists):
        for j in range(per_artist):
            p = clip_writer(base / "audio" / f"a{a}_{j}.wav", seconds=0.2)
            rows.append([p.relative_to(base).as_posix(), ["rock", "jazz"][a % 2], f"artist{a}"])
    with open(base / "tracks.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "artist"])
        w.writerows(rows)
    return base / "tracks.csv"


def test_artist_grouping_and_k_folds_through_the_ingest(tmp_path, clip_writer, shard_set_reader):
    src = _csv_with_artists(tmp_path / "ds", clip_writer)
    res = _ingest(src, tmp_path / "out", folds=4)
    got = shard_set_reader(tmp_path / "out")
    assert res.manifest["group_by"] == "artist" and res.manifest["folds"] == 4
    split_of, fold_of = defaultdict(set), defaultdict(set)
    for _, meta in got["samples"].values():
        split_of[meta["artist"]].add(meta["split"])
        fold_of[meta["artist"]].add(meta["fold"])
    assert len(split_of) == 12
    assert all(len(s) == 1 for s in split_of.values()) and all(len(f) == 1 for f in fold_of.values())
    fold_counts = Counter((m["fold"], m["label"]) for _, m in got["samples"].values())
    # 6 artists per label, 3 tracks each, 4 folds: every fold gets 1 or 2 artists of each label
    assert all(fold_counts[f, lab] in (3, 6) for f in range(4) for lab in ("rock", "jazz"))
    assert {m["split"] for _, m in got["samples"].values()} == {"train", "valid", "test"}
    ungrouped = _ingest(src, tmp_path / "out2", group_by="none", seed=5)
    got2 = shard_set_reader(tmp_path / "out2")
    split_of2 = defaultdict(set)
    for _, meta in got2["samples"].values():
        split_of2[meta["artist"]].add(meta["split"])
    assert ungrouped.manifest["group_by"] == "none"
    assert any(len(s) > 1 for s in split_of2.values())  # without grouping artists do straddle splits


def test_gtzan_filtered_split_uses_shipped_lists(tmp_path, clip_writer, shard_set_reader):
    lists = gtzan_filtered_lists()
    assert Counter(lists.values()) == {"train": 443, "valid": 197, "test": 290}
    chosen = {}
    for split in ("train", "valid", "test"):
        for genre in ("blues", "disco"):
            names = sorted(n for n, s in lists.items() if s == split and n.startswith(genre + "/"))[:2]
            chosen.update({n: split for n in names})
    everything = (
        f"{g}/{g}.{i:05d}.wav" for g in ("blues", "disco", "pop", "rock", "metal") for i in range(100)
    )
    unlisted = next(n for n in everything if n not in lists)  # a track the fault filter removed
    src = tmp_path / "gtzan"
    for name in [*chosen, unlisted]:
        clip_writer(src / "genres_original" / name, seconds=0.2)
    res = _ingest(src, tmp_path / "out", split="gtzan-filtered")
    got = shard_set_reader(tmp_path / "out")
    stored = {f"{m['label']}/{Path(m['path']).name}": m["split"] for _, m in got["samples"].values()}
    assert stored == chosen
    skipped = {s["path"]: s["reason"] for s in res.manifest["skipped"]}
    assert skipped[f"genres_original/{unlisted}"] == "not in gtzan-filtered split"
    missing = [p for p, r in skipped.items() if "missing from SOURCE" in r]
    assert len(missing) == 930 - len(chosen)
    assert (
        skipped["jazz/jazz.00000.wav"].startswith("listed in gtzan-filtered")
        and "jazz" not in res.manifest["labels"]
    )


# --------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes_and_other_seed_other_splits(tmp_path, clip_writer, shard_set_reader):
    src = _folder(tmp_path / "src", clip_writer, labels=("a", "b"), n=8, seconds=0.2)
    r1 = _ingest(src, tmp_path / "o1", seed=7, shard_size="3")
    r2 = _ingest(src, tmp_path / "o2", seed=7, shard_size="3", workers=2)
    assert r1.manifest["splits"] == r2.manifest["splits"]
    names = sorted(p.name for p in (tmp_path / "o1").glob("*.tar"))
    assert names == sorted(p.name for p in (tmp_path / "o2").glob("*.tar")) and names
    for n in names:
        assert _sha(tmp_path / "o1" / n) == _sha(tmp_path / "o2" / n)
    r3 = _ingest(src, tmp_path / "o3", seed=8, shard_size="3")
    s1 = {m["path"]: m["split"] for _, m in shard_set_reader(tmp_path / "o1")["samples"].values()}
    s3 = {m["path"]: m["split"] for _, m in shard_set_reader(tmp_path / "o3")["samples"].values()}
    assert s1 != s3 and Counter(s1.values()) == Counter(s3.values())
    assert r3.manifest["seed"] == 8


def test_rerun_same_args_is_a_noop_and_different_args_need_overwrite(tmp_path, clip_writer):
    src = _folder(tmp_path / "src", clip_writer, labels=("a", "b"), n=4, seconds=0.2)
    out = tmp_path / "out"
    first = _ingest(src, out, shard_size="2")
    again = _ingest(src, out, shard_size="2")
    assert again.resumed_shards == first.written_shards and again.written_shards == 0
    assert again.manifest["splits"] == first.manifest["splits"]
    with pytest.raises(IngestError, match="different arguments.*seed"):
        _ingest(src, out, shard_size="2", seed=1)
    over = _ingest(src, out, shard_size="2", seed=1, overwrite=True)
    assert over.manifest["seed"] == 1 and over.resumed_shards == 0
    # a shard damaged on disk is detected by its sha256 and rewritten
    shard = out / over.manifest["splits"]["train"]["shards"][0]["name"]
    good = shard.read_bytes()
    shard.write_bytes(good[:-1] + b"x")
    fixed = _ingest(src, out, shard_size="2", seed=1)
    assert fixed.written_shards == 1 and shard.read_bytes() == good
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(IngestError, match="not empty"):
        _ingest(src, tmp_path / "other")
