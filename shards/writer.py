"""Deterministic, atomic WebDataset tar shard writing.

Every member header is fixed (mtime, uid/gid, user/group names, mode), so the same samples in the same
order give byte-identical tars. A shard is written to ``<name>.tmp`` while its sha256 and size are
computed on the fly, then fsync'ed and renamed into place: a shard file that exists under its final
name is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Fixed member mtime (2000-01-01T00:00:00Z): reruns are byte-identical.
TAR_MTIME = 946_684_800


@dataclass
class ShardInfo:
    name: str  # file name inside the shard directory
    samples: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _HashingFile(io.RawIOBase):
    """Write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, fh: io.BufferedWriter) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.sha.update(b)
        self.size += len(b)
        return self.fh.write(b)


class ShardWriter:
    """Write one tar shard: ``add(key, {ext: bytes})`` per sample, then ``close() -> ShardInfo``.

    Use as a context manager; an exception inside the block removes the ``.tmp`` file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._fh = open(self.tmp, "wb")  # noqa: SIM115 -- closed in close()/abort()
        self._hf = _HashingFile(self._fh)
        # stream mode ("w|") only ever calls write(): nothing seeks, so the hash sees every byte once
        self._tar = tarfile.open(fileobj=self._hf, mode="w|", format=tarfile.USTAR_FORMAT)
        self.samples = 0
        self._closed = False

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: members ``<key>.<ext>`` in the given order (keep the order fixed)."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = TAR_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def close(self) -> ShardInfo:
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp, self.path)
        self._closed = True
        return ShardInfo(self.path.name, self.samples, self._hf.size, self._hf.sha.hexdigest())

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # end the tar stream now (its buffer goes to the .tmp deleted below); left open, it would flush
            # into the closed file when garbage-collected ("write to closed file" on stderr)
            with contextlib.suppress(OSError, ValueError):
                self._tar.close()
            self._fh.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            sha.update(block)
    return sha.hexdigest()


def shard_matches(path: str | Path, size: int, sha256: str) -> bool:
    """True if ``path`` exists with exactly ``size`` bytes and the given sha256 (a complete, intact shard)."""
    p = Path(path)
    try:
        if p.stat().st_size != size:
            return False
    except OSError:
        return False
    return sha256_file(p) == sha256
