"""MagnaTagATune (Law et al. 2009) annotations: ``annotations_final.csv`` -> top-N tags and the usual split.

Format: tab-separated (despite the name), values usually in double quotes; a header ``clip_id``, 188 tag
columns (``guitar``, ``classical``, ``slow``, ...), ``mp3_path``; one row per clip of 0/1 values, and
``mp3_path`` like ``f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3``: the first
folder (``0``-``9``, ``a``-``f``) is one of 16 parts of the collection.

Tags: the ``top_n`` most frequent over all clips (50 in the literature), ties by column order.

Split: parts ``0``-``b`` train, ``c`` validation, ``d``-``f`` test (12 / 1 / 3 of the 16 parts), the split of
Dieleman & Schrauwen (2014), "End-to-end learning for music audio", ICASSP, reused by Pons et al. (2018)
"End-to-end learning for music audio tagging at scale" / musicnn and most later MTAT results. Some works
(e.g. Lee et al. 2017, Won et al. 2020) also drop clips without any top-50 tag: ``drop_untagged``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MTATAnnotations", "MTATClip", "mtat_split", "read_mtat"]


@dataclass(frozen=True)
class MTATClip:
    """One clip: id, mp3 path relative to the audio root, its top-N tags (most frequent first),
    and its split (``train`` / ``valid`` / ``test``)."""

    clip_id: str
    path: str
    tags: tuple[str, ...]
    split: str


@dataclass(frozen=True)
class MTATAnnotations:
    """``tags``: the kept tags, most frequent first; ``counts``: clips per kept tag; ``clips``: every
    clip (or only the tagged ones with ``drop_untagged``), in file order."""

    tags: tuple[str, ...]
    counts: tuple[int, ...]
    clips: tuple[MTATClip, ...]


def mtat_split(mp3_path: str) -> str:
    """``train`` for parts 0-b, ``valid`` for c, ``test`` for d-f (Dieleman & Schrauwen 2014)."""
    part = mp3_path.strip().lstrip("/")[:1].lower()
    if part and part in "0123456789ab":
        return "train"
    if part == "c":
        return "valid"
    if part and part in "def":
        return "test"
    raise ValueError(f"MTAT mp3_path {mp3_path!r}: expected a first folder 0-9 or a-f")


def read_mtat(path: str | Path, top_n: int | None = 50, drop_untagged: bool = False) -> MTATAnnotations:
    """Read ``annotations_final.csv``; keep the ``top_n`` most frequent tags (None: all 188).

    Raises ValueError when the header lacks ``clip_id`` or ``mp3_path``, a row has another number of
    columns, or a tag cell is not 0/1 (naming file and line).
    """
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quotechar='"')
        header = next(rows, None)
        if not header or header[0] != "clip_id" or header[-1] != "mp3_path":
            raise ValueError(
                f"{path}: not a MagnaTagATune annotations file (header must be clip_id ... mp3_path)"
            )
        names = header[1:-1]
        raw: list[tuple[str, str, list[bool]]] = []
        counts = [0] * len(names)
        for lineno, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{lineno}: {len(row)} columns, the header has {len(header)}")
            if any(v not in ("0", "1") for v in row[1:-1]):
                raise ValueError(f"{path}:{lineno}: tag values must be 0 or 1")
            flags = [v == "1" for v in row[1:-1]]
            counts = [c + b for c, b in zip(counts, flags)]
            raw.append((row[0], row[-1], flags))
    order = sorted(range(len(names)), key=lambda j: (-counts[j], j))
    keep = order if top_n is None else order[:top_n]
    clips = []
    for clip_id, mp3, flags in raw:
        tags = tuple(names[j] for j in keep if flags[j])
        if tags or not drop_untagged:
            clips.append(MTATClip(clip_id, mp3, tags, mtat_split(mp3)))
    return MTATAnnotations(tuple(names[j] for j in keep), tuple(counts[j] for j in keep), tuple(clips))
