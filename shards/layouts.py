"""Collection layouts: find the tracks of a music collection and their labels.

A layout is a class registered in :data:`LAYOUTS` with

- ``name`` (its registry name) and ``priority`` (lower is tried first by ``--layout auto``),
- ``detect(source) -> bool``: a cheap look at SOURCE that says whether this layout fits,
- ``__init__(source, options)`` and ``scan() -> Iterator[Track | Skipped]``: every candidate track, or a
  record of why a listed/found file cannot become one.

``scan`` only enumerates (stat, and the first 4 KiB of files whose name is not an audio name; no decoding);
decodability is checked later by the ingest. Every file a layout walks past without making it a track or a
skip is counted in its ``ignored`` (:func:`shards.audio.ignored_key` -> count), for the manifest. Adding a layout
(e.g. ``msd`` over HDF5 feature files) is one class with ``@LAYOUTS.register("msd")`` in its own module plus
one import line in ``shards/__init__.py``, which registers every layout.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from registry import Registry
from shards.audio import AUDIO_EXTENSIONS, ignored_key, is_audio_file
from shards.outputs import InputError, decode_utf8, describe_os_error, is_utf8_path, printable_path

log = logging.getLogger(__name__)


@dataclass
class Track:
    """One candidate track found by a layout (nothing decoded yet)."""

    path: Path  # the file to decode (absolute, symlinks not resolved)
    rel: str  # path relative to SOURCE, posix separators (or as written in a CSV)
    label: str
    key_hint: str  # basis of the sample key (sanitized and de-duplicated by the ingest)
    track_id: str | None = None
    artist: str | None = None
    split: str | None = None  # official split of the collection, if it has one ("train"|"valid"|"test")
    fold: int | None = None


@dataclass
class Skipped:
    """A file (or listed track) that will not be ingested, with a short specific reason."""

    path: str
    reason: str


@dataclass
class LayoutOptions:
    subset: str = "small"  # fma: small | medium | large | full
    labels: Path | None = None  # msd: genre annotation file (TRACK_ID<TAB>genre lines)


@dataclass(frozen=True)
class DecodeSettings:
    """The ingest's decode options, as every worker process gets them with its tasks (and as a non-audio
    layout's :meth:`Layout.decode_file` gets them)."""

    layout: str  # registry name of the collection layout
    sample_rate: int = 22050  # Hz of the stored audio
    max_seconds: float | None = None  # keep at most this many seconds from the start of each track
    trim_silence: float | None = None  # dB below peak; None = no trimming
    peak_normalize: bool = False


class LayoutError(ValueError):
    """SOURCE does not fit the layout (a configuration error: fail fast)."""


class Layout:
    """Base class of a collection layout; see the module docstring for the protocol.

    Audio layouts only find files (the ingest decodes them with :mod:`shards.audio`). A layout of another
    ``kind`` (e.g. ``"features"`` for MSD HDF5 files) also overrides :meth:`probe_file` and
    :meth:`decode_file`; they run in the ingest's worker processes and the manifest gets its ``kind``.
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 100
    kind: ClassVar[str] = "audio"  # the manifest's "kind" ("audio" | "features")
    frame_rate: ClassVar[int] = 0  # feature kinds: nominal frames / s, the manifest's sample_rate (0: --sample-rate)
    feature_dim: ClassVar[int] = 0  # feature kinds: D of the [frames, D] members, the manifest's feature_dim (0: none)

    @classmethod
    def probe_file(cls, path: str) -> tuple[int, int, int]:
        """Non-audio kinds: ``(rate, channels, frames)`` of a file (header only; any consistent units
        for features, used to size shards); raise ``shards.audio.AudioError(path, reason)`` if unusable."""
        raise NotImplementedError(f"layout {cls.name!r} of kind {cls.kind!r} must implement probe_file")

    @classmethod
    def decode_file(cls, path: str, settings: DecodeSettings) -> tuple[dict[str, bytes], int, float]:
        """Non-audio kinds: ``({ext: bytes} tar members, num_samples or frames, seconds)``; raise
        ``AudioError`` to skip the file with a reason. ``settings``: the ingest's decode options."""
        raise NotImplementedError(f"layout {cls.name!r} of kind {cls.kind!r} must implement decode_file")

    def __init__(self, source: Path, options: LayoutOptions | None = None) -> None:
        self.source = Path(source)
        self.options = options or LayoutOptions()
        self.warnings: list[str] = []
        self.ignored: Counter[str] = Counter()  # non-audio files scan() walked past, by ignored_key

    @classmethod
    def detect(cls, source: Path) -> bool:
        raise NotImplementedError

    def scan(self) -> Iterator[Track | Skipped]:
        raise NotImplementedError


LAYOUTS: Registry[type[Layout]] = Registry("layout")


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _is_hidden(name: str) -> bool:
    # covers AppleDouble "._x" and ".DS_Store"
    return name.startswith(".")


@dataclass(frozen=True)
class WalkError:
    """A folder the walk met but could not list (``path``: as the walk names it, ``reason``: one line)."""

    path: str
    reason: str


def _walk_error(path: str, err: OSError) -> WalkError:
    problem = describe_os_error(err, path).split(": ", 1)[-1].split(";", 1)[0]
    return WalkError(path, f"cannot read this folder ({problem}): the files in it are not included")


def walk_files(root: Path, *, yield_errors: bool = False) -> Iterator[Path | WalkError]:
    """Every non-hidden file under ``root`` in sorted order, following directory symlinks (loops cut).

    Dangling symlinks are yielded too (the caller reports them); hidden files and directories are not.
    ``yield_errors``: see :func:`walk_paths` (only then may a :class:`WalkError` come).
    """
    for p in walk_paths(root, yield_errors=yield_errors):
        yield p if isinstance(p, WalkError) else Path(p)


def walk_paths(
    root: str | os.PathLike[str],
    *,
    seen: set[tuple[int, int]] | None = None,
    file_dirs: Callable[[str], bool] | None = None,
    hidden_files: bool = False,
    yield_errors: bool = False,
) -> Iterator[str | WalkError]:
    """:func:`walk_files` as strings: ``root`` as given joined with the entry names (``./a`` stays ``./a/x``).

    Lazy per folder (a folder is listed and sorted when the walk reaches it). ``seen`` holds the (device,
    inode) of the folders walked; pass one set to several calls to walk a folder named twice once.
    ``file_dirs(name)`` True yields a directory as a file instead of entering it (``engine classify``: a
    folder named ``x.wav`` gets its own error line). ``hidden_files`` also yields hidden files
    (``.DS_Store``, ``._x.m4a``) so that a caller can count them; hidden folders are never entered.

    A folder that cannot be listed (permission denied, I/O error) is logged and passed over; with
    ``yield_errors`` it is also yielded, in walk order, as a :class:`WalkError` so that the caller records
    it (the ingest's ``skipped``, an error line of ``classify``). Names that are not valid UTF-8 come as the
    file system gives them (surrogate escapes; :func:`shards.outputs.printable_path` shows them).
    """
    seen = set() if seen is None else seen

    def rec(d: str) -> Iterator[str | WalkError]:
        try:
            st = os.stat(d)
        except OSError as err:
            if yield_errors and os.path.lexists(d):
                yield _walk_error(d, err)
            return
        ident = (st.st_dev, st.st_ino)
        if ident in seen:  # a symlink loop or a directory linked twice
            return
        seen.add(ident)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as err:
            log.warning("cannot list %s: %s", printable_path(d), err.strerror or err)
            if yield_errors:
                yield _walk_error(d, err)
            return
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:  # e.g. permission denied on the link's target: report it as a file
                is_dir = False
            if _is_hidden(e.name):
                if hidden_files and not is_dir:
                    yield e.path
                continue
            if is_dir and not (file_dirs is not None and file_dirs(e.name)):
                yield from rec(e.path)
            else:
                yield e.path

    yield from rec(os.fspath(root))


def walk_audio(
    root: str | os.PathLike[str],
    ignored: Counter[str] | None = None,
    *,
    seen: set[tuple[int, int]] | None = None,
    file_dirs: Callable[[str], bool] | None = None,
    yield_errors: bool = False,
) -> Iterator[str | WalkError]:
    """The files under ``root`` whose name or content says audio (:func:`shards.audio.is_audio_file`), in
    :func:`walk_paths` order; every other file, hidden ones included, is counted in ``ignored`` under its
    :func:`shards.audio.ignored_key`. A dangling symlink or a ``file_dirs`` folder with an audio name is
    yielded too (the caller reports it); hidden folders are neither entered nor counted. ``yield_errors``:
    folders that cannot be listed come as :class:`WalkError` (see :func:`walk_paths`)."""
    for p in walk_paths(root, seen=seen, file_dirs=file_dirs, hidden_files=True, yield_errors=yield_errors):
        if isinstance(p, WalkError) or is_audio_file(p):
            yield p
        elif ignored is not None:
            ignored[ignored_key(p)] += 1


def _stem(rel: str) -> str:
    """``rel`` without an audio extension (a file that is audio by content keeps its whole name)."""
    base, ext = os.path.splitext(rel)
    return base if ext.lower() in AUDIO_EXTENSIONS else rel


def walk_skip(err: WalkError, root: Path) -> Skipped:
    """A folder the walk could not list, as a skip of the scan (path relative to ``root``)."""
    return Skipped(_rel(Path(err.path), root), err.reason)


def _dangling(p: Path) -> Skipped | None:
    if p.is_symlink() and not p.exists():
        return Skipped(str(p), f"dangling symlink (points to {os.readlink(p)})")
    return None


# --------------------------------------------------------------------------------------------- folder
@LAYOUTS.register("folder")
class FolderLayout(Layout):
    """``SOURCE/<label>/**/<file>.<audio ext>``: the label is the first directory under SOURCE."""

    name = "folder"
    priority = 1000  # the fallback

    @classmethod
    def detect(cls, source: Path) -> bool:
        return source.is_dir()

    def scan(self) -> Iterator[Track | Skipped]:
        root = self.source
        for found in walk_audio(root, self.ignored, yield_errors=True):
            if isinstance(found, WalkError):
                yield walk_skip(found, root)
                continue
            p = Path(found)
            rel = _rel(p, root)
            bad = _dangling(p)
            if bad is not None:
                yield Skipped(rel, bad.reason)
                continue
            parts = rel.split("/")
            if len(parts) < 2:
                yield Skipped(rel, "no label: audio file directly under SOURCE (put it in a <label>/ folder)")
                continue
            yield Track(path=p, rel=rel, label=parts[0], key_hint=_stem(rel))


# --------------------------------------------------------------------------------------------- gtzan
_GTZAN_NAME = re.compile(r"^(?P<genre>[^/.]+)\.(?P<num>\d{5})\.[A-Za-z0-9]+$")


def _gtzan_root(source: Path) -> Path | None:
    """The folder holding ``<genre>/<genre>.000NN.wav`` (SOURCE, or genres_original/ or genres/ in it).

    A folder that cannot be listed is passed over here (the scan's walk reports it)."""
    for cand in (
        source / "genres_original",
        source / "genres",
        source / "Data" / "genres_original",
        source,
    ):
        if not cand.is_dir():
            continue
        try:
            subs = sorted(cand.iterdir())
        except OSError:
            continue
        for sub in subs:
            if not sub.is_dir() or _is_hidden(sub.name):
                continue
            try:
                names = [f.name for f in sub.iterdir()]
            except OSError:
                continue
            for name in names:
                m = _GTZAN_NAME.match(name)
                if m and m.group("genre") == sub.name:
                    return cand
    return None


@LAYOUTS.register("gtzan")
class GTZANLayout(Layout):
    """GTZAN: ``genres_original/<genre>/<genre>.000NN.wav`` (or ``genres/``, or SOURCE = that folder).

    ``images_original/``, the features CSVs and every other non-audio file under SOURCE are counted in
    ``ignored``; an audio file outside the genre folders is skipped with the reason. ``track_id`` is
    ``<genre>.000NN``; :func:`gtzan_list_name` gives the name used by the fault-filtered split lists.
    """

    name = "gtzan"
    priority = 10

    @classmethod
    def detect(cls, source: Path) -> bool:
        return source.is_dir() and _gtzan_root(source) is not None

    def scan(self) -> Iterator[Track | Skipped]:
        root = _gtzan_root(self.source)
        if root is None:
            raise LayoutError(
                f"{self.source}: not a GTZAN tree (expected genres_original/<genre>/<genre>.000NN.wav)"
            )
        genres = {d.name for d in root.iterdir() if d.is_dir() and not _is_hidden(d.name)}
        where = _rel(root, self.source) if root != self.source else "SOURCE"
        for found in walk_audio(self.source, self.ignored, yield_errors=True):
            if isinstance(found, WalkError):
                yield walk_skip(found, self.source)
                continue
            p = Path(found)
            rel = _rel(p, self.source)
            try:
                genre = p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None
            except ValueError:  # outside genres_original/
                genre = None
            if genre not in genres:
                yield Skipped(rel, f"not in a genre folder ({where}/<genre>/): not a GTZAN track")
                continue
            bad = _dangling(p)
            if bad is not None:
                yield Skipped(rel, bad.reason)
                continue
            stem = _stem(p.name)
            yield Track(path=p, rel=rel, label=genre, key_hint=stem, track_id=stem)


def gtzan_list_name(track: Track) -> str:
    """``blues/blues.00012.wav``: how the fault-filtered split lists name a track."""
    return f"{track.label}/{track.path.name}"


# --------------------------------------------------------------------------------------------- fma
FMA_SUBSETS = ("small", "medium", "large", "full")
_FMA_SPLITS = {"training": "train", "validation": "valid", "test": "test"}


def read_fma_tracks(csv_path: Path) -> tuple[list[tuple[str, str]], Iterator[list[str]]]:
    """Parse FMA's ``tracks.csv`` header: ``([(group, column), ...], data rows)``.

    The file has three header rows: the top-level group (``album``, ``artist``, ``set``, ``track``), the
    column name, and a row starting with ``track_id``. Fields are real CSV (quoted, with commas and
    newlines inside), so only the csv module may split them.
    """
    fh = open(csv_path, newline="", encoding="utf-8")  # noqa: SIM115 -- closed by the generator
    reader = csv.reader(fh)
    try:
        groups = next(reader)
        cols = next(reader)
        third = next(reader)
    except StopIteration:
        fh.close()
        raise LayoutError(f"{csv_path}: fewer than three header rows; not FMA's tracks.csv") from None
    except UnicodeDecodeError as err:
        fh.close()
        raise _not_utf8(csv_path, err, reader.line_num) from None
    if not third or third[0] != "track_id":
        fh.close()
        raise LayoutError(f"{csv_path}: third header row must start with 'track_id' (got {third[:1]})")
    header = [(g.strip(), c.strip()) for g, c in zip(groups, cols)]

    def rows() -> Iterator[list[str]]:
        with fh:
            try:
                yield from reader
            except UnicodeDecodeError as err:
                raise _not_utf8(csv_path, err, reader.line_num) from None

    return header, rows()


def _not_utf8(path: Path, err: UnicodeDecodeError, line: int) -> LayoutError:
    """A streamed CSV that is not UTF-8 (the offset of a streamed read is not the file's: name the line)."""
    return LayoutError(
        f"{printable_path(path)}: not UTF-8 text (byte 0x{err.object[err.start:err.start + 1].hex()} after "
        f"line {line}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


@LAYOUTS.register("fma")
class FMALayout(Layout):
    """Free Music Archive: ``fma_metadata/tracks.csv`` + ``fma_<subset>/<3-digit>/<6-digit>.mp3``.

    Labels from (track, genre_top); official split from (set, split); subset from (set, subset) with
    small ⊂ medium ⊂ large ⊂ full; artist from (artist, id). Under ``fma_<subset>/``, non-audio files
    (README.txt, checksums) are counted in ``ignored`` and an audio file no row of the subset names is
    skipped with the reason.
    """

    name = "fma"
    priority = 20

    @classmethod
    def detect(cls, source: Path) -> bool:
        return (source / "fma_metadata" / "tracks.csv").is_file()

    def scan(self) -> Iterator[Track | Skipped]:
        subset = self.options.subset
        if subset not in FMA_SUBSETS:
            raise LayoutError(f"unknown FMA subset {subset!r}; valid: {', '.join(FMA_SUBSETS)}")
        csv_path = self.source / "fma_metadata" / "tracks.csv"
        if not csv_path.is_file():
            raise LayoutError(f"{self.source}: no fma_metadata/tracks.csv")
        audio_dir = self.source / f"fma_{subset}"
        if not audio_dir.is_dir():
            raise LayoutError(f"{self.source}: no fma_{subset}/ audio folder for --subset {subset}")
        header, rows = read_fma_tracks(csv_path)
        need = {
            "genre": ("track", "genre_top"),
            "split": ("set", "split"),
            "subset": ("set", "subset"),
            "artist": ("artist", "id"),
        }
        idx: dict[str, int] = {}
        for k, col in need.items():
            if col not in header:
                raise LayoutError(f"{csv_path}: no column {col} in the header")
            idx[k] = header.index(col)
        rank = FMA_SUBSETS.index(subset)
        named: set[str] = set()  # rel paths the subset's rows name
        for row in rows:
            if not row or not row[0].strip():
                continue
            try:
                tid = int(row[0])
            except ValueError:
                self.warnings.append(f"{csv_path}: row with non-integer track_id {row[0]!r} ignored")
                continue

            def get(k: str, row: list[str] = row) -> str:
                return row[idx[k]].strip() if idx[k] < len(row) else ""

            track_subset = get("subset")
            if subset != "full" and (
                track_subset not in FMA_SUBSETS or FMA_SUBSETS.index(track_subset) > rank
            ):
                continue  # another subset: filtered out silently
            name = f"{tid:06d}"
            rel = f"fma_{subset}/{name[:3]}/{name}.mp3"
            named.add(rel)
            genre = get("genre")
            if not genre:
                yield Skipped(rel, "no genre_top")
                continue
            artist = get("artist") or None
            split = _FMA_SPLITS.get(get("split"))
            yield Track(
                path=self.source / rel,
                rel=rel,
                label=genre,
                key_hint=f"fma_{name}",
                track_id=str(tid),
                artist=artist,
                split=split,
            )
        for found in walk_audio(audio_dir, self.ignored, yield_errors=True):
            if isinstance(found, WalkError):
                yield walk_skip(found, self.source)
                continue
            rel = _rel(Path(found), self.source)
            if rel not in named:
                yield Skipped(rel, f"not a track of --subset {subset} in fma_metadata/tracks.csv")


# --------------------------------------------------------------------------------------------- csv
@LAYOUTS.register("csv")
class CSVLayout(Layout):
    """A CSV file with columns ``path,label`` and optional ``split``, ``artist``, ``track_id``, ``fold``.

    Paths are relative to the CSV's folder, or absolute. ``split`` accepts train/valid/test (and
    training/validation).
    """

    name = "csv"
    priority = 30
    _SPLIT_NAMES: ClassVar[dict[str, str]] = {
        "train": "train",
        "training": "train",
        "valid": "valid",
        "validation": "valid",
        "val": "valid",
        "test": "test",
    }

    @classmethod
    def detect(cls, source: Path) -> bool:
        return source.is_file() and source.suffix.lower() == ".csv"

    def scan(self) -> Iterator[Track | Skipped]:
        if not self.source.is_file():
            raise LayoutError(f"{self.source}: the csv layout needs SOURCE to be a .csv file")
        try:
            text = decode_utf8(self.source.read_bytes(), self.source)
        except InputError as err:
            raise LayoutError(str(err)) from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = [f.strip() for f in (reader.fieldnames or [])]
        missing = {"path", "label"} - set(fields)
        if missing:
            raise LayoutError(f"{self.source}: missing column(s) {sorted(missing)} (has {fields})")
        items = [(lineno, self._row(lineno, raw)) for lineno, raw in enumerate(reader, start=2)]
        conflicts = self._label_conflicts(items)
        reported: set[str] = set()  # a conflicting row listed twice under one name is one skip
        for _, item in items:
            reason = conflicts.get(os.path.normpath(item.path)) if isinstance(item, Track) else None
            if reason is None:
                yield item
            elif item.rel not in reported:
                reported.add(item.rel)
                yield Skipped(item.rel, reason)

    def _label_conflicts(self, items: list[tuple[int, Track | Skipped]]) -> dict[str, str]:
        """``{normalised path: skip reason}`` of the files listed on several rows with different labels:
        none of those rows is ingested (which label is right is the user's call, not the ingest's)."""
        rows: dict[str, list[tuple[int, str]]] = {}
        for lineno, item in items:
            if isinstance(item, Track):
                rows.setdefault(os.path.normpath(item.path), []).append((lineno, item.label))
        out: dict[str, str] = {}
        for path, listed in rows.items():
            if len({label for _, label in listed}) > 1:
                where = ", ".join(f"{label!r} on line {lineno}" for lineno, label in listed)
                out[path] = (
                    f"conflicting labels: listed in {self.source.name} as {where}; "
                    "keep one row per file to ingest it"
                )
        return out

    def _row(self, lineno: int, raw: dict[str | None, str | None]) -> Track | Skipped:
        """One CSV row (``lineno``: 1-based, the header is line 1) as a track, or why it cannot be one."""
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        path_s, label = row.get("path", ""), row.get("label", "")
        if not path_s:
            return Skipped(f"{self.source.name}:{lineno}", "empty path")
        if not label:
            return Skipped(path_s, "no label")
        p = Path(path_s)
        p = p if p.is_absolute() else self.source.parent / p
        bad = _dangling(p)
        if bad is not None:
            return Skipped(path_s, bad.reason)
        split = None
        if row.get("split"):
            split = self._SPLIT_NAMES.get(row["split"].lower())
            if split is None:
                return Skipped(path_s, f"unknown split {row['split']!r} (train/valid/test)")
        fold = None
        if row.get("fold"):
            try:
                fold = int(row["fold"])
            except ValueError:
                return Skipped(path_s, f"fold {row['fold']!r} is not an integer")
        return Track(
            path=p,
            rel=path_s,
            label=label,
            key_hint=row.get("track_id") or path_s.rsplit(".", 1)[0],
            track_id=row.get("track_id") or None,
            artist=row.get("artist") or None,
            split=split,
            fold=fold,
        )


# --------------------------------------------------------------------------------------------- lookup
def detect_layout(source: Path) -> str:
    """The first registered layout (by priority) whose ``detect`` accepts SOURCE."""
    for name in sorted(LAYOUTS.names(), key=lambda n: (LAYOUTS.get(n).priority, n)):
        if LAYOUTS.get(name).detect(source):
            return name
    raise LayoutError(f"{source}: no layout recognises it (valid: {', '.join(LAYOUTS.names())})")


_NOT_UTF8_NAME = (
    "file name is not valid UTF-8 (its bad bytes are shown as \\xNN): rename it to UTF-8 to ingest it "
    "(e.g. convmv -f latin1 -t utf-8 -r --notest SOURCE)"
)


@dataclass
class ScanResult:
    layout: str
    tracks: list[Track] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)  # non-audio files walked past, by ignored_key


def scan_source(source: Path, layout: str = "auto", options: LayoutOptions | None = None) -> ScanResult:
    """Resolve ``layout`` (``auto`` detects) and collect its tracks and skips."""
    if layout == "auto":
        layout = detect_layout(source)
    cls = LAYOUTS.get(layout)
    inst = cls(source, options)
    res = ScanResult(layout=layout)
    for item in inst.scan():
        if isinstance(item, Track) and not (is_utf8_path(item.rel) and is_utf8_path(item.path)):
            item = Skipped(item.rel, _NOT_UTF8_NAME)
        if isinstance(item, Skipped):
            # shown with \xNN escapes: the manifest, the plan and the summary are UTF-8
            res.skipped.append(Skipped(printable_path(item.path), item.reason))
        else:
            res.tracks.append(item)
    res.warnings.extend(inst.warnings)
    res.ignored = dict(sorted((printable_path(k), n) for k, n in inst.ignored.items()))
    return res

