"""What a job that writes a set of output files needs to resume: atomic writes, an identity, done-records.

The ingest (``DIR/.ingest/``), ``engine embed`` (``DIR/.embed/``) and ``engine classify`` (``OUT.run.json``)
resume the same way:

- every state file is written whole or not at all (:func:`atomic_write_text`, :func:`atomic_write_json`:
  ``<name>.tmp`` then ``os.replace``), so a killed job leaves either the old file or the new one;
- the job's *identity* (the settings that change its output bytes) is saved at the start; a rerun compares
  its own with :func:`identity_diff`, which names each differing field, and refuses to mix two runs' output;
- each finished output file gets a *done-record* (:class:`DoneRecords`, ``<state>/done/<file>.json``:
  ``{"shard": {"name", "samples", "bytes", "sha256"} | None, ...}``); a rerun trusts a record only while the
  file on disk still has that size and sha256, and writes every other file again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shards.writer import shard_matches

log = logging.getLogger(__name__)

__all__ = ["DoneRecords", "atomic_write_json", "atomic_write_text", "identity_diff"]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``<path>.tmp``, then rename it onto ``path``: readers never see a torn file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as JSON: keys sorted, indent 1, UTF-8 as is, a final newline (the
    format of the state files and manifests of the ingest and ``embed``)."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def identity_diff(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    keys: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """The fields of ``keys`` (default: every field of either, sorted) whose value differs between the saved
    identity ``old`` and this run's ``new``; empty when the runs may be mixed (resumed).

    ``defaults`` gives the value an ``old`` identity written before a field existed stands for (a field added
    later must not refuse to resume the runs made before it)."""
    defaults = defaults or {}
    fields = sorted(set(old) | set(new)) if keys is None else list(keys)
    return [k for k in fields if old.get(k, defaults.get(k)) != new.get(k)]


class DoneRecords:
    """The done-records of a job writing files into ``out``: ``out/<state_dir>/done/<name>.json`` per file
    ``out/<name>``, written once the file is complete. ``record["shard"]`` is the file's
    ``{"name", "samples", "bytes", "sha256"}``, or None when the job finished it with nothing to write."""

    def __init__(self, out: str | os.PathLike, state_dir: str) -> None:
        self.out = Path(out)
        self.folder = self.out / state_dir / "done"

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def mkdir(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.path(name), record)

    def read(self, name: str) -> dict[str, Any]:
        """The record of ``name`` as saved, not checked against the file (raises when there is none)."""
        return json.loads(self.path(name).read_text(encoding="utf-8"))

    def verified(self, name: str) -> dict[str, Any] | None:
        """The record of ``name`` if there is one and the file on disk matches it (size and sha256), else None
        (no record, an unreadable one, or a file changed or gone since: the job writes it again)."""
        try:
            rec = self.read(name)
        except (OSError, json.JSONDecodeError):
            return None
        info = rec.get("shard")
        if info is None or shard_matches(self.out / name, info["bytes"], info["sha256"]):
            return rec
        log.warning("%s does not match its completion record (size/sha256): writing it again", self.out / name)
        return None
