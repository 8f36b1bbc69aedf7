"""FMA genre lists (readers only): ``fma_metadata/genres.csv`` and the genre-id lists of ``tracks.csv``.

Format (Defferrard et al. 2017, "FMA: A Dataset for Music Analysis", ISMIR; https://github.com/mdeff/fma):
``genres.csv`` has a header ``genre_id,#tracks,parent,title,top_level`` and one row per genre; ``parent`` is
the id of the parent genre (0: a top-level genre), ``title`` its name (``Rock``, ``Post-Rock``). In
``tracks.csv`` the columns (``track``, ``genres``) and (``track``, ``genres_all``) hold Python-style lists of
genre ids (``[21, 76]``, ``[]``): ``genres`` the genres the artist gave the track, ``genres_all`` those plus
every ancestor of them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FMA_LABEL_COLUMNS", "FmaGenres", "parse_genre_ids", "read_fma_genres"]

#: ``--labels`` choices of the fma layout -> the (group, column) of ``tracks.csv`` they read
FMA_LABEL_COLUMNS = {
    "genre_top": ("track", "genre_top"),  # one genre per track: a single-label set
    "genres": ("track", "genres"),
    "genres_all": ("track", "genres_all"),
}


@dataclass(frozen=True)
class FmaGenres:
    """``title[id]`` and ``parent[id]`` (0: none) of every genre of ``genres.csv``."""

    title: dict[int, str]
    parent: dict[int, int]

    def ancestors(self, gid: int) -> list[int]:
        """The parent, grandparent, ... of ``gid`` (a cycle in a damaged file stops the walk)."""
        out: list[int] = []
        p = self.parent.get(gid, 0)
        while p and p not in out and p != gid:
            out.append(p)
            p = self.parent.get(p, 0)
        return out

    def titles(self, ids: list[int], with_ancestors: bool = False) -> tuple[tuple[str, ...], list[int]]:
        """``(sorted genre titles of ids [and their ancestors], ids genres.csv does not list)``."""
        names: set[str] = set()
        unknown: list[int] = []
        for gid in ids:
            if gid not in self.title:
                unknown.append(gid)
                continue
            names.add(self.title[gid])
            if with_ancestors:
                names.update(self.title[a] for a in self.ancestors(gid) if a in self.title)
        return tuple(sorted(names)), unknown


def read_fma_genres(path: str | Path) -> FmaGenres:
    """Read ``genres.csv``. Raises ValueError naming file and line on a missing column or a non-integer
    id, and UnicodeDecodeError when the file is not UTF-8."""
    path = Path(path)
    title: dict[int, str] = {}
    parent: dict[int, int] = {}
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f)
        fields = [c.strip() for c in rows.fieldnames or []]
        if not {"genre_id", "parent", "title"} <= set(fields):
            raise ValueError(f"{path}: not FMA's genres.csv (needs columns genre_id, parent, title; has {fields})")
        for lineno, raw in enumerate(rows, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            try:
                gid, par = int(row["genre_id"]), int(row["parent"] or 0)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: genre_id / parent must be integers") from None
            title[gid], parent[gid] = row["title"], par
    return FmaGenres(title, parent)


def parse_genre_ids(cell: str) -> list[int]:
    """``"[21, 76]"`` -> ``[21, 76]``; ``""`` or ``"[]"`` -> ``[]``. Raises ValueError on anything else."""
    text = cell.strip()
    if text in ("", "[]"):
        return []
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError(f"genre list {cell!r}: expected [id, id, ...]")
    try:
        return [int(v) for v in text[1:-1].split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"genre list {cell!r}: expected integer genre ids") from None
