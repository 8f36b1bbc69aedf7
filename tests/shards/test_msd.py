"""MSD layout: real HDF5 track files (h5py, the MSD's groups / compound tables) + a genre annotation file ->
feature shards, through the real ingest (scan, probe, plan, parallel decode, resume) and the real reader."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from shards.audio import AudioError
from shards.crop_stream import CropStream
from shards.format import decode_feats, decode_meta, load_manifest
from shards.ingest import IngestConfig, IngestError, main, run_ingest
from shards.layouts import LayoutError, LayoutOptions, detect_layout, scan_source
from shards.msd import (
    FEATURE_DIM,
    MSD_FRAME_RATE,
    read_label_file,
    read_msd_features,
    write_msd_file,
)
from shards.window_stream import WindowStream
from shards.windows import window_starts

GENRES = ("Rock", "Jazz", "Electronic")


def tid(i: int) -> str:
    """A valid MSD track id (TR + 16 upper-case alphanumerics), unique per ``i``."""
    return f"TRA{i:05d}XYZ1234567"


def msd_path(root: Path, track_id: str) -> Path:
    return root / "data" / track_id[2] / track_id[3] / track_id[4] / f"{track_id}.h5"


def write_track(root: Path, track_id: str, n: int, artist: str, seed: int, **kw) -> dict:
    """One MSD file with ``n`` segments of known content; returns what was written."""
    rng = np.random.default_rng(seed)
    timbre = rng.normal(0, 30, (n, 12)).round(2)
    pitches = rng.random((n, 12)).round(3)
    loud = rng.uniform(-40, 0, n).round(2)
    starts = np.cumsum(rng.uniform(0.1, 0.5, n)) - 0.1
    write_msd_file(msd_path(root, track_id), timbre, pitches, loud, starts, artist_id=artist, **kw)
    return {"feats": np.concatenate([timbre, pitches, loud[:, None]], axis=1), "starts": starts}


@pytest.fixture
def msd_tree(tmp_path):
    """12 labelled tracks (3 genres, 6 artists of 2 tracks), 2 unlabelled, 1 corrupt, 1 inconsistent file;
    a tagtraum-style label file with comments, a CD2 minority column, a missing track and a malformed line."""
    root = tmp_path / "MillionSongSubset"
    written = {}
    lines = ["# tagtraum genre annotations (CD2 style)", "# TRACK_ID<TAB>majority genre<TAB>minority", ""]
    for i in range(12):
        genre = GENRES[i % 3]
        written[tid(i)] = write_track(
            root, tid(i), 20 + 7 * i, f"ARTIST{i // 2:012d}", seed=i, tempo=90.0 + i
        )
        lines.append(f"{tid(i)}\t{genre}" + ("\tPop" if i == 0 else ""))
    for i in (20, 21):  # no label: filtered, counted
        write_track(root, tid(i), 10, "ARUNLABELLED0000", seed=i)
    bad = msd_path(root, tid(30))
    bad.write_bytes(b"this is not an HDF5 file" * 10)  # corrupt
    lines.append(f"{tid(30)}\tRock")
    rng = np.random.default_rng(1)
    write_msd_file(msd_path(root, tid(31)), rng.random((9, 12)), rng.random((8, 12)), rng.random(9),
                   np.arange(9.0), artist_id="ARBAD")  # fmt: skip
    lines.append(f"{tid(31)}\tJazz")
    lines.append(f"{tid(40)}\tRock")  # listed, no file
    lines.append("not-a-track-id\tRock")
    (root / "data" / "README.txt").write_text("not a track")
    labels = tmp_path / "msd_tagtraum_cd2.cls"
    labels.write_text("\n".join(lines) + "\n")
    return root, labels, written


def _members(shard: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def test_msd_ingest_writes_feature_shards_and_reports_every_dropped_track(msd_tree, tmp_path):
    root, labels, written = msd_tree
    res = run_ingest(IngestConfig(source=root, out=tmp_path / "out", layout="msd", labels=labels,
                                  workers=2, shard_size="4", progress=False))  # fmt: skip
    m = res.manifest
    assert m["kind"] == "features" and m["feature_dim"] == FEATURE_DIM == 25
    assert m["sample_rate"] == MSD_FRAME_RATE and m["layout"] == "msd" and m["group_by"] == "artist"
    assert m["labels"] == sorted(GENRES)
    assert sum(m["splits"][s]["tracks"] for s in ("train", "valid", "test")) == 12
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert skipped[tid(40)] == "listed in labels, no HDF5 file"
    assert skipped[f"{labels.name}:19"].startswith("malformed label line (not an MSD track id)")
    assert skipped[f"data/A/0/0/{tid(30)}.h5"].startswith("not a readable HDF5 file")
    assert skipped[f"data/A/0/0/{tid(31)}.h5"] == "segment arrays disagree in length (segments_timbre=9, " \
        "segments_pitches=8, segments_loudness_max=9, segments_start=9)"  # fmt: skip
    assert len(skipped) == 4
    assert any("2 of 16 HDF5 track files have no label" in w for w in res.warnings)

    # every sample: float16 [N, 25] = timbre | pitches | loudness_max; JSON with the MSD facts
    seen, artist_split = {}, {}
    for split in ("train", "valid", "test"):
        for entry in m["splits"][split]["shards"]:
            for key, mem in _members(tmp_path / "out" / entry["name"]).items():
                feats, meta = decode_feats(mem["feats.npy"]), decode_meta(mem["json"])
                seen[key] = meta
                src = written[meta["track_id"]]
                assert feats.dtype == np.float16 and feats.shape == src["feats"].shape
                np.testing.assert_allclose(feats, src["feats"], rtol=1e-3, atol=0.02)
                assert meta["num_samples"] == feats.shape[0] and meta["split"] == split
                assert meta["artist"] == meta["artist_id"] and meta["tempo"] == 90.0 + int(key[3:8])
                assert meta["duration"] == pytest.approx(src["starts"][-1] + 0.5)
                artist_split.setdefault(meta["artist"], set()).add(split)
    assert sorted(seen) == sorted(tid(i) for i in range(12))
    assert seen[tid(0)]["label"] == "Rock"  # first genre column (the CD2 minority genre is ignored)
    assert all(len(s) == 1 for s in artist_split.values())  # artist-grouped splits
    assert sum(len(m["splits"][s]["shards"]) for s in m["splits"]) >= 3


def test_msd_cli_prints_the_summary_and_resumes_to_identical_shards(msd_tree, tmp_path, capsys):
    root, labels, _ = msd_tree
    args = [
        str(root),
        "--labels",
        str(labels),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        "--workers",
        "1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "layout: msd" in out and "skipped: 4" in out and "1 x listed in labels, no HDF5 file" in out
    assert "warning: 2 of 16 HDF5 track files have no label" in out
    first = {p.name: p.read_bytes() for p in (tmp_path / "o").glob("*.tar")}
    victim = sorted(first)[0]
    (tmp_path / "o" / victim).unlink()  # an interrupted run: one shard missing
    assert main(args) == 0
    assert "resumed:" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (tmp_path / "o").glob("*.tar")} == first
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["settings"]["labels"] == str(labels)


def test_msd_shards_stream_as_feature_batches(msd_tree, tmp_path):
    root, labels, written = msd_tree
    run_ingest(IngestConfig(source=root, out=tmp_path / "out", layout="msd", labels=labels, workers=1,
                            split_ratios=(1.0, 0.0, 0.0), progress=False))  # fmt: skip
    manifest = load_manifest(tmp_path / "out")
    assert manifest["splits"]["train"]["tracks"] == 12
    stream = WindowStream(tmp_path / "out", "train", window_samples=40, batch_size=4)
    keys = stream.track_keys()
    windows = 0
    for batch in stream:
        assert batch["feats"].shape == (4, 40, 25) and str(batch["feats"].dtype) == "torch.float16"
        for row in range(4):
            if batch["valid"][row] and batch["track"][row] >= 0:
                windows += 1
    expect = sum(len(window_starts(w["feats"].shape[0], 40)) for w in written.values())  # evaluation's windows
    assert windows == expect and len(keys) == 12
    train = CropStream(tmp_path / "out", "train", crop_samples=30, batch_size=4, seed=0)
    batch = next(iter(train))
    assert batch["feats"].shape == (4, 30, 25) and batch["label"].shape == (4,)


def test_label_file_parsing_tagtraum_and_magd(tmp_path):
    f = tmp_path / "labels.cls"
    f.write_text(
        "\ufeff# comment\n\n"
        f"{tid(1)}\tRock\n"
        f"{tid(2)}\tNew Age\tJazz\n"  # CD2: minority column ignored; genre with a space
        f"{tid(3)} Pop_Rock\n"  # top-MAGD written with a space
        f"{tid(1)}\tJazz\n"  # conflicting duplicate: first kept, warned
        f"{tid(4)}\n"  # no genre
        "TRlowercase000000\tRock\n"
    )
    labels, bad, warnings = read_label_file(f)
    assert labels == {tid(1): "Rock", tid(2): "New Age", tid(3): "Pop_Rock"}
    assert [b.path for b in bad] == ["labels.cls:7", "labels.cls:8"]
    assert "no genre column" in bad[0].reason and "not an MSD track id" in bad[1].reason
    assert warnings == [f"--labels {f}: 1 track(s) listed again with another genre (first kept)"]


def test_msd_layout_is_detected_and_needs_labels(msd_tree, tmp_path):
    root, labels, _ = msd_tree
    assert detect_layout(root) == "msd"
    assert detect_layout(root / "data") == "msd"
    with pytest.raises(LayoutError, match="needs --labels FILE"):
        scan_source(root, "msd", LayoutOptions())
    with pytest.raises(LayoutError, match="no such file"):
        scan_source(root, "msd", LayoutOptions(labels=tmp_path / "nope.cls"))
    empty = tmp_path / "empty.cls"
    empty.write_text("# nothing\n")
    with pytest.raises(LayoutError, match="no TRACK_ID<TAB>genre line"):
        scan_source(root, "msd", LayoutOptions(labels=empty))
    (tmp_path / "wav" / "rock").mkdir(parents=True)
    (tmp_path / "wav" / "rock" / "x.wav").write_bytes(b"")
    with pytest.raises(IngestError, match="--labels is for the msd layout"):
        run_ingest(IngestConfig(source=tmp_path / "wav", out=tmp_path / "o", labels=labels, progress=False))


def test_read_msd_features_values_metadata_and_max_seconds(tmp_path):
    src = write_track(tmp_path, tid(7), 50, "ARXYZ", seed=3, tempo=128.5, key=9, mode=0, title="Song",
                      artist_name="Band", song_id="SOABC", duration=31.0)  # fmt: skip
    path = msd_path(tmp_path, tid(7))
    feats, facts = read_msd_features(path)
    np.testing.assert_allclose(feats, src["feats"], rtol=1e-6)
    assert facts["track_id"] == tid(7) and facts["artist_id"] == "ARXYZ" and facts["artist_name"] == "Band"
    assert (facts["tempo"], facts["key"], facts["mode"], facts["title"]) == (128.5, 9, 0, "Song")
    assert facts["duration"] == 31.0 and facts["segments"] == 50
    cut, cut_facts = read_msd_features(path, max_seconds=5.0)
    n = int((src["starts"] < 5.0).sum())
    assert cut.shape == (n, 25) and 0 < n < 50 and cut_facts["duration"] == 5.0
    renamed = tmp_path / f"{tid(8)}.h5"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(AudioError, match="does not match the file name"):
        read_msd_features(renamed)
