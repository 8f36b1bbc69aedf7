"""Where an ingest's files go: a folder (every node sees it), or a command per file (``--out 'pipe:CMD {name}'``).

``--out DIR``: shards are written in place (``<name>.tmp``, fsync, rename: :class:`shards.writer.ShardWriter`);
the resume state lives in ``DIR/.ingest/`` and a done-record is trusted while the file still has its size and
sha256 (:meth:`shards.resumable.DoneRecords.verified`).

``--out 'pipe:CMD'`` (webdataset's ``pipe:`` style): each finished file -- every tar, then ``manifest.json`` --
is streamed to the standard input of the shell command ``CMD`` with ``{name}`` replaced by the file's name, e.g.
``pipe:aws s3 cp - s3://bucket/set/{name}``. A shard is first written whole to the local *state dir* (the same
tmp + rename), then streamed, then deleted there: a process killed while decoding sends nothing; one killed
while streaming may leave a truncated object, which has no done-record and is streamed again by the rerun. The
state dir (``--state-dir``, default ``./.make_shards_state/<sha256 of the --out text, 16 hex>``) holds what a
resume needs (``.ingest/plan.json``, ``.ingest/done/``); the store cannot be read back, so a done-record there
is trusted as it is.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

from shards.format import MANIFEST_NAME
from shards.resumable import DoneRecords, atomic_write_json

__all__ = ["PIPE_PREFIX", "OutSink", "SinkError", "default_state_dir", "is_pipe", "open_sink"]

PIPE_PREFIX = "pipe:"
STATE_ROOT = ".make_shards_state"  # under the working directory: the default --state-dir of a pipe: --out


class SinkError(Exception):
    """A file could not be delivered (the ``pipe:`` command failed): the message names the file and command."""


def is_pipe(out: str | Path) -> bool:
    """``--out`` is a ``pipe:CMD`` template rather than a folder."""
    return isinstance(out, str) and out.startswith(PIPE_PREFIX)


def default_state_dir(out: str) -> Path:
    """``./.make_shards_state/<first 16 hex of sha256(out)>``: one local state folder per ``--out`` text."""
    return Path(STATE_ROOT) / hashlib.sha256(out.encode()).hexdigest()[:16]


class OutSink:
    """A folder ``--out``: files are made in place, records are checked against the files.

    ``root`` is where the shards are written and where the state folder lives (``root/<state>/``)."""

    shared = True  # every rank sees every file and every done-record (a folder all nodes mount)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def verified(self, done: DoneRecords, name: str) -> dict[str, Any] | None:
        """The done-record of ``name`` if the file it describes is there intact, else None."""
        return done.verified(name)

    def publish(self, name: str) -> None:
        """``root/name`` is complete (renamed into place): nothing more to do for a folder."""

    def put_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.root / MANIFEST_NAME, manifest)


class PipeSink(OutSink):
    """A ``pipe:CMD`` ``--out``: files are made in the local state dir ``root``, then streamed to ``CMD``."""

    shared = False  # each node has its own state dir

    def __init__(self, template: str, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.template = template[len(PIPE_PREFIX) :]
        if "{name}" not in self.template:
            raise SinkError(f"--out {template!r}: the pipe: command must contain {{name}} (each file's name)")

    def describe(self) -> str:
        return PIPE_PREFIX + self.template

    def verified(self, done: DoneRecords, name: str) -> dict[str, Any] | None:
        try:  # the store cannot be read back: the record is all there is
            return done.read(name)
        except (OSError, json.JSONDecodeError):
            return None

    def _stream(self, name: str, data: Path | bytes) -> None:
        cmd = self.template.replace("{name}", shlex.quote(name))
        if isinstance(data, Path):
            with open(data, "rb") as fh:
                proc = subprocess.run(cmd, shell=True, stdin=fh, capture_output=True)
        else:
            proc = subprocess.run(cmd, shell=True, input=data, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise SinkError(
                f"--out pipe: command {cmd!r} failed for {name} (exit {proc.returncode})"
                + (f": {err[-1]}" if err else "")
            )

    def publish(self, name: str) -> None:
        self._stream(name, self.root / name)
        (self.root / name).unlink()

    def put_manifest(self, manifest: dict[str, Any]) -> None:
        super().put_manifest(manifest)  # a local copy next to the state (what the store got)
        self._stream(MANIFEST_NAME, (self.root / MANIFEST_NAME).read_bytes())


def open_sink(out: str | Path, state_dir: str | Path | None = None) -> OutSink:
    """The sink of ``--out`` (``state_dir``: a ``pipe:`` out's local state folder, default
    :func:`default_state_dir`; ignored for a folder, whose state is in it)."""
    if is_pipe(out):
        return PipeSink(str(out), Path(state_dir) if state_dir else default_state_dir(str(out)))
    return OutSink(Path(out))
