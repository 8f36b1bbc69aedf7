"""Million Song Dataset layout: per-track HDF5 analysis files + a genre annotation file -> feature shards.

The MSD ships no audio. Each track is one HDF5 file ``<root>/.../A/B/C/TR<16 chars>.h5`` whose
``analysis`` group holds the Echo Nest segment analysis (segments are onset-delimited, of variable length,
on average ~4 per second)::

    analysis/segments_timbre        (N, 12)  float   MFCC-like timbre coefficients
    analysis/segments_pitches       (N, 12)  float   chroma, each in [0, 1]
    analysis/segments_loudness_max  (N,)     float   dB
    analysis/segments_start         (N,)     float   seconds
    analysis/songs                  compound table, one row: tempo, key, mode, duration, track_id, ...
    metadata/songs                  compound table, one row: artist_id, artist_name, title, song_id, ...

Genre labels come from a separate annotation file (tagtraum CD1 / CD2 / CD2C, top-MAGD, ...): one
``TRACK_ID<TAB>genre[<TAB>minority genre ...]`` line per track, ``#`` comments; the first genre column is
the label (``--labels FILE``).

Each ingested sample is ``<key>.feats.npy`` float16 ``[N, 25]`` = timbre (12) | pitches (12) | loudness_max
(1), one row per segment (:data:`FEATURE_NAMES`), plus the usual ``<key>.json`` with the MSD facts
``artist_id``, ``artist_name``, ``title``, ``song_id``, ``tempo`` (BPM), ``musical_key`` (pitch class), ``mode``,
``time_signature`` and ``loudness`` (dB); ``duration`` is the track's
duration in seconds, ``num_samples`` its segment count, ``artist`` the artist id (splits are grouped by
artist, as MSD has many tracks per artist), ``orig_sample_rate`` the nominal frame rate and ``channels`` the
feature dimension. The audio options of the ingest (``--sample-rate``, ``--trim-silence``,
``--peak-normalize``) do not apply; ``--max-seconds`` keeps the segments that start before it.

The manifest's ``sample_rate`` is :data:`MSD_FRAME_RATE`, a *nominal* segment rate (segments per second),
so the engine's seconds-based settings map to segment counts: ``data.segment_seconds: 30`` is a crop of
120 segments (the real time they span varies with the music). ``feature_dim`` is 25.

Files without a label are filtered (counted in the ingest's warnings); label lines without a file are
reported in ``skipped`` ("listed in labels, no HDF5 file"); unreadable or inconsistent HDF5 files are
skipped with the reason.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from shards.audio import AudioError
from shards.format import FEATS_EXT, META_EXT, encode_feats, encode_meta
from shards.layouts import (
    LAYOUTS,
    DecodeSettings,
    Layout,
    LayoutError,
    Skipped,
    Track,
    WalkError,
    walk_files,
    walk_skip,
)

log = logging.getLogger(__name__)

__all__ = [
    "FEATURE_DIM",
    "FEATURE_NAMES",
    "MSD_FRAME_RATE",
    "MSDLayout",
    "read_label_file",
    "read_msd_features",
    "write_msd_file",
]

#: Nominal segments per second of the Echo Nest analysis: the manifest's ``sample_rate`` of MSD shards.
MSD_FRAME_RATE = 4
#: Columns of a feature row: timbre 0-11, pitches (chroma C..B) 0-11, loudness_max (dB).
FEATURE_NAMES: tuple[str, ...] = (
    *(f"timbre_{i}" for i in range(12)),
    *(f"pitch_{n}" for n in ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")),
    "loudness_max",
)
FEATURE_DIM = len(FEATURE_NAMES)  # 25

_TRACK_ID = re.compile(r"^TR[A-Z0-9]{16}$")
_FILE_NAME = re.compile(r"^TR[A-Za-z0-9]+\.h5$")
_F16_MAX = 65504.0

_ANALYSIS_FIELDS = ("tempo", "key", "mode", "time_signature", "loudness", "duration", "track_id")
_METADATA_FIELDS = ("artist_id", "artist_name", "title", "song_id")


def _is_msd_name(name: str) -> bool:
    return bool(_FILE_NAME.match(name))


# --------------------------------------------------------------------------------------------- labels
def read_label_file(path: Path) -> tuple[dict[str, str], list[Skipped], list[str]]:
    """Parse a genre annotation file: ``({track_id: genre}, malformed lines as Skipped, warnings)``.

    Lines are ``TRACK_ID<TAB>genre[<TAB>more columns]`` (tagtraum CD2 adds minority genres: ignored) or,
    without a tab, ``TRACK_ID genre words``; blank lines and ``#`` comments are ignored. A track listed twice
    keeps its first genre (a warning counts the conflicts).
    """
    labels: dict[str, str] = {}
    bad: list[Skipped] = []
    conflicts = 0
    try:
        fh = open(path, encoding="utf-8-sig", errors="replace")  # noqa: SIM115 -- closed below
    except OSError as err:
        raise LayoutError(f"--labels {path}: cannot read it ({err.strerror or err})") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split(None, 1)
            where = f"{path.name}:{lineno}"
            if len(parts) < 2 or not parts[1]:
                bad.append(Skipped(where, f"malformed label line (no genre column): {line[:60]!r}"))
                continue
            tid, genre = parts[0], parts[1]
            if not _TRACK_ID.match(tid):
                bad.append(Skipped(where, f"malformed label line (not an MSD track id): {tid[:40]!r}"))
                continue
            old = labels.get(tid)
            if old is None:
                labels[tid] = genre
            elif old != genre:
                conflicts += 1
    warnings = []
    if conflicts:
        warnings.append(f"--labels {path}: {conflicts} track(s) listed again with another genre (first kept)")
    return labels, bad, warnings


# --------------------------------------------------------------------------------------------- HDF5
def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.bytes_):
        return bytes(v).decode("utf-8", "replace")
    return str(v)


def _row(f: Any, table: str, fields: tuple[str, ...], path: str) -> dict[str, Any]:
    """First row of the compound dataset ``table`` as ``{field: python value}`` (missing fields: None)."""
    if table not in f:
        raise AudioError(path, f"not an MSD track file: no {table} table")
    ds = f[table]
    names = ds.dtype.names or ()
    if ds.shape == () or ds.shape[0] < 1 or not names:
        raise AudioError(path, f"{table} is empty or not a compound table")
    row = ds[0]
    out: dict[str, Any] = {}
    for name in fields:
        if name not in names:
            out[name] = None
            continue
        v = row[name]
        if isinstance(v, (bytes, np.bytes_, str)):
            out[name] = _text(v)
        elif isinstance(v, np.integer):
            out[name] = int(v)
        elif isinstance(v, np.floating):
            out[name] = float(v) if np.isfinite(v) else None
        else:
            out[name] = v.item() if hasattr(v, "item") else v
    return out


def _segments(f: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32 [N, 25], segment starts float64 [N] in seconds)``; AudioError if unusable."""
    need = {
        "analysis/segments_timbre": 2,
        "analysis/segments_pitches": 2,
        "analysis/segments_loudness_max": 1,
        "analysis/segments_start": 1,
    }
    arrays: dict[str, np.ndarray] = {}
    for name, ndim in need.items():
        if name not in f:
            raise AudioError(path, f"not an MSD track file: no {name}")
        arr = np.asarray(f[name][()])
        if arr.ndim != ndim or (ndim == 2 and arr.shape[1] != 12):
            want = "(N, 12)" if ndim == 2 else "(N,)"
            raise AudioError(path, f"{name} has shape {arr.shape}, expected {want}")
        arrays[name] = arr
    n = {a.shape[0] for a in arrays.values()}
    if len(n) != 1:
        detail = ", ".join(f"{k.rsplit('/', 1)[1]}={v.shape[0]}" for k, v in arrays.items())
        raise AudioError(path, f"segment arrays disagree in length ({detail})")
    if n == {0}:
        raise AudioError(path, "no segments (empty analysis)")
    feats = np.concatenate(
        [
            arrays["analysis/segments_timbre"].astype(np.float32),
            arrays["analysis/segments_pitches"].astype(np.float32),
            arrays["analysis/segments_loudness_max"].astype(np.float32)[:, None],
        ],
        axis=1,
    )  # (N, 25)
    if not np.isfinite(feats).all():
        raise AudioError(path, "non-finite values (NaN/inf) in the segment features")
    if np.abs(feats).max() > _F16_MAX:
        raise AudioError(
            path, f"segment feature values beyond float16 range (max |x| {np.abs(feats).max():.3g})"
        )
    return feats, arrays["analysis/segments_start"].astype(np.float64)


def _open(path: str) -> Any:
    import h5py  # imported here: only MSD ingests pay for it

    if not os.path.isfile(path):
        raise AudioError(path, "missing file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise AudioError(path, f"not a readable HDF5 file ({err})") from None


def read_msd_features(
    path: str | os.PathLike[str], max_seconds: float | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """One MSD track file -> ``(features float32 [N, 25], facts)``.

    ``facts``: ``track_id``, ``artist_id``, ``artist_name``, ``title``, ``song_id``, ``tempo`` (BPM),
    ``key``, ``mode``, ``time_signature``, ``loudness`` (dB), ``duration`` (s), ``segments`` (N kept).
    ``max_seconds`` keeps the segments that start before it. Raises ``AudioError(path, reason)``.
    """
    p = os.fspath(path)
    with _open(p) as f:
        try:
            feats, starts = _segments(f, p)
            song = _row(f, "analysis/songs", _ANALYSIS_FIELDS, p)
            meta = _row(f, "metadata/songs", _METADATA_FIELDS, p)
        except (KeyError, ValueError, TypeError, OSError) as err:  # h5py raises these on damaged objects
            raise AudioError(p, f"damaged HDF5 content ({type(err).__name__}: {err})") from None
    stem = Path(p).name.rsplit(".", 1)[0]
    if song["track_id"] and song["track_id"] != stem:
        raise AudioError(p, f"analysis/songs track_id {song['track_id']!r} does not match the file name")
    duration = song["duration"] if song["duration"] and song["duration"] > 0 else float(starts[-1])
    if max_seconds is not None:
        keep = int(np.searchsorted(starts, max_seconds, side="left"))
        if keep == 0:
            raise AudioError(p, f"no segment starts before --max-seconds {max_seconds}")
        feats, duration = feats[:keep], min(duration, float(max_seconds))
    facts = {
        **{k: song[k] for k in ("tempo", "key", "mode", "time_signature", "loudness")},
        **meta,
        "track_id": stem,
        "duration": float(duration),
        "segments": int(feats.shape[0]),
    }
    return feats, facts


# --------------------------------------------------------------------------------------------- layout
def _has_msd_file(root: Path, max_depth: int = 5, budget: int = 400) -> bool:
    """A bounded look for a ``TR*.h5`` file (MSD trees are ``[data/]A/B/C/TR*.h5``; never walk 1M files)."""
    seen = 0
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        d, depth = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for e in entries:
            seen += 1
            if seen > budget:
                return False
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=True):
                if depth < max_depth:
                    stack.append((Path(e.path), depth + 1))
            elif _is_msd_name(e.name):
                return True
    return False


@LAYOUTS.register("msd")
class MSDLayout(Layout):
    """Million Song Dataset tree (``**/TR*.h5``) + ``--labels FILE`` -> feature shards ``[N, 25]``.

    See the module docstring for the features, the metadata and the nominal frame rate.
    """

    name = "msd"
    priority = 40  # after gtzan/fma/csv, before the folder fallback
    kind = "features"
    frame_rate: ClassVar[int] = MSD_FRAME_RATE  # the manifest's sample_rate (nominal segments / s)
    feature_dim: ClassVar[int] = FEATURE_DIM  # the manifest's feature_dim

    @classmethod
    def detect(cls, source: Path) -> bool:
        return source.is_dir() and _has_msd_file(source)

    def scan(self) -> Iterator[Track | Skipped]:
        labels_path = self.options.labels
        if not labels_path:
            raise LayoutError(
                "the msd layout needs --labels FILE: a genre annotation file with TRACK_ID<TAB>genre lines "
                "(tagtraum CD1/CD2/CD2C, top-MAGD, ...); the MSD HDF5 files carry no genre"
            )
        labels_path = Path(labels_path)
        if not labels_path.is_file():
            raise LayoutError(f"--labels {labels_path}: no such file")
        if not self.source.is_dir():
            raise LayoutError(
                f"{self.source}: the msd layout needs SOURCE to be the MSD folder (TR*.h5 files)"
            )
        labels, bad_lines, warnings = read_label_file(labels_path)
        self.warnings.extend(warnings)
        if not labels:
            raise LayoutError(f"--labels {labels_path}: no TRACK_ID<TAB>genre line in it")
        yield from bad_lines

        found: dict[str, str] = {}  # track id -> rel path of the first file
        unlabelled = 0
        for p in walk_files(self.source, yield_errors=True):
            if isinstance(p, WalkError):
                yield walk_skip(p, self.source)
                continue
            if not _is_msd_name(p.name):
                continue
            rel = p.relative_to(self.source).as_posix()
            tid = p.name[:-3]
            if tid in found:
                yield Skipped(rel, f"duplicate of {found[tid]} (same track id)")
                continue
            found[tid] = rel
            genre = labels.get(tid)
            if genre is None:
                unlabelled += 1
                continue
            if p.is_symlink() and not p.exists():
                yield Skipped(rel, f"dangling symlink (points to {os.readlink(p)})")
                continue
            yield Track(path=p, rel=rel, label=genre, key_hint=tid, track_id=tid)
        if not found:
            raise LayoutError(f"{self.source}: no TR*.h5 track files under it (is this the MSD data folder?)")
        if unlabelled:
            self.warnings.append(
                f"{unlabelled} of {len(found)} HDF5 track files have no label in {labels_path.name} "
                "and are not ingested (filtered)"
            )
        for tid in labels:
            if tid not in found:
                yield Skipped(tid, "listed in labels, no HDF5 file")

    @classmethod
    def probe_file(cls, path: str) -> tuple[int, int, int, dict[str, Any]]:
        """``(MSD_FRAME_RATE, FEATURE_DIM, segments, {"artist": artist_id})``: the frame count sizes shards
        (``2 * frames * dim`` bytes); the artist id groups splits. Raises ``AudioError``."""
        with _open(path) as f:
            try:
                feats, _ = _segments(f, path)
                meta = _row(f, "metadata/songs", ("artist_id",), path)
            except (KeyError, ValueError, TypeError, OSError) as err:
                raise AudioError(path, f"damaged HDF5 content ({type(err).__name__}: {err})") from None
        return MSD_FRAME_RATE, FEATURE_DIM, int(feats.shape[0]), {"artist": meta["artist_id"] or None}

    @classmethod
    def decode_file(cls, path: str, settings: DecodeSettings) -> tuple[dict[str, bytes], int, float]:
        """``({"feats.npy": float16 [N, 25], "json": MSD facts}, N, duration s)``; raises ``AudioError``."""
        feats, facts = read_msd_features(path, settings.max_seconds)
        extra = {
            "artist_id": facts["artist_id"],
            "artist_name": facts["artist_name"],
            "title": facts["title"],
            "song_id": facts["song_id"],
            "tempo": facts["tempo"],
            "musical_key": facts["key"],  # pitch class 0 = C .. 11 = B ("key" is the sample key)
            "mode": facts["mode"],
            "time_signature": facts["time_signature"],
            "loudness": facts["loudness"],
        }
        return (
            {FEATS_EXT: encode_feats(feats), META_EXT: encode_meta(extra)},
            int(feats.shape[0]),
            facts["duration"],
        )


# --------------------------------------------------------------------------------------------- writing
def write_msd_file(
    path: str | os.PathLike[str],
    timbre: np.ndarray,
    pitches: np.ndarray,
    loudness_max: np.ndarray,
    starts: np.ndarray,
    *,
    artist_id: str,
    artist_name: str = "",
    title: str = "",
    song_id: str = "",
    tempo: float = 120.0,
    key: int = 0,
    mode: int = 1,
    time_signature: int = 4,
    loudness: float = -10.0,
    duration: float | None = None,
) -> Path:
    """Write one track file in the MSD HDF5 layout (the groups, datasets and compound fields of the real
    files that this module reads, plus a few neighbours); the track id is the file name's stem.

    For tests, and to package another segment analysis (``[N, 12]`` timbre / chroma, ``[N]`` loudness in dB
    and start times in seconds) so that the ``msd`` layout ingests it.
    """
    import h5py

    p = Path(path)
    track_id = p.name.rsplit(".", 1)[0]
    timbre = np.asarray(timbre, dtype=np.float64)
    n = timbre.shape[0]
    starts = np.asarray(starts, dtype=np.float64)
    if duration is None:
        duration = float(starts[-1] + 0.5) if n else 0.0
    analysis = np.zeros(
        1,
        dtype=[
            ("analysis_sample_rate", "<i4"), ("audio_md5", "S32"), ("danceability", "<f8"),
            ("duration", "<f8"), ("end_of_fade_in", "<f8"), ("energy", "<f8"),
            ("idx_segments_start", "<i4"), ("key", "<i4"), ("key_confidence", "<f8"),
            ("loudness", "<f8"), ("mode", "<i4"), ("mode_confidence", "<f8"),
            ("start_of_fade_out", "<f8"), ("tempo", "<f8"), ("time_signature", "<i4"),
            ("time_signature_confidence", "<f8"), ("track_id", "S32"),
        ],
    )  # fmt: skip
    analysis[0] = (22050, b"0" * 32, 0.0, duration, 0.0, 0.0, 0, key, 0.5, loudness, mode, 0.5,
                   duration, tempo, time_signature, 0.5, track_id.encode())  # fmt: skip
    metadata = np.zeros(
        1,
        dtype=[
            ("analyzer_version", "S32"), ("artist_7digitalid", "<i4"), ("artist_familiarity", "<f8"),
            ("artist_hotttnesss", "<f8"), ("artist_id", "S32"), ("artist_latitude", "<f8"),
            ("artist_location", "S1024"), ("artist_longitude", "<f8"), ("artist_mbid", "S40"),
            ("artist_name", "S1024"), ("genre", "S1024"), ("release", "S1024"),
            ("song_hotttnesss", "<f8"), ("song_id", "S32"), ("title", "S1024"),
        ],
    )  # fmt: skip
    metadata[0] = (b"", 0, 0.5, 0.5, artist_id.encode(), np.nan, b"", np.nan, b"", artist_name.encode(),
                   b"", b"", 0.5, song_id.encode(), title.encode())  # fmt: skip
    p.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(p, "w") as f:
        a = f.create_group("analysis")
        a.create_dataset("songs", data=analysis)
        a.create_dataset("segments_timbre", data=timbre)
        a.create_dataset("segments_pitches", data=np.asarray(pitches, dtype=np.float64))
        a.create_dataset("segments_loudness_max", data=np.asarray(loudness_max, dtype=np.float64))
        a.create_dataset("segments_loudness_start", data=np.asarray(loudness_max, dtype=np.float64) - 10)
        a.create_dataset("segments_confidence", data=np.full(n, 0.5))
        a.create_dataset("segments_start", data=starts)
        m = f.create_group("metadata")
        m.create_dataset("songs", data=metadata)
        mb = f.create_group("musicbrainz")
        mb.create_dataset("songs", data=np.zeros(1, dtype=[("idx_artist_mbtags", "<i4"), ("year", "<i4")]))
    return p
