"""Multi-label shard sets end to end: each multi-label layout on files in its real format (written here), through
the ingest to tar shards and manifest; splits and folds by iterative stratification; refusals of bad input."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from shards.format import TASK_MULTI, load_manifest, manifest_task
from shards.ingest import IngestConfig, IngestError, main, run_ingest
from shards.layouts import LayoutOptions, detect_layout, scan_source
from shards.layouts_tags import MTAT_EMPTY_CLIPS


def _ingest(src: Path, out: Path, **kw) -> dict:
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return run_ingest(IngestConfig(source=src, out=out, **kw)).manifest


def _check_multilabel(shards: dict) -> dict[str, dict]:
    """Every sample's JSON follows the multi-label contract; returns ``{path: meta}``."""
    m = shards["manifest"]
    assert manifest_task(m) == TASK_MULTI and m["labels"] == sorted(m["labels"])
    per_label: dict[str, Counter] = {s: Counter() for s in m["splits"]}
    out = {}
    for _, meta in shards["samples"].values():
        assert meta["label"] is None and meta["label_index"] == -1
        assert meta["label_indices"] == sorted(meta["label_indices"])
        assert [m["labels"][i] for i in meta["label_indices"]] == meta["labels"]
        per_label[meta["split"]].update(meta["labels"])
        out[meta["path"]] = meta
    for split, entry in m["splits"].items():
        assert entry["per_label"] == {lab: per_label[split][lab] for lab in m["labels"]}
    return out


# --------------------------------------------------------------------------------------------- csv
def _tag_csv(root: Path, clip_writer, sep: str = ";", n: int = 24) -> Path:
    rows = []
    for i in range(n):
        tags = ["rock"] if i % 2 else ["jazz"]
        if i % 3 == 0:
            tags.append("live")
        if i % 5 == 0:
            tags = []  # a track without tags: a negative for every tag
        p = clip_writer(root / f"t{i:02d}.wav", seconds=0.3)
        rows.append({"path": p.name, "labels": sep.join(tags), "artist": f"a{i // 2}"})
    with open(root / "list.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["path", "labels", "artist"])
        w.writeheader()
        w.writerows(rows)
    return root / "list.csv"


def test_csv_labels_column_makes_a_multilabel_set_with_tag_indices(tmp_path, clip_writer, shard_set_reader):
    src = _tag_csv(tmp_path / "src", clip_writer)
    m = _ingest(src, tmp_path / "out", folds=3)
    shards = shard_set_reader(tmp_path / "out")
    metas = _check_multilabel(shards)
    assert m["labels"] == ["jazz", "live", "rock"] and m["task"] == "multilabel"
    assert metas["t01.wav"]["labels"] == ["rock"] and metas["t03.wav"]["labels"] == ["live", "rock"]
    assert metas["t06.wav"]["labels"] == ["jazz", "live"]
    assert metas["t00.wav"]["labels"] == [] and metas["t00.wav"]["label_indices"] == []
    # grouped by artist (auto): an artist's tracks share one split and one fold
    by_artist: dict[str, set] = {}
    for meta in metas.values():
        by_artist.setdefault(meta["artist"], set()).add((meta["split"], meta["fold"]))
    assert all(len(v) == 1 for v in by_artist.values())
    assert {meta["fold"] for meta in metas.values()} == {0, 1, 2}
    assert m["group_by"] == "artist" and m["split_method"] == "stratified"


def test_csv_multilabel_splits_are_seeded_and_label_sep_is_honoured(tmp_path, clip_writer, shard_set_reader):
    src = _tag_csv(tmp_path / "src", clip_writer, sep="|")
    _ingest(src, tmp_path / "a", label_sep="|", seed=3)
    _ingest(src, tmp_path / "b", label_sep="|", seed=3)
    a, b = shard_set_reader(tmp_path / "a"), shard_set_reader(tmp_path / "b")
    assert {k: v[1]["split"] for k, v in a["samples"].items()} == {k: v[1]["split"] for k, v in b["samples"].items()}
    assert a["manifest"]["labels"] == ["jazz", "live", "rock"]
    assert (tmp_path / "a" / "train-000000.tar").read_bytes() == (tmp_path / "b" / "train-000000.tar").read_bytes()


def test_csv_with_both_label_and_labels_columns_is_refused(tmp_path, clip_writer):
    clip_writer(tmp_path / "a.wav")
    (tmp_path / "l.csv").write_text("path,label,labels\na.wav,rock,rock;pop\n", encoding="utf-8")
    with pytest.raises(IngestError, match="both a 'label' column"):
        _ingest(tmp_path / "l.csv", tmp_path / "out")


def test_single_label_sets_say_singlelabel_and_old_manifests_read_as_singlelabel(tmp_path, clip_writer):
    for genre in ("rock", "jazz"):
        for i in range(4):
            clip_writer(tmp_path / "src" / genre / f"{i}.wav", seconds=0.3)
    m = _ingest(tmp_path / "src", tmp_path / "out")
    assert m["task"] == "singlelabel" and manifest_task(m) == "singlelabel"
    del m["task"]
    assert manifest_task(m) == "singlelabel"
    with pytest.raises(ValueError, match="task 'other'"):
        manifest_task({**m, "task": "other"})


# --------------------------------------------------------------------------------------------- jamendo
_JAMENDO_HEADER = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"


def _jamendo_tree(root: Path, clip_writer) -> dict[str, str]:
    """``data/autotagging.tsv`` + ``data/splits/split-1/autotagging_genre-*.tsv`` + ``audio/NN/N.mp3`` (real
    MP3s); track 9 is listed but its audio is missing. Returns {track_id: official split}."""
    data = root / "data"
    (data / "splits" / "split-1").mkdir(parents=True)
    genres = ["rock", "pop", "electronic"]
    lines, official = [_JAMENDO_HEADER], {}
    by_split: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for i in range(10):
        tags = [f"genre---{genres[i % 3]}", f"instrument---{'piano' if i % 2 else 'guitar'}"]
        if i % 4 == 0:
            tags.append(f"genre---{genres[(i + 1) % 3]}")
        rel = f"{i:02d}/{100 + i}.mp3"
        line = "\t".join([f"track_{i:07d}", f"artist_{i // 2:06d}", f"album_{i:06d}", rel, "30.0", *tags])
        lines.append(line)
        split = "train" if i < 6 else ("validation" if i < 8 else "test")
        by_split[split].append(line)
        official[f"track_{i:07d}"] = {"validation": "valid"}.get(split, split)
        if i != 9:
            clip_writer(root / "audio" / rel, sample_rate=44100, seconds=0.3)
    (data / "autotagging.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split, picked in by_split.items():
        text = "\n".join([_JAMENDO_HEADER, *picked]) + "\n"
        (data / "splits" / "split-1" / f"autotagging_genre-{split}.tsv").write_text(text, encoding="utf-8")
    return official


def test_jamendo_genre_subset_official_split_artists_and_missing_audio(tmp_path, clip_writer, shard_set_reader):
    official = _jamendo_tree(tmp_path / "mtg", clip_writer)
    assert detect_layout(tmp_path / "mtg") == "jamendo"
    m = _ingest(tmp_path / "mtg", tmp_path / "out", layout="jamendo", subset="genre", split_index=1)
    metas = _check_multilabel(shard_set_reader(tmp_path / "out"))
    assert m["labels"] == ["genre---electronic", "genre---pop", "genre---rock"]
    assert m["split_method"] == "official"
    got = {meta["track_id"]: meta for meta in metas.values()}
    assert {tid: meta["split"] for tid, meta in got.items()} == {k: v for k, v in official.items() if k != "track_0000009"}
    assert got["track_0000000"]["labels"] == ["genre---pop", "genre---rock"]
    assert got["track_0000003"]["artist"] == "artist_000001"
    missing = [s for s in m["skipped"] if s["path"] == "audio/09/109.mp3"]
    assert missing and "track_0000009" in missing[0]["reason"] and "missing" in missing[0]["reason"]


def test_jamendo_without_split_files_is_stratified_by_artist_and_instrument_subset_keeps_its_tags(
    tmp_path, clip_writer, shard_set_reader
):
    _jamendo_tree(tmp_path / "mtg", clip_writer)
    m = _ingest(tmp_path / "mtg", tmp_path / "out", layout="jamendo", subset="instrument", split_ratios=(0.5, 0.25, 0.25))
    metas = _check_multilabel(shard_set_reader(tmp_path / "out"))
    assert m["labels"] == ["instrument---guitar", "instrument---piano"] and m["split_method"] == "stratified"
    assert m["group_by"] == "artist"
    with pytest.raises(IngestError, match="--subset 'small': the jamendo layout takes genre"):
        _ingest(tmp_path / "mtg", tmp_path / "o", layout="jamendo", subset="small")
    by_artist: dict[str, set] = {}
    for meta in metas.values():
        by_artist.setdefault(meta["artist"], set()).add(meta["split"])
    assert all(len(v) == 1 for v in by_artist.values())


# --------------------------------------------------------------------------------------------- mtat
def _mtat_tree(root: Path, clip_writer, corrupt_writer) -> None:
    """Quoted tab-separated ``annotations_final.csv`` with the 188 tag columns, clips in the folders 0-f:
    one clip per folder, a known-empty clip (0 bytes, as in the archive) and a corrupt one."""
    names = ["guitar", "classical", "slow", "techno", "strings"] + [f"tag{j}" for j in range(183)]
    clips = []
    for j, part in enumerate("0123456789abcdef"):
        on = {names[j % 3], names[3 + j % 2]} if j % 7 else set()  # every 7th clip: no tag at all
        clips.append((str(j + 2), f"{part}/artist{j}-album-01-song-0-29.mp3", on))
    clips.append(("90", sorted(MTAT_EMPTY_CLIPS)[0], {"guitar"}))
    clips.append(("91", "1/corrupt-01-x-0-29.mp3", {"guitar"}))
    root.mkdir(parents=True)
    with open(root / "annotations_final.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(["clip_id", *names, "mp3_path"])
        for cid, path, on in clips:
            w.writerow([cid, *["1" if t in on else "0" for t in names], path])
    for cid, path, _ in clips:
        if cid == "90":
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(b"")
        elif cid == "91":
            corrupt_writer(root / path, "garbage")
        else:
            clip_writer(root / path, sample_rate=16000, seconds=0.3)


def test_mtat_top_tags_literature_split_and_known_bad_clips_skipped(
    tmp_path, clip_writer, corrupt_writer, shard_set_reader
):
    _mtat_tree(tmp_path / "mtat", clip_writer, corrupt_writer)
    assert detect_layout(tmp_path / "mtat") == "mtat"
    m = _ingest(tmp_path / "mtat", tmp_path / "out", top_tags=4)
    metas = _check_multilabel(shard_set_reader(tmp_path / "out"))
    assert m["layout"] == "mtat" and m["split_method"] == "official"
    assert len(m["labels"]) == 4 and set(m["labels"]) <= {"guitar", "classical", "slow", "techno", "strings"}
    for path, meta in metas.items():
        part = path[0]
        assert meta["split"] == ("train" if part in "0123456789ab" else "valid" if part == "c" else "test")
    assert metas["0/artist0-album-01-song-0-29.mp3"]["labels"] == []  # an untagged clip stays
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert "known to be empty" in skipped[sorted(MTAT_EMPTY_CLIPS)[0]]
    assert "1/corrupt-01-x-0-29.mp3" in skipped
    assert sum(e["tracks"] for e in m["splits"].values()) == 16


# --------------------------------------------------------------------------------------------- fma
_FMA_COLS = [("artist", "id"), ("set", "split"), ("set", "subset"), ("track", "genre_top"),
             ("track", "genres"), ("track", "genres_all")]  # fmt: skip
_FMA_GENRES = [(12, 0, "Rock"), (25, 12, "Punk"), (66, 25, "Hardcore"), (15, 0, "Electronic"), (236, 15, "Ambient")]


def _fma_tree(root: Path, clip_writer) -> None:
    """``fma_metadata/tracks.csv`` (the three-row header, id lists in the real ``[a, b]`` form),
    ``genres.csv`` and ``fma_small/NNN/NNNNNN.mp3``."""
    meta = root / "fma_metadata"
    meta.mkdir(parents=True)
    with open(meta / "genres.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["genre_id", "#tracks", "parent", "title", "top_level"])
        for gid, parent, title in _FMA_GENRES:
            w.writerow([gid, 10, parent, title, gid if not parent else 12])
    rows = [
        (2, 1, "training", "Rock", "[66]", "[12, 25, 66]"),
        (3, 1, "training", "Electronic", "[236, 12]", "[12, 15, 236]"),
        (4, 2, "validation", "Rock", "[25]", "[12, 25]"),
        (5, 3, "test", "Electronic", "[15]", "[15]"),
        (6, 3, "test", "", "[]", "[]"),  # no genre: skipped with the reason
    ]
    with open(meta / "tracks.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([""] + [g for g, _ in _FMA_COLS])
        w.writerow([""] + [c for _, c in _FMA_COLS])
        w.writerow(["track_id"] + [""] * len(_FMA_COLS))
        for tid, artist, split, top, genres, genres_all in rows:
            w.writerow([tid, artist, split, "small", top, genres, genres_all])
            clip_writer(root / "fma_small" / "000" / f"{tid:06d}.mp3", sample_rate=44100, seconds=0.3)


def test_fma_genres_all_and_genres_with_ancestors_are_every_genre_of_a_track(tmp_path, clip_writer, shard_set_reader):
    _fma_tree(tmp_path / "fma", clip_writer)
    m = _ingest(tmp_path / "fma", tmp_path / "all", labels="genres_all")
    got = {meta["track_id"]: meta["labels"] for meta in _check_multilabel(shard_set_reader(tmp_path / "all")).values()}
    assert got == {"2": ["Hardcore", "Punk", "Rock"], "3": ["Ambient", "Electronic", "Rock"], "4": ["Punk", "Rock"],
                   "5": ["Electronic"]}  # fmt: skip
    assert m["split_method"] == "official" and "fma_small/000/000006.mp3" in {s["path"] for s in m["skipped"]}
    _ingest(tmp_path / "fma", tmp_path / "leaf", labels="genres")
    leaf = {meta["track_id"]: meta["labels"] for _, meta in shard_set_reader(tmp_path / "leaf")["samples"].values()}
    assert leaf["2"] == ["Hardcore"] and leaf["3"] == ["Ambient", "Rock"]
    _ingest(tmp_path / "fma", tmp_path / "anc", labels="genres", genre_ancestors=True)
    anc = {meta["track_id"]: meta["labels"] for _, meta in shard_set_reader(tmp_path / "anc")["samples"].values()}
    assert anc == got
    single = _ingest(tmp_path / "fma", tmp_path / "top")
    assert single["task"] == "singlelabel" and single["labels"] == ["Electronic", "Rock"]


def test_fma_genre_options_are_refused_where_they_do_not_apply(tmp_path, clip_writer):
    _fma_tree(tmp_path / "fma", clip_writer)
    with pytest.raises(IngestError, match="--labels genres_top: the fma layout takes genre_top, genres"):
        _ingest(tmp_path / "fma", tmp_path / "o", labels="genres_top")
    with pytest.raises(IngestError, match="--genre-ancestors"):
        _ingest(tmp_path / "fma", tmp_path / "o", genre_ancestors=True)
    with pytest.raises(IngestError, match="--top-tags is for the mtat layout"):
        _ingest(tmp_path / "fma", tmp_path / "o", top_tags=10)


# --------------------------------------------------------------------------------------------- tags
def _tags_tree(root: Path, tagged_audio_writer) -> None:
    """Real MP3 / FLAC / Opus / M4A files tagged by mutagen: several values, ID3v1 numeric genres, none."""
    w = tagged_audio_writer
    w(root / "a" / "multi.mp3", ["Rock", "Electronic"])
    w(root / "a" / "paren.mp3", ["(17)"], id3_version=3)  # ID3v1 reference 17: Rock
    w(root / "a" / "v1.mp3", None, id3v1_genre=8)  # ID3v1 only, genre byte 8: Jazz
    w(root / "b" / "jazz.flac", ["Jazz", "Blues"])
    w(root / "b" / "hiphop.m4a", ["Hip-Hop"])
    w(root / "b" / "rap.opus", ["Rap"])
    w(root / "b" / "pod.opus", ["Podcast"])
    w(root / "b" / "untagged.flac", None)
    w(root / "b" / "title_only.mp3", None)
    (root / "b" / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 not music")


def test_tags_layout_reads_embedded_genres_of_every_container_and_lists_untagged_files(
    tmp_path, tagged_audio_writer, shard_set_reader
):
    _tags_tree(tmp_path / "lib", tagged_audio_writer)
    m = _ingest(tmp_path / "lib", tmp_path / "out", layout="tags", split_ratios=(1, 0, 0))
    metas = _check_multilabel(shard_set_reader(tmp_path / "out"))
    assert {p: meta["labels"] for p, meta in metas.items()} == {
        "a/multi.mp3": ["Electronic", "Rock"],
        "a/paren.mp3": ["Rock"],
        "a/v1.mp3": ["Jazz"],
        "b/jazz.flac": ["Blues", "Jazz"],
        "b/hiphop.m4a": ["Hip-Hop"],
        "b/rap.opus": ["Rap"],
        "b/pod.opus": ["Podcast"],
    }
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert skipped == {"b/untagged.flac": "no genre tag", "b/title_only.mp3": "no genre tag"}
    assert m["ignored"] == {".jpg": 1}


def test_tags_label_map_merges_and_drops_and_min_count_skips_rare_tags(tmp_path, tagged_audio_writer, shard_set_reader):
    _tags_tree(tmp_path / "lib", tagged_audio_writer)
    (tmp_path / "map.yaml").write_text("Hip-Hop: hiphop\nRap: hiphop\nPodcast: ~\nBlues: jazz\nJazz: jazz\n", "utf-8")
    m = _ingest(tmp_path / "lib", tmp_path / "out", layout="tags", label_map=tmp_path / "map.yaml", min_count=2,
                split_ratios=(1, 0, 0))  # fmt: skip
    metas = _check_multilabel(shard_set_reader(tmp_path / "out"))
    assert m["labels"] == ["Rock", "hiphop", "jazz"]  # Electronic: 1 file, below --min-count 2
    assert {p: meta["labels"] for p, meta in metas.items()} == {
        "a/multi.mp3": ["Rock"],
        "a/paren.mp3": ["Rock"],
        "a/v1.mp3": ["jazz"],
        "b/jazz.flac": ["jazz"],
        "b/hiphop.m4a": ["hiphop"],
        "b/rap.opus": ["hiphop"],
    }
    reason = {s["path"]: s["reason"] for s in m["skipped"]}["b/pod.opus"]
    assert reason.startswith("no genre tag left after --label-map")


def test_tags_min_count_skip_names_the_option(tmp_path, tagged_audio_writer):
    _tags_tree(tmp_path / "lib", tagged_audio_writer)
    res = scan_source(tmp_path / "lib", "tags", LayoutOptions(min_count=2))
    reasons = {s.path: s.reason for s in res.skipped}
    assert reasons["b/hiphop.m4a"].startswith("no genre tag") and "--min-count 2" in reasons["b/hiphop.m4a"]
    assert res.task == TASK_MULTI


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"Rock: rock\nJazz: \xe9\n", "not UTF-8 text"),
        (b"Rock: [rock\n", "not a valid label map"),
        (b"- Rock\n- Jazz\n", "not a valid label map"),
    ],
)
def test_bad_label_map_is_a_one_line_refusal(tmp_path, tagged_audio_writer, capsys, content, match):
    tagged_audio_writer(tmp_path / "lib" / "a.flac", ["Rock"])
    (tmp_path / "map.yaml").write_bytes(content)
    code = main([str(tmp_path / "lib"), "--out", str(tmp_path / "out"), "--layout", "tags", "--label-map",
                 str(tmp_path / "map.yaml"), "--no-progress", "-q"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_help_names_the_multilabel_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--label-sep", "--genre-ancestors", "--split-index", "--top-tags", "--label-map", "--min-count"):
        assert flag in out
    assert "genres_all" in out and "top50tags" in out


def test_manifest_of_a_multilabel_set_loads(tmp_path, clip_writer):
    src = _tag_csv(tmp_path / "src", clip_writer, n=10)
    _ingest(src, tmp_path / "out")
    assert manifest_task(load_manifest(tmp_path / "out")) == TASK_MULTI
