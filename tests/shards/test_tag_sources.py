"""Tag readers on files in the real formats, written here: MTG-Jamendo TSVs and split files, a quoted
tab-separated MagnaTagATune annotations file with 188 tag columns, audio files (MP3, FLAC, Opus, M4A, WMA,
WAV) with genre tags written by mutagen, and label maps in YAML and CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from shards.tags_embedded import NO_GENRE, read_embedded_genres
from shards.tags_jamendo import jamendo_split_files, read_jamendo_split, read_jamendo_tsv
from shards.tags_labelmap import LabelMap, filter_min_count
from shards.tags_mtat import mtat_split, read_mtat
from tests.shards.conftest import write_tagged_audio

# ------------------------------------------------------------------------------------------ MTG-Jamendo
JAMENDO_LINES = [
    "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS",
    "track_0000214\tartist_000014\talbum_000031\t14/214.mp3\t124.6\tgenre---punkrock",
    "track_0000215\tartist_000014\talbum_000031\t15/215.mp3\t162.6\tgenre---metal\tinstrument---guitar"
    "\tmood/theme---energetic",
    "track_0000216\tartist_000015\talbum_000032\t16/216.mp3\t200.0\tinstrument---piano\tmood/theme---calm",
    "track_0000217\tartist_000016\talbum_000033\t17/217.mp3\t95.1\tgenre---rock\tgenre---rock\tgenre---pop",
]


def _write_jamendo(root: Path) -> Path:
    data = root / "data"
    (data / "splits" / "split-0").mkdir(parents=True)
    (data / "autotagging.tsv").write_text("\n".join(JAMENDO_LINES) + "\n", encoding="utf-8")
    header, rows = JAMENDO_LINES[0], JAMENDO_LINES[1:]
    for name, picked in (("train", rows[:2]), ("validation", rows[2:3]), ("test", rows[3:])):
        text = "\n".join([header, *picked]) + "\n"
        (data / "splits" / "split-0" / f"autotagging_genre-{name}.tsv").write_text(text, encoding="utf-8")
    return data


def test_jamendo_tsv_gives_ids_path_duration_and_tags_in_order_without_repeats(tmp_path):
    data = _write_jamendo(tmp_path)
    tracks = read_jamendo_tsv(data / "autotagging.tsv")
    assert [t.track_id for t in tracks] == [
        "track_0000214",
        "track_0000215",
        "track_0000216",
        "track_0000217",
    ]
    t = tracks[1]
    assert (t.artist_id, t.album_id, t.path, t.duration) == (
        "artist_000014",
        "album_000031",
        "15/215.mp3",
        162.6,
    )
    assert t.tags == ("genre---metal", "instrument---guitar", "mood/theme---energetic")
    assert tracks[3].tags == ("genre---rock", "genre---pop")


@pytest.mark.parametrize(
    ("subset", "want"),
    [
        ("genre", {"track_0000214": 1, "track_0000215": 1, "track_0000217": 2}),
        ("instrument", {"track_0000215": 1, "track_0000216": 1}),
        ("moodtheme", {"track_0000215": 1, "track_0000216": 1}),
        ("all", {"track_0000214": 1, "track_0000215": 3, "track_0000216": 2, "track_0000217": 2}),
    ],
)
def test_jamendo_subset_keeps_its_category_and_drops_tracks_left_without_tags(tmp_path, subset, want):
    tracks = read_jamendo_tsv(_write_jamendo(tmp_path) / "autotagging.tsv", subset)
    assert {t.track_id: len(t.tags) for t in tracks} == want


def test_jamendo_official_split_files_map_to_train_valid_test(tmp_path):
    data = _write_jamendo(tmp_path)
    files = jamendo_split_files(data, 0, "genre")
    assert files["valid"].name == "autotagging_genre-validation.tsv"
    split = read_jamendo_split(data, 0, "genre")
    assert [t.track_id for t in split["train"]] == ["track_0000214", "track_0000215"]
    assert split["valid"] == []  # its only track has no genre tag
    assert [t.tags for t in split["test"]] == [("genre---rock", "genre---pop")]
    with pytest.raises(FileNotFoundError, match="split-1"):
        jamendo_split_files(data, 1, "genre")


def test_jamendo_bad_header_or_short_line_raises_with_the_line(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text(JAMENDO_LINES[0] + "\ntrack_1\tartist_1\talbum_1\t1/1.mp3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:2"):
        read_jamendo_tsv(p)
    p.write_text("id\tpath\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not an MTG-Jamendo"):
        read_jamendo_tsv(p)


# --------------------------------------------------------------------------------------- MagnaTagATune
MTAT_TAGS = ["no voice", "singer", "duet", "plucking", "hard rock", "world", "guitar", "classical"]
MTAT_TAGS += [f"tag{j}" for j in range(188 - len(MTAT_TAGS))]


def _write_mtat(path: Path) -> None:
    """Quoted tab-separated, like the real file: guitar on 5 clips, classical on 4, singer and duet on 3 each
    (a tie: column order decides), the rest fewer; one clip without any of the top-3 tags."""
    on = {
        "guitar": [0, 1, 2, 3, 4],
        "classical": [0, 1, 2, 5],
        "singer": [1, 3, 5],
        "duet": [2, 4, 5],
        "world": [3],
    }
    paths = ["0/a-01.mp3", "b/b-02.mp3", "c/c-03.mp3", "d/d-04.mp3", "f/f-05.mp3", "5/e-06.mp3", "e/none.mp3"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(["clip_id", *MTAT_TAGS, "mp3_path"])
        for i, p in enumerate(paths):
            w.writerow([str(2 + i), *["1" if i in on.get(t, []) else "0" for t in MTAT_TAGS], p])


def test_mtat_top_n_is_by_frequency_with_ties_by_column_order(tmp_path):
    _write_mtat(tmp_path / "annotations_final.csv")
    ann = read_mtat(tmp_path / "annotations_final.csv", top_n=4)
    assert ann.tags == ("guitar", "classical", "singer", "duet") and ann.counts == (5, 4, 3, 3)
    assert [c.clip_id for c in ann.clips] == ["2", "3", "4", "5", "6", "7", "8"]
    assert ann.clips[1].tags == ("guitar", "classical", "singer") and ann.clips[1].path == "b/b-02.mp3"
    assert ann.clips[6].tags == ()
    assert len(read_mtat(tmp_path / "annotations_final.csv").tags) == 50
    assert len(read_mtat(tmp_path / "annotations_final.csv", top_n=None).tags) == 188
    dropped = read_mtat(tmp_path / "annotations_final.csv", top_n=4, drop_untagged=True)
    assert [c.clip_id for c in dropped.clips] == ["2", "3", "4", "5", "6", "7"]


def test_mtat_split_is_dieleman_schrauwen_folders(tmp_path):
    _write_mtat(tmp_path / "annotations_final.csv")
    clips = read_mtat(tmp_path / "annotations_final.csv").clips
    assert [c.split for c in clips] == ["train", "train", "valid", "test", "test", "train", "test"]
    assert [mtat_split(f"{p}/x.mp3") for p in "0123456789abcdef"] == ["train"] * 12 + ["valid"] + ["test"] * 3
    with pytest.raises(ValueError, match="first folder"):
        mtat_split("g/x.mp3")


def test_mtat_rejects_other_files_and_non_binary_cells(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("id\tguitar\tpath\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a MagnaTagATune"):
        read_mtat(p)
    p.write_text('"clip_id"\t"guitar"\t"mp3_path"\n"2"\t"2"\t"0/x.mp3"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"a.csv:2: tag values"):
        read_mtat(p)


# ----------------------------------------------------------------------------------- embedded genre tags
@pytest.fixture(scope="module")
def tagged(tmp_path_factory) -> dict[str, Path]:
    """Real audio files with genre tags written by mutagen (encoded by FFmpeg through PyAV, or libsndfile)."""
    root = tmp_path_factory.mktemp("tagged")
    out: dict[str, Path] = {}
    for name, text, version in [
        ("mp3_multi", ["Rock", "Electronic"], 4),
        ("mp3_paren", ["(17)"], 3),
        ("mp3_number", ["17"], 3),
        ("mp3_two_refs", ["(8)(32)"], 3),
    ]:
        out[name] = write_tagged_audio(root / f"{name}.mp3", text, id3_version=version)
    out["mp3_title_only"] = write_tagged_audio(root / "mp3_title_only.mp3", None)
    for name, genre_byte in (("mp3_v1_only", 8), ("mp3_v1_none", 255)):
        out[name] = write_tagged_audio(root / f"{name}.mp3", None, id3v1_genre=genre_byte)
    out["flac_multi"] = write_tagged_audio(root / "multi.flac", ["Jazz", "Blues", "jazz ", ""])
    out["opus"] = write_tagged_audio(root / "a.opus", ["Ambient"])
    out["m4a"] = write_tagged_audio(root / "a.m4a", ["Hip-Hop", "Rap"])
    out["wma"] = write_tagged_audio(root / "a.wma", ["Classical"])
    out["opus_untagged"] = write_tagged_audio(root / "b.opus", None)
    out["wav_untagged"] = write_tagged_audio(root / "plain.wav", None)
    (root / "text.mp3").write_bytes(b"this is not audio at all, just words " * 20)
    out["not_audio_mp3"] = root / "text.mp3"
    out["missing"] = root / "gone.flac"
    return out


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("mp3_multi", ["Rock", "Electronic"]),
        ("mp3_paren", ["Rock"]),
        ("mp3_number", ["Rock"]),
        ("mp3_two_refs", ["Jazz", "Classical"]),
        ("mp3_v1_only", ["Jazz"]),
        ("flac_multi", ["Jazz", "Blues", "jazz"]),  # " jazz " stripped, "" dropped; case: the label map's job
        ("opus", ["Ambient"]),
        ("m4a", ["Hip-Hop", "Rap"]),
        ("wma", ["Classical"]),
    ],
)
def test_embedded_genres_are_read_from_every_container(tagged, name, want):
    assert read_embedded_genres(tagged[name]) == want


@pytest.mark.parametrize("name", ["mp3_title_only", "mp3_v1_none", "opus_untagged", "wav_untagged"])
def test_files_without_a_genre_give_the_no_genre_reason(tagged, name):
    assert read_embedded_genres(tagged[name]) == NO_GENRE


@pytest.mark.parametrize("name", ["not_audio_mp3", "missing"])
def test_unreadable_files_give_a_reason_instead_of_raising(tagged, name):
    got = read_embedded_genres(tagged[name])
    assert isinstance(got, str) and got.startswith("unreadable tags: ")


# ------------------------------------------------------------------------------------------ label maps
def test_yaml_label_map_is_many_to_one_case_insensitive_and_drops_null(tmp_path):
    p = tmp_path / "map.yaml"
    p.write_text(
        'Hip-Hop: hiphop\nRap: hiphop\n"Alt. Rock": rock\nRock: rock\nPodcast: ~\nSpoken: ""\n', "utf-8"
    )
    m = LabelMap.load(p)
    assert len(m) == 6 and m.canonical_tags == ["hiphop", "rock"]
    assert m.apply(["hip-hop", " RAP ", "alt. rock", "Podcast", "Spoken", "Polka"]) == ["hiphop", "rock"]
    assert LabelMap.load(p, unmapped="keep").apply(["Polka ", "podcast"]) == ["Polka"]


def test_csv_label_map_with_header_comments_and_empty_values(tmp_path):
    p = tmp_path / "map.csv"
    p.write_text(
        'raw,canonical\n# comment\nHip-Hop,hiphop\n"Rock, Alternative",rock\nPodcast,\n\nrap,hiphop\n',
        "utf-8",
    )
    m = LabelMap.load(p)
    assert (
        m.map_tag("rock, alternative") == "rock"
        and m.map_tag("PODCAST") is None
        and m.map_tag("Rap") == "hiphop"
    )


def test_conflicting_label_map_entries_raise(tmp_path):
    p = tmp_path / "map.csv"
    p.write_text("Rock,rock\nROCK,metal\n", "utf-8")
    with pytest.raises(ValueError, match="'Rock' -> 'rock' and 'ROCK' -> 'metal'"):
        LabelMap.load(p)
    with pytest.raises(ValueError, match=".yaml, .yml or .csv"):
        LabelMap.load(tmp_path / "map.txt")


def test_min_count_filter_drops_rare_tags_and_orders_kept_by_frequency():
    sets = [["rock", "pop"], ["rock"], ["jazz", "rock", "rock"], ["pop"], ["polka"]]
    filtered, kept = filter_min_count(sets, 2)
    assert kept == ["rock", "pop"]
    assert filtered == [["rock", "pop"], ["rock"], ["rock", "rock"], ["pop"], []]
    assert np.array_equal(filter_min_count(sets, 1)[1], ["rock", "pop", "jazz", "polka"])
