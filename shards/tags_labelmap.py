"""Raw tags -> canonical tags: a many-to-one map read from YAML or CSV, and a minimum-count filter.

File formats (matching is case-insensitive and ignores surrounding spaces; the canonical names are kept
as written):

- YAML: a mapping ``raw: canonical``; ``raw:`` with an empty or null value (``~``, ``null``, ``""``) drops
  the raw tag. Example::

      Hip-Hop: hiphop
      Rap: hiphop
      "Alt. Rock": rock
      Podcast: ~

- CSV: rows ``raw,canonical`` (comma-separated, quotes as usual); an empty canonical drops the tag; a first
  row ``raw,canonical`` is a header and skipped; blank lines and lines starting with ``#`` are skipped.

A raw tag listed twice with two different canonical names is an error (naming both).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["LabelMap", "filter_min_count"]


def _key(tag: str) -> str:
    return tag.strip().casefold()


class LabelMap:
    """``raw -> canonical | None`` (None: drop). ``unmapped`` says what happens to a raw tag the map does
    not list: ``"drop"`` (default) or ``"keep"`` (kept as written, stripped)."""

    def __init__(
        self, mapping: dict[str, str | None] | Iterable[tuple[str, str | None]], unmapped: str = "drop"
    ) -> None:
        if unmapped not in ("drop", "keep"):
            raise ValueError(f"unmapped={unmapped!r}: expected 'drop' or 'keep'")
        self.unmapped = unmapped
        self._map: dict[str, str | None] = {}
        seen: dict[str, str] = {}
        pairs = mapping.items() if isinstance(mapping, dict) else mapping
        for raw, canon in pairs:
            k = _key(str(raw))
            value = str(canon).strip() if canon is not None and str(canon).strip() else None
            if k in self._map and self._map[k] != value:
                raise ValueError(
                    f"label map lists {seen[k]!r} -> {self._map[k]!r} and {raw!r} -> {value!r} "
                    "(matched case-insensitively)"
                )
            self._map[k], seen[k] = value, str(raw)

    @classmethod
    def load(cls, path: str | Path, unmapped: str = "drop") -> LabelMap:
        """Read a ``.yaml`` / ``.yml`` or ``.csv`` label map (format by extension; see the module doc)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{path}: a label map must be a YAML mapping raw: canonical")
            return cls({str(k): (None if v is None else str(v)) for k, v in data.items()}, unmapped)
        if suffix == ".csv":
            return cls(_read_csv(path), unmapped)
        raise ValueError(f"{path}: label map must be .yaml, .yml or .csv")

    def __len__(self) -> int:
        return len(self._map)

    @property
    def canonical_tags(self) -> list[str]:
        """The canonical names the map produces, sorted."""
        return sorted({v for v in self._map.values() if v is not None})

    def map_tag(self, raw: str) -> str | None:
        """The canonical name of ``raw``, or None when it is dropped (listed with no value, or unlisted
        with ``unmapped="drop"``)."""
        k = _key(raw)
        if k in self._map:
            return self._map[k]
        return (raw.strip() or None) if self.unmapped == "keep" else None

    def apply(self, raw_tags: Iterable[str]) -> list[str]:
        """Canonical tags of one item, in first-seen order without repeats."""
        return list(dict.fromkeys(c for c in (self.map_tag(t) for t in raw_tags) if c is not None))


def _read_csv(path: Path) -> list[tuple[str, str | None]]:
    """``(raw, canonical or None)`` rows of a CSV label map, in file order."""
    out: list[tuple[str, str | None]] = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["raw", "canonical"]:
                continue
            if len(row) > 2:
                raise ValueError(f"{path}:{lineno}: expected raw,canonical (2 columns), got {len(row)}")
            out.append((row[0], (row[1] if len(row) == 2 else "").strip() or None))
    return out


def filter_min_count(
    label_sets: Sequence[Sequence[str]], min_count: int
) -> tuple[list[list[str]], list[str]]:
    """Drop the tags carried by fewer than ``min_count`` items (an item counts once per tag).

    Returns ``(label_sets without those tags, kept tags most frequent first, ties by name)``. Items may
    end with no tag; dropping them is the caller's choice.
    """
    counts = Counter(t for labs in label_sets for t in set(labs))
    kept = [t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
    keep = set(kept)
    return [[t for t in labs if t in keep] for labs in label_sets], kept
