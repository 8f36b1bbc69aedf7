"""Each collection layout on a tree the test builds, end to end through the ingest (real codecs, real tars)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from shards.audio import AudioError
from shards.format import decode_feats, encode_feats
from shards.ingest import IngestConfig, run_ingest
from shards.layouts import (
    LAYOUTS,
    Layout,
    LayoutOptions,
    Skipped,
    Track,
    detect_layout,
    scan_source,
    walk_files,
)


def _ingest(src: Path, out: Path, **kw) -> dict:
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return run_ingest(IngestConfig(source=src, out=out, **kw)).manifest


def _all_accounted(manifest: dict, samples: dict, expected_paths: set[str]) -> None:
    """Every input path is in a shard exactly once or in skipped, never both."""
    stored = [meta["path"] for _, meta in samples.values()]
    assert len(stored) == len(set(stored))
    skipped = {s["path"] for s in manifest["skipped"]}
    assert not (set(stored) & skipped)
    assert set(stored) | skipped >= expected_paths
    assert sum(e["tracks"] for e in manifest["splits"].values()) == len(stored)


# --------------------------------------------------------------------------------------------- gtzan
def _gtzan_tree(root: Path, clip_writer, corrupt_writer, genres=("blues", "jazz", "rock"), n=4) -> set[str]:
    paths = set()
    for g in genres:
        for i in range(n):
            p = root / "genres_original" / g / f"{g}.{i:05d}.wav"
            clip_writer(p, sample_rate=22050)
            paths.add(p.relative_to(root).as_posix())
    corrupt_writer(root / "genres_original" / "jazz" / "jazz.00054.wav", "garbage")
    paths.add("genres_original/jazz/jazz.00054.wav")
    (root / "images_original" / "blues").mkdir(parents=True)
    (root / "images_original" / "blues" / "blues00000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    (root / "features_30_sec.csv").write_text("filename,length,label\nblues.00000.wav,661794,blues\n")
    (root / "features_3_sec.csv").write_text("filename,length,label\n")
    (root / "genres_original" / "blues" / "notes.txt").write_text("not audio")
    return paths


def test_gtzan_ignores_images_and_csvs_and_reports_corrupt_jazz_00054(
    tmp_path, clip_writer, corrupt_writer, shard_set_reader
):
    src = tmp_path / "gtzan"
    paths = _gtzan_tree(src, clip_writer, corrupt_writer)
    assert detect_layout(src) == "gtzan"
    manifest = _ingest(src, tmp_path / "out")
    got = shard_set_reader(tmp_path / "out")
    assert manifest["layout"] == "gtzan"
    assert manifest["labels"] == ["blues", "jazz", "rock"]
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert list(skipped) == ["genres_original/jazz/jazz.00054.wav"]
    assert "not audio" in skipped["genres_original/jazz/jazz.00054.wav"]
    assert len(got["samples"]) == 12
    _all_accounted(manifest, got["samples"], paths)
    meta = next(m for _, m in got["samples"].values() if m["path"].endswith("rock.00002.wav"))
    assert meta["track_id"] == "rock.00002" and meta["key"] == "rock_00002" and meta["label"] == "rock"


@pytest.mark.parametrize("root_kind", ["genres", "genres_folder_itself"])
def test_gtzan_accepts_old_genres_root_and_the_genres_folder_itself(tmp_path, clip_writer, root_kind):
    base = tmp_path / "src"
    for g in ("pop", "metal"):
        for i in range(2):
            clip_writer(base / "genres" / g / f"{g}.{i:05d}.au", sample_rate=22050)
    src = base if root_kind == "genres" else base / "genres"
    res = scan_source(src, "auto")
    assert res.layout == "gtzan"
    assert sorted(t.label for t in res.tracks) == ["metal", "metal", "pop", "pop"]
    assert all(isinstance(t, Track) for t in res.tracks) and not res.skipped


# --------------------------------------------------------------------------------------------- fma
_FMA_COLS = [
    ("album", "title"),
    ("artist", "id"),
    ("artist", "name"),
    ("set", "split"),
    ("set", "subset"),
    ("track", "genre_top"),
    ("track", "title"),
]


def _fma_tree(root: Path, clip_writer, corrupt_writer, rows: list[dict]) -> None:
    """rows: {tid, artist, split, subset, genre, title, audio: "ok"|"missing"|"empty"} -> tracks.csv + mp3s."""
    meta = root / "fma_metadata"
    meta.mkdir(parents=True)
    with open(meta / "tracks.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([""] + [g for g, _ in _FMA_COLS])
        w.writerow([""] + [c for _, c in _FMA_COLS])
        w.writerow(["track_id"] + [""] * len(_FMA_COLS))
        for r in rows:
            w.writerow(
                [r["tid"], "An album, with a comma", r["artist"], f"Artist {r['artist']}", r["split"],
                 r["subset"], r["genre"], r.get("title", "plain")]
            )  # fmt: skip
    for r in rows:
        name = f"{r['tid']:06d}"
        p = root / "fma_small" / name[:3] / f"{name}.mp3"
        audio = r.get("audio", "ok")
        if audio == "ok":
            clip_writer(p, sample_rate=44100, channels=2, seconds=0.4)
        elif audio == "empty":
            corrupt_writer(p, "empty")


def _fma_rows() -> list[dict]:
    rows = []
    tid = 2
    for genre in ("Hip-Hop", "Rock"):
        for split in ("training", "training", "training", "validation", "test"):
            rows.append(dict(tid=tid, artist=tid // 2, split=split, subset="small", genre=genre))
            tid += 1
    rows[0]["title"] = 'Quoted "title", with a comma\nand a newline'
    rows.append(dict(tid=99134, artist=7, split="training", subset="small", genre="Rock", audio="empty"))
    rows.append(dict(tid=108925, artist=8, split="test", subset="small", genre="Rock", audio="missing"))
    rows.append(dict(tid=5000, artist=9, split="training", subset="medium", genre="Rock", audio="missing"))
    rows.append(dict(tid=5001, artist=9, split="training", subset="small", genre="", audio="ok"))
    return rows


def test_fma_three_row_header_subset_official_split_and_skips(
    tmp_path, clip_writer, corrupt_writer, shard_set_reader
):
    src = tmp_path / "fma"
    _fma_tree(src, clip_writer, corrupt_writer, _fma_rows())
    res = scan_source(src, "auto", LayoutOptions(subset="small"))
    assert res.layout == "fma"
    # the medium-only track is filtered out silently; the quoted multi-line field did not break rows
    assert sorted(int(t.track_id) for t in res.tracks) == [*range(2, 12), 99134, 108925]
    assert [s.reason for s in res.skipped] == ["no genre_top"]
    first = next(t for t in res.tracks if t.track_id == "2")
    assert (first.label, first.split, first.artist) == ("Hip-Hop", "train", "1")

    manifest = _ingest(src, tmp_path / "out", subset="small")
    got = shard_set_reader(tmp_path / "out")
    assert manifest["split_method"] == "official"
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert skipped == {
        "fma_small/099/099134.mp3": "empty file (0 bytes)",
        "fma_small/108/108925.mp3": "missing file",
        "fma_small/005/005001.mp3": "no genre_top",
    }
    splits = {m["track_id"]: m["split"] for _, m in got["samples"].values()}
    assert len(splits) == 10
    assert [splits[str(t)] for t in range(2, 7)] == ["train", "train", "train", "valid", "test"]
    assert manifest["splits"]["train"]["per_label"] == {"Hip-Hop": 3, "Rock": 3}
    assert got["samples"]["fma_000002"][1]["orig_sample_rate"] == 44100


def test_fma_medium_includes_small_tracks(tmp_path, clip_writer, corrupt_writer):
    src = tmp_path / "fma"
    rows = [dict(tid=1, artist=1, split="training", subset="small", genre="Rock"),
            dict(tid=2, artist=2, split="training", subset="medium", genre="Rock"),
            dict(tid=3, artist=3, split="training", subset="large", genre="Rock")]  # fmt: skip
    _fma_tree(src, clip_writer, corrupt_writer, rows)
    (src / "fma_medium").mkdir()
    res = scan_source(src, "fma", LayoutOptions(subset="medium"))
    assert sorted(t.track_id for t in res.tracks) == ["1", "2"]
    assert all(t.rel.startswith("fma_medium/") for t in res.tracks)


# --------------------------------------------------------------------------------------------- folder
def test_folder_layout_edge_cases(tmp_path, clip_writer, corrupt_writer, shard_set_reader):
    src = tmp_path / "music"
    for i in range(3):
        clip_writer(src / "rock" / "live" / "2019" / f"song{i}.WAV", sample_rate=44100, channels=2)
        clip_writer(src / "jazz" / f"tune{i}.Flac", sample_rate=16000)
    clip_writer(src / "jazz" / "deep" / "x.OGG", sample_rate=32000)
    (src / "jazz" / ".hidden.wav").write_bytes((src / "jazz" / "tune0.Flac").read_bytes())
    (src / "jazz" / "._tune0.Flac").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (src / "jazz" / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    os.symlink(src / "jazz" / "tune1.Flac", src / "rock" / "linked.flac")  # same realpath
    os.symlink(src / "nowhere.wav", src / "rock" / "dangling.wav")
    (src / "rock" / "copy.WAV").write_bytes((src / "rock" / "live" / "2019" / "song0.WAV").read_bytes())
    clip_writer(src / "loose.wav")
    corrupt_writer(src / "noise" / "a.wav", "text")
    corrupt_writer(src / "noise" / "b.mp3", "empty")

    manifest = _ingest(src, tmp_path / "out")
    got = shard_set_reader(tmp_path / "out")
    assert manifest["labels"] == ["jazz", "rock"]  # "noise" has no decodable audio: not a class
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert skipped["loose.wav"].startswith("no label")
    assert skipped["rock/dangling.wav"].startswith("dangling symlink")
    assert skipped["rock/linked.flac"] == "duplicate of jazz/tune1.Flac (same file)"
    assert skipped["rock/live/2019/song0.WAV"] == "duplicate of rock/copy.WAV (same content)"
    assert "not audio" in skipped["noise/a.wav"] and skipped["noise/b.mp3"] == "empty file (0 bytes)"
    assert len(skipped) == 6
    stored = sorted(m["path"] for _, m in got["samples"].values())
    assert stored == sorted(
        ["jazz/deep/x.OGG", "jazz/tune0.Flac", "jazz/tune1.Flac", "jazz/tune2.Flac", "rock/copy.WAV",
         "rock/live/2019/song1.WAV", "rock/live/2019/song2.WAV"]
    )  # fmt: skip
    labels = {m["path"]: m["label"] for _, m in got["samples"].values()}
    assert labels["jazz/deep/x.OGG"] == "jazz" and labels["rock/live/2019/song1.WAV"] == "rock"
    for key, (_, meta) in got["samples"].items():
        assert "." not in key and meta["key"] == key


# --------------------------------------------------------------------------------------------- csv
def test_csv_layout_relative_absolute_split_artist_track_id(tmp_path, clip_writer, shard_set_reader):
    base = tmp_path / "ds"
    rows = []
    for i in range(6):
        p = clip_writer(base / "audio" / f"t{i}.flac", sample_rate=22050)
        path = str(p) if i % 2 else f"audio/t{i}.flac"  # absolute and relative paths
        rows.append([path, "a" if i < 3 else "b", ["train", "valid", "test"][i % 3], f"art{i}", f"id{i}"])
    rows.append(["audio/missing.wav", "a", "train", "art9", "id9"])
    with open(base / "list.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "artist", "track_id"])
        w.writerows(rows)
    assert detect_layout(base / "list.csv") == "csv"
    manifest = _ingest(base / "list.csv", tmp_path / "out")
    got = shard_set_reader(tmp_path / "out")
    assert manifest["layout"] == "csv" and manifest["split_method"] == "official"
    assert {s["path"]: s["reason"] for s in manifest["skipped"]} == {"audio/missing.wav": "missing file"}
    by_id = {m["track_id"]: m for _, m in got["samples"].values()}
    assert sorted(by_id) == [f"id{i}" for i in range(6)]
    assert [by_id[f"id{i}"]["split"] for i in range(6)] == ["train", "valid", "test"] * 2
    assert by_id["id4"]["artist"] == "art4" and by_id["id4"]["label"] == "b" and by_id["id4"]["key"] == "id4"


def test_layout_registry_lists_all_layouts_and_rejects_unknown():
    assert {"gtzan", "fma", "folder", "csv", "msd"} <= set(LAYOUTS.names())
    with pytest.raises(KeyError, match="unknown layout 'nosuch'"):
        LAYOUTS.get("nosuch")
    assert Skipped("a", "b").reason == "b"


@LAYOUTS.register("test-npy-features")
class _NpyFeatures(Layout):
    """A stand-in for a later feature layout (MSD): ``SOURCE/<label>/*.npy`` float ``[N, D]`` sequences."""

    name = "test-npy-features"
    kind = "features"

    @classmethod
    def detect(cls, source: Path) -> bool:
        return False  # never chosen by auto

    def scan(self):
        for p in walk_files(self.source):
            if p.suffix == ".npy":
                rel = p.relative_to(self.source).as_posix()
                yield Track(path=p, rel=rel, label=rel.split("/")[0], key_hint=rel[:-4])

    @classmethod
    def probe_file(cls, path: str):
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise AudioError(path, f"expected a non-empty [N, D] array, got shape {arr.shape}")
        return 1, int(arr.shape[1]), int(arr.shape[0])

    @classmethod
    def decode_file(cls, path: str, settings: dict):
        arr = np.load(path)
        return {"feats.npy": encode_feats(arr)}, int(arr.shape[0]), float(arr.shape[0])


def test_a_registered_feature_layout_plugs_into_the_ingest(tmp_path, shard_set_reader):
    import tarfile

    src = tmp_path / "feats"
    rng = np.random.default_rng(0)
    for lab in ("x", "y"):
        (src / lab).mkdir(parents=True)
        for i in range(3):
            np.save(src / lab / f"t{i}.npy", rng.standard_normal((5 + i, 12)).astype(np.float32))
    np.save(src / "x" / "bad.npy", np.zeros((0, 12), np.float32))
    manifest = _ingest(src, tmp_path / "out", layout="test-npy-features", split_ratios=(1, 0, 0))
    assert manifest["kind"] == "features" and manifest["labels"] == ["x", "y"]
    assert [s["path"] for s in manifest["skipped"]] == ["x/bad.npy"]
    shard = tmp_path / "out" / manifest["splits"]["train"]["shards"][0]["name"]
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        feats = decode_feats(tar.extractfile(next(n for n in names if n.endswith(".feats.npy"))).read())
    assert len(names) == 12 and sum(n.endswith(".feats.npy") for n in names) == 6
    assert feats.dtype == np.float16 and feats.shape[1] == 12
