"""The input stream of ``classify``: named files, the audio files under named folders, then ``--from-list``."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator

from shards.audio import is_audio_name
from shards.layouts import WalkError, walk_audio
from shards.outputs import decode_utf8


def iter_inputs(
    paths: Iterable[str | os.PathLike],
    from_list: str | os.PathLike | None = None,
    *,
    ignored: Counter[str] | None = None,
) -> Iterator[str | WalkError]:
    """The input stream: explicit files (always), audio files under folders, then paths listed in ``from_list``.

    Folders are walked with :func:`shards.layouts.walk_audio`: depth first, each folder's entries in sorted
    order (the same on every rank and worker), lazily (the walk yields a folder's first file as soon as that
    folder is listed), hidden folders skipped, symlink loops cut and a folder named twice walked once. A
    file is audio when its name or its first 4 KiB say so (:func:`shards.audio.is_audio_file`: an MP3 named
    ``.wav``, an Opus download without extension); every other file under a folder (cover ``.jpg``,
    ``.cue``, ``.DS_Store``...) is counted in ``ignored`` by :func:`shards.audio.ignored_key`. A folder with
    an audio name (``x.wav/``) and a dangling symlink with one are yielded like files (they get an error
    line). A named path that does not exist is yielded as is (it gets a ``missing`` error line).
    A folder under a named folder that cannot be listed (permission denied) comes as a
    :class:`shards.layouts.WalkError` (``path``, ``reason``), in walk order: it gets an error line.
    Names that are not valid UTF-8 come as the file system gives them (surrogate escapes).
    ``from_list`` is a UTF-8 text file with one path per line (blank lines and ``#`` comments skipped);
    folders in it are walked too. :func:`read_list` reads it (:class:`shards.outputs.InputError` for bytes
    that are not UTF-8).
    """
    seen: set[tuple[int, int]] = set()  # (device, inode) of the folders walked, across all named paths
    for path in _named_paths(paths, from_list):
        if os.path.isdir(path) and not is_audio_name(path):
            yield from walk_audio(path, ignored, seen=seen, file_dirs=is_audio_name, yield_errors=True)
        else:
            yield path


def _named_paths(paths: Iterable[str | os.PathLike], from_list: str | os.PathLike | None) -> Iterator[str]:
    for p in paths:
        yield os.fspath(p)
    if from_list is None:
        return
    yield from read_list(from_list)


def read_list(path: str | os.PathLike) -> list[str]:
    """The paths listed in the text file ``path``: one per line, blank lines and ``#`` comments skipped.

    Raises :class:`shards.outputs.InputError` naming the line and byte offset of the first byte that is
    not UTF-8 (and ``OSError`` for a file that cannot be read)."""
    with open(path, "rb") as fh:
        text = decode_utf8(fh.read(), path)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # universal newlines, as open() reads
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
