"""Genre tags embedded in audio files, read with mutagen: a list of raw genre strings, or why there is none.

Where each format keeps its genre:

- ID3 (MP3, and WAV/AIFF with an ID3 chunk): ``TCON``; several values (ID3v2.4 null-separated), and the
  ID3v1 style numeric references ``(17)`` / ``17`` / ``(17)(18)`` mapped to names by mutagen's ``TCON.genres``
  (0-191: the ID3v1 list with the Winamp extensions; ``(RX)`` Remix, ``(CR)`` Cover). An ID3v1-only file is
  read as well (mutagen turns its genre byte into ``TCON``). A number outside the list (255 means "no genre"
  in ID3v1) gives nothing rather than mutagen's ``Unknown``.
- Vorbis comments (FLAC, Ogg Vorbis, Opus, Speex): ``GENRE`` (keys are case-insensitive), one value each.
- MP4/M4A: ``©gen`` (mutagen also maps the numeric ``gnre`` atom to a name there).
- ASF (WMA): ``WM/Genre``. APEv2 (WavPack, Musepack, Monkey's Audio): ``Genre``.

Values are stripped, empty ones dropped, repeats removed (first kept). Separators inside one value
(``Rock; Pop``, ``Rock/Pop``) are left alone: what they mean is a label-map decision.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["NO_GENRE", "read_embedded_genres"]

#: the reason returned for a readable file without a genre
NO_GENRE = "no genre tag"


def _id3_genres(tags) -> list[str]:
    out: list[str] = []
    for frame in tags.getall("TCON"):
        literal_unknown = any("unknown" in t.lower() for t in frame.text)
        out += [g for g in frame.genres if g != "Unknown" or literal_unknown]
    return out


def _values(tags, key: str) -> list[str]:
    if key not in tags:
        return []
    vals = tags[key]
    return [str(v) for v in (vals if isinstance(vals, list) else [vals])]


def _genres_of(tags) -> list[str]:
    """Raw genre values of a mutagen tag object, whatever its kind."""
    from mutagen.apev2 import APEv2
    from mutagen.asf import ASFTags
    from mutagen.id3 import ID3
    from mutagen.mp4 import MP4Tags

    if isinstance(tags, ID3):
        return _id3_genres(tags)
    if isinstance(tags, MP4Tags):
        return _values(tags, "\xa9gen")
    if isinstance(tags, ASFTags):
        return _values(tags, "WM/Genre")
    if isinstance(tags, APEv2):
        return [v for val in _values(tags, "Genre") for v in val.split("\x00")]
    if hasattr(tags, "get") and hasattr(tags, "keys"):  # Vorbis comments: case-insensitive keys
        return list(tags.get("genre") or [])
    return []


def read_embedded_genres(path: str | Path) -> list[str] | str:
    """The genre values embedded in ``path``: a non-empty list of raw strings, or a reason string:
    ``"no genre tag"`` (:data:`NO_GENRE`; no tags, or tags without a genre) or ``"unreadable tags: ..."``
    (a format mutagen does not know, a damaged header, an OS error). Never raises for a bad file."""
    import mutagen

    try:
        f = mutagen.File(str(path))
    except (mutagen.MutagenError, OSError, ValueError, EOFError) as err:
        return f"unreadable tags: {type(err).__name__}: {err}"
    if f is None:
        return "unreadable tags: not a format mutagen knows"
    if f.tags is None:
        return NO_GENRE
    genres = list(dict.fromkeys(g.strip() for g in _genres_of(f.tags) if g and g.strip()))
    return genres or NO_GENRE
