"""MTG-Jamendo auto-tagging metadata: ``autotagging*.tsv`` and the official split files (readers only).

Format (Bogdanov et al. 2019, "The MTG-Jamendo dataset for automatic music tagging", ICML ML4MD workshop;
https://github.com/MTG/mtg-jamendo-dataset): a header line ``TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS``,
then one tab-separated line per track, ``track_0000214 artist_000014 album_000031 14/214.mp3 124.6
genre---punkrock [more tags, one per column]``. Tags carry their category: ``genre---``, ``instrument---``,
``mood/theme---``. ``PATH`` is relative to the audio root (the low-quality download names the same track
``14/214.low.mp3``). ``DURATION`` is in seconds.

Files: ``data/autotagging.tsv`` (all tags), ``data/autotagging_{genre,instrument,moodtheme,top50tags}.tsv``
(one category, or the 50 most frequent tags), and ``data/splits/split-N/autotagging_<subset>-{train,
validation,test}.tsv`` (N = 0..4; artist-disjoint splits, same line format).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "JAMENDO_SUBSETS",
    "JamendoTrack",
    "filter_subset",
    "jamendo_split_files",
    "read_jamendo_split",
    "read_jamendo_tsv",
]

#: subset name -> tag prefix (None: every tag; ``top50tags``: the 50 most frequent)
JAMENDO_SUBSETS: dict[str, str | None] = {
    "genre": "genre---",
    "instrument": "instrument---",
    "moodtheme": "mood/theme---",
    "top50tags": None,
    "all": None,
}
_HEADER = ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS"]
#: official split file name -> our split name
_SPLIT_NAMES = {"train": "train", "validation": "valid", "test": "test"}


@dataclass(frozen=True)
class JamendoTrack:
    """One line of an ``autotagging*.tsv``: ids, audio path relative to the audio root, duration in
    seconds, tags as written (``genre---rock``), in file order without repeats."""

    track_id: str
    artist_id: str
    album_id: str
    path: str
    duration: float
    tags: tuple[str, ...]


def read_jamendo_tsv(path: str | Path, subset: str = "all") -> list[JamendoTrack]:
    """Read one ``autotagging*.tsv`` (or split file), keeping the tags of ``subset`` (see
    :func:`filter_subset`); tracks left with no tag are dropped. Raises ValueError on a bad header or a
    line with fewer than six columns (naming file and line)."""
    path = Path(path)
    tracks: list[JamendoTrack] = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header[:6] != _HEADER:
            raise ValueError(f"{path}: not an MTG-Jamendo autotagging file (header {header[:6]})")
        for lineno, line in enumerate(f, start=2):
            cols = line.rstrip("\r\n").split("\t")
            if cols == [""]:
                continue
            if len(cols) < 6:
                raise ValueError(
                    f"{path}:{lineno}: expected 6 or more tab-separated columns, got {len(cols)}"
                )
            try:
                duration = float(cols[4])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: duration {cols[4]!r} is not a number") from None
            tags = tuple(dict.fromkeys(t.strip() for t in cols[5:] if t.strip()))
            tracks.append(JamendoTrack(cols[0], cols[1], cols[2], cols[3], duration, tags))
    return filter_subset(tracks, subset)


def filter_subset(tracks: list[JamendoTrack], subset: str) -> list[JamendoTrack]:
    """Keep the tags of ``subset``: a category (``genre``, ``instrument``, ``moodtheme``), ``all``, or
    ``top50tags`` (the 50 most frequent tags of these tracks, ties by name: the official
    ``autotagging_top50tags.tsv`` was made the same way from the full set, so read that file with ``all``
    when you have it). Tracks left without a tag are dropped."""
    if subset not in JAMENDO_SUBSETS:
        raise ValueError(f"subset {subset!r}: expected one of {sorted(JAMENDO_SUBSETS)}")
    if subset == "all":
        return list(tracks)
    if subset == "top50tags":
        counts = Counter(t for tr in tracks for t in tr.tags)
        keep = {t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:50]}
    else:
        prefix = JAMENDO_SUBSETS[subset]
        keep = {t for tr in tracks for t in tr.tags if t.startswith(prefix)}
    out = []
    for tr in tracks:
        tags = tuple(t for t in tr.tags if t in keep)
        if tags:
            out.append(JamendoTrack(tr.track_id, tr.artist_id, tr.album_id, tr.path, tr.duration, tags))
    return out


def jamendo_split_files(data_dir: str | Path, split: int = 0, subset: str = "genre") -> dict[str, Path]:
    """``{"train": Path, "valid": Path, "test": Path}`` of ``<data_dir>/splits/split-<split>/
    autotagging_<subset>-{train,validation,test}.tsv`` (``subset`` ``all`` -> ``autotagging-*.tsv``).
    Raises FileNotFoundError naming the first missing file."""
    if subset not in JAMENDO_SUBSETS:
        raise ValueError(f"subset {subset!r}: expected one of {sorted(JAMENDO_SUBSETS)}")
    stem = "autotagging" if subset == "all" else f"autotagging_{subset}"
    folder = Path(data_dir) / "splits" / f"split-{split}"
    out = {ours: folder / f"{stem}-{theirs}.tsv" for theirs, ours in _SPLIT_NAMES.items()}
    for p in out.values():
        if not p.is_file():
            raise FileNotFoundError(f"MTG-Jamendo split file missing: {p}")
    return out


def read_jamendo_split(
    data_dir: str | Path, split: int = 0, subset: str = "genre"
) -> dict[str, list[JamendoTrack]]:
    """The official split ``split`` of ``subset``: ``{"train": [...], "valid": [...], "test": [...]}``."""
    return {
        name: read_jamendo_tsv(p, subset) for name, p in jamendo_split_files(data_dir, split, subset).items()
    }
