"""Multi-label collection layouts: MTG-Jamendo, MagnaTagATune, and any folder of genre-tagged music files.

Each gives its tracks a set of tags (``Track.labels``) and so makes a multi-label shard set
(:data:`shards.format.TASK_MULTI`); the metadata readers are :mod:`shards.tags_jamendo`,
:mod:`shards.tags_mtat` and :mod:`shards.tags_embedded` (+ :mod:`shards.tags_labelmap`).

- ``jamendo``: ``SOURCE/data/autotagging*.tsv`` (or the TSVs in SOURCE) + audio under ``SOURCE/audio`` (or
  SOURCE); ``--subset genre|instrument|moodtheme|top50tags|all``; the official split
  ``data/splits/split-N/autotagging_<subset>-{train,validation,test}.tsv`` (``--split-index N``) when present;
  artists as groups. A TSV row whose audio file is missing is skipped with its path and the reason.
- ``mtat``: ``SOURCE/annotations_final.csv`` + the mp3 folders ``0``-``f`` (in SOURCE or ``SOURCE/mp3``);
  the ``--top-tags N`` most frequent tags (50); the split of Dieleman & Schrauwen (folders 0-b train, c
  valid, d-f test). Clips without any kept tag stay (negatives for every tag, as in that split). The clips
  known to be empty in the distributed archive are skipped with the reason, never decoded.
- ``tags``: every audio file under SOURCE with its embedded genre tags, mapped by ``--label-map`` (raw ->
  canonical, many to one, or dropped; raw tags the map does not list are kept) and filtered by
  ``--min-count``; a file without a usable genre tag is skipped with the reason (``no genre tag ...``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from shards.format import TASK_MULTI
from shards.layouts import (
    LAYOUTS,
    Layout,
    LayoutError,
    Skipped,
    Track,
    WalkError,
    _dangling,
    _rel,
    _stem,
    walk_audio,
    walk_skip,
)
from shards.outputs import printable_path
from shards.tags_embedded import NO_GENRE, read_embedded_genres
from shards.tags_jamendo import JAMENDO_SUBSETS, jamendo_split_files, read_jamendo_tsv
from shards.tags_labelmap import LabelMap, filter_min_count
from shards.tags_mtat import read_mtat

__all__ = ["MTAT_EMPTY_CLIPS", "JamendoLayout", "MTATLayout", "TagsLayout", "load_label_map"]


def _stem_key(path: str) -> str:
    return path.rsplit("/", 1)[-1].split(".", 1)[0]


def _missing(path: Path, listed_in: str) -> str | None:
    """Why a listed audio file cannot be read (missing, a dangling link), or None."""
    bad = _dangling(path)
    if bad is not None:
        return f"listed in {listed_in} but a {bad.reason}"
    if not path.exists():
        return f"listed in {listed_in} but the audio file is missing"
    return None


# --------------------------------------------------------------------------------------------- jamendo
def _jamendo_dirs(source: Path) -> tuple[Path, Path]:
    """``(metadata folder, audio root)``: ``SOURCE/data`` when it holds the TSVs (else SOURCE), and
    ``SOURCE/audio`` when it exists (else SOURCE)."""
    data = source / "data" if (source / "data" / "autotagging.tsv").is_file() else source
    audio = source / "audio" if (source / "audio").is_dir() else source
    return data, audio


@LAYOUTS.register("jamendo")
class JamendoLayout(Layout):
    """MTG-Jamendo auto-tagging (see the module docstring). Tags as written (``genre---rock``)."""

    name = "jamendo"
    priority = 15
    official_split = True

    @classmethod
    def detect(cls, source: Path) -> bool:
        return source.is_dir() and (_jamendo_dirs(source)[0] / "autotagging.tsv").is_file()

    def _official_splits(self, data: Path, subset: str) -> dict[str, str]:
        """``{track_id: split}`` of ``--split-index N``, or {} (with a warning) without split files."""
        try:
            files = jamendo_split_files(data, self.options.split_index, subset)
        except FileNotFoundError as err:
            self.warnings.append(f"{err}: no official split; tracks are split by iterative stratification")
            return {}
        out: dict[str, str] = {}
        for split, path in files.items():
            for tr in read_jamendo_tsv(path, "all"):
                out[tr.track_id] = split
        return out

    def scan(self) -> Iterator[Track | Skipped]:
        self.task = TASK_MULTI
        subset = self.options.subset or "genre"
        if subset not in JAMENDO_SUBSETS:
            raise LayoutError(f"--subset {subset!r}: the jamendo layout takes {', '.join(JAMENDO_SUBSETS)}")
        data, audio = _jamendo_dirs(self.source)
        own = data / f"autotagging_{subset}.tsv"  # the official per-subset file, when there
        tsv = own if own.is_file() and subset != "all" else data / "autotagging.tsv"
        try:
            tracks = read_jamendo_tsv(tsv, "all" if tsv == own else subset)
            splits = self._official_splits(data, subset)
        except UnicodeDecodeError as err:
            raise LayoutError(f"{printable_path(tsv)}: not UTF-8 text ({err.reason})") from None
        except ValueError as err:
            raise LayoutError(str(err)) from None
        for tr in tracks:
            path = audio / tr.path
            if not path.exists():  # the low-quality download names the same track 14/214.low.mp3
                low = audio / (tr.path.rsplit(".", 1)[0] + ".low.mp3")
                path = low if low.exists() else path
            rel = _rel(path, self.source)
            why = _missing(path, f"{tsv.name} ({tr.track_id})")
            if why is not None:
                yield Skipped(rel, why)
                continue
            yield Track(
                path=path,
                rel=rel,
                label="",
                labels=tuple(sorted(tr.tags)),
                key_hint=tr.track_id,
                track_id=tr.track_id,
                artist=tr.artist_id,
                split=splits.get(tr.track_id),
            )


# --------------------------------------------------------------------------------------------- mtat
#: clips of the distributed MagnaTagATune archive that are empty (0 bytes): skipped by every published
#: pipeline (e.g. the preprocessing of Won et al. 2020, sota-music-tagging-models)
MTAT_EMPTY_CLIPS = frozenset(
    {
        "6/norine_braun-now_and_zen-08-gently-117-146.mp3",
        "8/jacob_heringman-josquin_des_prez_lute_settings-19-gintzler__pater_noster-204-233.mp3",
        "9/american_baroque-dances_and_suites_of_rameau_and_couperin-25-le_petit_rien_xiveme_ordre_couperin-88-117.mp3",
    }
)


@LAYOUTS.register("mtat")
class MTATLayout(Layout):
    """MagnaTagATune (see the module docstring). ``track_id`` is the clip id."""

    name = "mtat"
    priority = 16
    official_split = True

    @classmethod
    def detect(cls, source: Path) -> bool:
        return source.is_dir() and (source / "annotations_final.csv").is_file()

    def scan(self) -> Iterator[Track | Skipped]:
        self.task = TASK_MULTI
        ann_path = self.source / "annotations_final.csv"
        if not ann_path.is_file():
            raise LayoutError(f"{self.source}: no annotations_final.csv (not a MagnaTagATune folder)")
        if self.options.top_tags < 1:
            raise LayoutError(f"--top-tags {self.options.top_tags}: must be at least 1")
        try:
            ann = read_mtat(ann_path, top_n=self.options.top_tags)
        except UnicodeDecodeError as err:
            raise LayoutError(f"{printable_path(ann_path)}: not UTF-8 text ({err.reason})") from None
        except ValueError as err:
            raise LayoutError(str(err)) from None
        audio = self.source / "mp3" if (self.source / "mp3").is_dir() else self.source
        for clip in ann.clips:
            path = audio / clip.path
            rel = _rel(path, self.source)
            if clip.path in MTAT_EMPTY_CLIPS:
                yield Skipped(rel, "a clip known to be empty in the MagnaTagATune archive")
                continue
            why = _missing(path, f"annotations_final.csv (clip {clip.clip_id})")
            if why is not None:
                yield Skipped(rel, why)
                continue
            yield Track(
                path=path,
                rel=rel,
                label="",
                labels=tuple(sorted(clip.tags)),
                key_hint=f"mtat_{clip.clip_id}_{_stem_key(clip.path)}",
                track_id=clip.clip_id,
                split=clip.split,
            )


# --------------------------------------------------------------------------------------------- tags
def load_label_map(path: Path) -> LabelMap:
    """``--label-map FILE`` (raw tags the map does not list are kept); raises :class:`LayoutError` with one
    line when the file is missing, not UTF-8 or malformed."""
    try:
        return LabelMap.load(path, unmapped="keep")
    except OSError as err:
        raise LayoutError(f"--label-map {printable_path(path)}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise LayoutError(
            f"--label-map {printable_path(path)}: not UTF-8 text (byte 0x{err.object[err.start:err.start + 1].hex()} "
            f"at offset {err.start}); save it as UTF-8"
        ) from None
    except Exception as err:  # yaml.YAMLError, csv.Error, ValueError: a malformed map
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LayoutError(f"--label-map {printable_path(path)}: not a valid label map ({first})") from None


@LAYOUTS.register("tags")
class TagsLayout(Layout):
    """A folder of audio files carrying genre tags (see the module docstring). Never detected: name it."""

    name = "tags"
    priority = 1000

    @classmethod
    def detect(cls, source: Path) -> bool:
        return False  # any folder of music would do: the user says so with --layout tags

    def scan(self) -> Iterator[Track | Skipped]:
        self.task = TASK_MULTI
        if not self.source.is_dir():
            raise LayoutError(f"{self.source}: the tags layout needs SOURCE to be a folder")
        lmap = load_label_map(self.options.label_map) if self.options.label_map is not None else None
        found: list[tuple[Path, str, list[str]]] = []  # (path, rel, canonical tags)
        for item in walk_audio(self.source, self.ignored, yield_errors=True):
            if isinstance(item, WalkError):
                yield walk_skip(item, self.source)
                continue
            p = Path(item)
            rel = _rel(p, self.source)
            bad = _dangling(p)
            raw = bad.reason if bad is not None else read_embedded_genres(p)
            if isinstance(raw, str):
                yield Skipped(rel, raw)
                continue
            tags = lmap.apply(raw) if lmap is not None else raw
            if not tags:
                yield Skipped(rel, f"{NO_GENRE} left after --label-map (had {', '.join(raw)})")
                continue
            found.append((p, rel, tags))
        kept_sets, _ = filter_min_count([tags for _, _, tags in found], max(1, self.options.min_count))
        for (p, rel, tags), kept in zip(found, kept_sets):
            if not kept:
                n = self.options.min_count
                yield Skipped(rel, f"{NO_GENRE} carried by {n} or more files (--min-count {n}; had {', '.join(tags)})")
                continue
            yield Track(path=p, rel=rel, label="", labels=tuple(sorted(set(kept))), key_hint=_stem(rel))
