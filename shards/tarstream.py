"""Tar shards -> samples: a minimal streaming tar parser and the grouping of its members by key.

:class:`TarStream` reads one tar shard member by member -- a local file (seekable: data that is not wanted
is seeked over), a ``pipe:CMD`` URL or anything ``webdataset.gopen`` opens -- into a reused buffer, so a
``.pcm`` member becomes an ``np.frombuffer`` view with no decoding and no per-sample allocation. It
understands ustar, GNU long names and pax headers (long and unicode keys), and checks every header's
checksum. :func:`iter_samples` groups the members into samples (``<key>.<ext>`` with the same key, as
WebDataset does) and yields the wanted ones, reading only the byte range of each ``.pcm`` member that the
caller asks for.

Errors (missing file, bad header checksum, truncated member, a pipe command that fails) raise
:class:`ShardReadError` with the URL and the reason; what to do about them is the reader's business.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import format as fmt

__all__ = ["RangeFn", "Sample", "ShardReadError", "TarStream", "iter_samples", "sample_meta", "unsafe_member_name"]

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_TRUNCATED = ": the shard ends early (an interrupted copy?); copy it again or remake the shard set"


class ShardReadError(Exception):
    """A shard could not be read (``url``: which one, ``reason``: why, ``member``: the tar member it was at,
    None before the first or when unknown). ``str(err)`` is one line naming all three."""

    def __init__(self, url: str, reason: str, member: str | None = None):
        where = f"{url}: member {member!r}" if member is not None else url
        super().__init__(f"{where}: {reason}")
        self.url = url
        self.reason = reason
        self.member = member


def unsafe_member_name(name: str) -> bool:
    """Whether a member name points outside the shard (absolute, ``..`` or a drive): never in a shard the
    ingest writes (flat ``<key>.<ext>`` names), so the shard is not one of ours or was tampered with."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def _parse_number(field_: bytes) -> int:
    """Octal tar number field, or GNU base-256 (high bit set) for sizes >= 8 GiB."""
    if field_ and field_[0] & 0x80:
        n = int.from_bytes(field_[1:], "big")
        return n
    s = field_.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def _parse_pax(data: bytes) -> dict[str, str]:
    """``"<len> key=value\\n"`` records of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class TarStream:
    """Sequential reader of one tar shard: a local file (seekable), a ``pipe:CMD`` URL or any URL that
    ``webdataset.gopen`` opens (``http://``, ``s3://`` via ``pipe:``, ...).

    Data of the member returned by :meth:`next_member` must be consumed with exactly one of
    :meth:`skip`, :meth:`read_bytes` or :meth:`read_range` before the next call. :meth:`read_range` returns a
    view on a buffer that is reused by the next read: copy what you keep.
    """

    def __init__(self, url: str):
        self.url = url
        self.proc: subprocess.Popen[bytes] | None = None
        self.seekable = False
        self.pos = 0  # byte offset of the stream, for error messages
        self.member: str | None = None  # name of the member being read, for error messages
        self._buf = bytearray(1 << 20)
        self._scratch: bytearray | None = None
        try:
            if url.startswith("pipe:"):
                # Own Popen (not webdataset's Pipe) so an early stop can kill the command instead of
                # reading the rest of a remote shard, and a failing command is reported with its status.
                self.proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, bufsize=1 << 20)
                self.f: Any = self.proc.stdout
            elif "://" in url and not url.startswith("file://"):
                import webdataset.gopen as wds_gopen

                self.f = wds_gopen.gopen(url, "rb")
            else:
                path = url[len("file://") :] if url.startswith("file://") else url
                self.f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
                self.seekable = True
        except OSError as e:
            raise ShardReadError(url, f"cannot open: {e.strerror or e}") from e

    # -- low level
    def _readinto(self, view: memoryview) -> int:
        got = 0
        n = len(view)
        while got < n:
            k = self.f.readinto(view[got:])
            if not k:
                break
            got += k
        self.pos += got
        return got

    def _read_exact(self, n: int, what: str) -> memoryview:
        if n > len(self._buf):
            self._buf = bytearray(max(n, 2 * len(self._buf)))
        view = memoryview(self._buf)[:n]
        if self._readinto(view) != n:
            raise ShardReadError(self.url, f"truncated {what} at byte {self.pos}{_TRUNCATED}", self.member)
        return view

    def _discard(self, n: int) -> None:
        if n <= 0:
            return
        if self.seekable:
            self.f.seek(n, os.SEEK_CUR)
            self.pos += n
            return
        if self._scratch is None:
            self._scratch = bytearray(1 << 16)  # not the reused buffer: it may hold this sample's data
        scratch = memoryview(self._scratch)
        while n > 0:
            k = min(n, len(scratch))
            if self._readinto(scratch[:k]) != k:
                raise ShardReadError(self.url, f"truncated member data at byte {self.pos}{_TRUNCATED}", self.member)
            n -= k

    @staticmethod
    def _padded(size: int) -> int:
        return (size + _BLOCK - 1) // _BLOCK * _BLOCK

    def _check_end(self) -> None:
        if self.proc is not None:
            self.f.close()
            status = self.proc.wait()
            self.proc = None
            if status != 0:
                raise ShardReadError(self.url, f"command exited with status {status}")

    # -- members
    def next_member(self) -> tuple[str, int] | None:
        """Next regular file member ``(name, size in bytes)``, or None at the end of the archive."""
        longname: str | None = None
        pax: dict[str, str] = {}
        while True:
            hdr_view = memoryview(bytearray(_BLOCK))
            got = self._readinto(hdr_view)
            if got == 0:
                self._check_end()
                return None  # EOF at a member boundary (archive without end-of-archive blocks)
            if got != _BLOCK:
                after = " (the header after this member)" if self.member is not None else ""
                raise ShardReadError(
                    self.url, f"truncated tar header at byte {self.pos - got}{after}{_TRUNCATED}", self.member
                )
            hdr = hdr_view.tobytes()
            if hdr == _ZERO_BLOCK:
                self._check_end()
                return None
            try:
                checksum = _parse_number(hdr[148:156])
                size = _parse_number(hdr[124:136])
            except ValueError:
                raise ShardReadError(self.url, f"corrupt tar header at byte {self.pos - _BLOCK}") from None
            if checksum != sum(hdr[:148]) + sum(hdr[156:]) + 8 * 32:
                raise ShardReadError(self.url, f"bad tar header checksum at byte {self.pos - _BLOCK}")
            typeflag = hdr[156:157]
            if typeflag == b"L":  # GNU long name of the next member
                longname = self.read_bytes(size).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                continue
            if typeflag == b"x":  # pax extended header of the next member
                pax = _parse_pax(self.read_bytes(size))
                continue
            if typeflag not in (b"0", b"\0", b"7"):  # directories, links, global pax headers, ...
                self._discard(self._padded(size))
                longname = None
                pax = {}
                continue
            if "path" in pax:
                name = pax["path"]
            elif longname is not None:
                name = longname
            else:
                name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if hdr[257:263] == b"ustar\x00" and hdr[345] != 0:  # POSIX ustar prefix field
                    prefix = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    name = f"{prefix}/{name}"
            if "size" in pax:
                size = int(pax["size"])
            if unsafe_member_name(name):
                raise ShardReadError(
                    self.url,
                    "the name points outside the shard (absolute path or '..'): not a shard make_shards wrote; "
                    "remake the shard set",
                    name,
                )
            self.member = name
            return name, size

    def skip(self, size: int) -> None:
        self._discard(self._padded(size))

    def read_bytes(self, size: int) -> bytes:
        """Whole member as a new bytes object (small members: ``.json``)."""
        data = bytearray(size)  # not the reused buffer: it may hold this sample's PCM
        if self._readinto(memoryview(data)) != size:
            raise ShardReadError(self.url, f"truncated member data at byte {self.pos}{_TRUNCATED}", self.member)
        self._discard(self._padded(size) - size)
        return bytes(data)

    def read_range(self, size: int, start: int, count: int) -> memoryview:
        """Bytes ``[start, start + count)`` of the current member (view on the reused buffer); a seekable
        stream seeks over the rest, a pipe reads and discards it."""
        if self.seekable:
            self._discard(start)
            view = self._read_exact(count, "member data")
            self._discard(self._padded(size) - start - count)
            return view
        view = self._read_exact(size, "member data")
        self._discard(self._padded(size) - size)
        return view[start : start + count]

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:
            pass
        if self.proc is not None:
            # Early stop: the command may still be writing; kill it rather than drain a remote shard.
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@dataclass
class Sample:
    """One sample (the members of one key) of a shard: its ``.json`` bytes and (a range of) its data."""

    ordinal: int  # index of the sample (key group) within its shard
    key: str
    meta: bytes | None = None
    data: np.ndarray | None = None  # int16 (n,) -- possibly a sub-range -- or float16 (N, D)
    length: int = 0  # full length of the track, samples (pcm) or frames (feats)
    start: int = 0  # offset of ``data`` within the track
    ext: str = ""  # extension of the data member ("pcm" / "feats.npy"), "" while none was seen
    error: str | None = None


#: ``range_fn(ordinal, length) -> (start, count)``: which samples of a ``.pcm`` member to read.
RangeFn = Callable[[int, int], tuple[int, int]]


def iter_samples(
    url: str, wanted: Sequence[int], range_fn: RangeFn | None = None, skip_data: Container[int] = ()
) -> Iterator[Sample]:
    """Samples (key groups) of shard ``url`` whose ordinals are in ``wanted`` (increasing), in order.

    Members of unwanted samples are skipped without reading (seek) on local files. Stops -- and kills a
    pipe command -- as soon as the last wanted sample is complete. Raises :class:`ShardReadError` (with the
    member it was at) for what makes the rest of the shard unreadable: a truncated shard, a bad header, a
    member name pointing outside the shard. The ``data`` of a yielded sample views a reused buffer: copy it
    before advancing the generator.

    A sample that cannot be used comes with ``error`` set (one line naming the member) and the stream goes
    on: an odd PCM byte count, a bad ``.npy``, a key that already had its sample earlier in the shard
    (a duplicate key: the later group is an error record), a member that repeats an extension of its sample.

    ``range_fn`` picks the part of each ``.pcm`` member to read (default: all of it). Samples whose ordinal
    is in ``skip_data`` come with their ``.json`` but without data: the data member is checked (present,
    whole int16 count) and seeked over, ``data`` stays None (a resumed epoch passes over the samples it
    already trained on this way).
    """
    if not wanted:
        return
    tar = TarStream(url)
    try:
        wi = 0
        last = wanted[-1]
        ordinal = -1
        cur_key: str | None = None
        seen_keys: set[str] = set()
        exts: set[str] = set()  # extensions met in the current group
        duplicate = False  # the current group's key had a group earlier in the shard
        group: Sample | None = None
        while True:
            member = tar.next_member()
            if member is None:
                break
            name, size = member
            slash = name.rfind("/") + 1
            dot = name.find(".", slash)
            key, ext = (name[:dot], name[dot + 1 :]) if dot >= 0 else (name, "")
            if key != cur_key:
                if group is not None:
                    yield group
                    group = None
                    wi += 1
                    if wi == len(wanted):
                        return
                if ordinal >= last:
                    return
                cur_key = key
                ordinal += 1
                exts.clear()
                duplicate = key in seen_keys
                seen_keys.add(key)
                if ordinal == wanted[wi]:
                    group = Sample(ordinal, key)
                    if duplicate:
                        group.error = f"{name}: duplicate key {key!r} (an earlier sample of this shard has it)"
            if group is None or duplicate:
                tar.skip(size)
            elif ext in exts:
                group.error = group.error or f"{name}: duplicate member (sample {key!r} already has a .{ext})"
                tar.skip(size)
            else:
                _read_member(tar, group, name, ext, size, range_fn, ordinal in skip_data)
            exts.add(ext)
        if group is not None:
            yield group
    finally:
        tar.close()


def _read_member(
    tar: TarStream, group: Sample, name: str, ext: str, size: int, range_fn: RangeFn | None, skip: bool
) -> None:
    """Consume one member of a wanted sample into ``group`` (``skip``: check a data member, read none)."""
    if ext == fmt.META_EXT:
        group.meta = tar.read_bytes(size)
    elif ext == fmt.PCM_EXT:
        if size % 2:
            group.error = f"{name}: odd byte count {size} for int16 PCM"
            tar.skip(size)
            return
        n = size // 2
        if skip:
            tar.skip(size)
            group.length, group.ext = n, ext
            return
        start, count = range_fn(group.ordinal, n) if range_fn is not None else (0, n)
        group.data = np.frombuffer(tar.read_range(size, 2 * start, 2 * count), dtype="<i2")
        group.length, group.start, group.ext = n, start, ext
    elif ext == fmt.FEATS_EXT:
        if skip:
            tar.skip(size)
            group.ext = ext
            return
        try:
            feats = fmt.decode_feats(tar.read_bytes(size))
        except ValueError as e:
            group.error = f"{name}: bad .npy member ({e})"
            return
        if feats.ndim != 2:
            group.error = f"{name}: features must be [N, D], got shape {feats.shape}"
            return
        group.data, group.length, group.start, group.ext = feats, feats.shape[0], 0, ext
    else:
        tar.skip(size)


def sample_meta(sample: Sample) -> dict[str, Any] | None:
    """Parsed ``.json`` of a sample, or None after recording why in ``sample.error``."""
    if sample.error is not None:
        return None
    if sample.meta is None:
        sample.error = f"{sample.key}: no .json member"
        return None
    if not sample.ext:  # no data member (or one that could not be read: error set above)
        sample.error = f"{sample.key}: no .{fmt.PCM_EXT} or .{fmt.FEATS_EXT} member"
        return None
    try:
        meta = fmt.decode_meta(sample.meta)
        int(meta["label_index"])
    except (ValueError, KeyError, TypeError) as e:
        sample.error = f"{sample.key}: bad .json member ({e!r})"
        return None
    return meta
