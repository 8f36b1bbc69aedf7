"""shards.writer: deterministic WebDataset tars, their size/sha256 record, atomic replacement, integrity check.

Tars are read back with the standard library's ``tarfile`` (an independent reader) and hashed with ``hashlib``.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
import tarfile

import pytest

from shards.writer import TAR_MTIME, ShardInfo, ShardWriter, sha256_file, shard_matches

SAMPLES = [
    ("blues_00000", {"pcm": b"\x01\x00" * 700, "json": b'{"label": "blues"}'}),
    ("jazz_00003", {"pcm": b"\xff\x7f" * 513, "json": b'{"label": "jazz"}'}),
    ("rock_00042", {"json": b'{"label": "rock"}', "pcm": b""}),  # members in the order given, even if empty
]


def _write(path, samples=SAMPLES) -> ShardInfo:
    with ShardWriter(path) as w:
        for key, members in samples:
            w.add(key, members)
        return w.close()


def test_members_are_key_dot_ext_in_the_order_added_with_their_bytes(tmp_path):
    info = _write(tmp_path / "train-000000.tar")
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "blues_00000.pcm", "blues_00000.json", "jazz_00003.pcm", "jazz_00003.json", "rock_00042.json",
            "rock_00042.pcm",
        ]  # fmt: skip
        for m, data in zip(members, [d for _, ms in SAMPLES for d in ms.values()]):
            assert m.isfile() and m.size == len(data) and tar.extractfile(m).read() == data
    assert info.samples == 3


def test_every_header_is_fixed_so_reruns_are_byte_identical(tmp_path):
    _write(tmp_path / "a.tar")
    os.utime(tmp_path / "a.tar", (0, 0))  # the file's own mtime plays no part; the headers' is fixed
    with tarfile.open(tmp_path / "a.tar") as tar:
        for m in tar.getmembers():
            assert (m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) == (TAR_MTIME, 0o644, 0, 0, "", "")
    assert TAR_MTIME == 946_684_800  # 2000-01-01T00:00:00Z
    old = os.umask(0o077)  # another environment: umask, time of day
    try:
        _write(tmp_path / "b.tar")
    finally:
        os.umask(old)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    # a different order is a different shard
    _write(tmp_path / "c.tar", SAMPLES[::-1])
    assert (tmp_path / "c.tar").read_bytes() != (tmp_path / "a.tar").read_bytes()


def test_plain_ustar_blocks_with_the_tar_end_marker(tmp_path):
    _write(tmp_path / "s.tar")
    raw = (tmp_path / "s.tar").read_bytes()
    assert raw[257:263] == b"ustar\x00"  # POSIX ustar magic of the first header: no GNU/PAX extensions
    assert len(raw) % 10240 == 0  # whole tar records
    # payload 1400 + 18 + 1026 + 17 + 17 + 0 bytes, each member one header block + data padded to 512
    blocks = sum(1 + -(-len(d) // 512) for _, ms in SAMPLES for d in ms.values())
    assert raw[512 * blocks : 512 * blocks + 1024] == bytes(1024)  # two zero blocks end the archive
    with tarfile.open(tmp_path / "s.tar") as tar:
        assert all(m.pax_headers == {} for m in tar.getmembers())


def test_shard_info_is_the_files_name_sample_count_size_and_sha256(tmp_path):
    path = tmp_path / "valid-000001.tar"
    info = _write(path)
    data = path.read_bytes()
    assert info == ShardInfo("valid-000001.tar", 3, len(data), hashlib.sha256(data).hexdigest())
    # what the manifest stores for the shard
    assert info.to_dict() == {
        "name": "valid-000001.tar",
        "samples": 3,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_a_shard_with_no_samples_is_an_empty_valid_tar(tmp_path):
    info = _write(tmp_path / "e.tar", [])
    assert info.samples == 0 and info.bytes == (tmp_path / "e.tar").stat().st_size
    with tarfile.open(tmp_path / "e.tar") as tar:
        assert tar.getmembers() == []


@pytest.mark.parametrize("key", ["a.b", "dir/name", "x.pcm"])
def test_keys_with_dot_or_slash_are_refused_before_anything_is_written(tmp_path, key):
    with ShardWriter(tmp_path / "k.tar") as w:
        with pytest.raises(ValueError, match=f"sample key '{key}' must not contain"):
            w.add(key, {"pcm": b"12"})
        w.add("ok", {"pcm": b"12"})  # the writer is still usable and holds only the good sample
        info = w.close()
    assert info.samples == 1
    with tarfile.open(tmp_path / "k.tar") as tar:
        assert tar.getnames() == ["ok.pcm"]


# ------------------------------------------------------------------------------------------- atomicity
def test_the_shard_appears_under_its_name_only_when_complete(tmp_path):
    path = tmp_path / "train-000000.tar"
    tmp = tmp_path / "train-000000.tar.tmp"
    w = ShardWriter(path)
    w.add(*SAMPLES[0])
    assert tmp.is_file() and not path.exists()
    info = w.close()
    assert path.is_file() and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]
    assert info.bytes == path.stat().st_size


def test_an_error_inside_the_block_leaves_no_file_at_all(tmp_path):
    path = tmp_path / "s.tar"
    with pytest.raises(RuntimeError, match="decode failed"):
        with ShardWriter(path) as w:
            w.add(*SAMPLES[0])
            raise RuntimeError("decode failed")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_shard_is_replaced_whole_never_half_written(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(b"an older, damaged shard")
    w = ShardWriter(path)
    w.add(*SAMPLES[0])
    assert path.read_bytes() == b"an older, damaged shard"  # untouched while the new one is written
    w.abort()
    assert path.read_bytes() == b"an older, damaged shard" and not (tmp_path / "s.tar.tmp").exists()
    info = _write(path)
    assert info.sha256 == sha256_file(path) and shard_matches(path, info.bytes, info.sha256)


def test_a_stale_tmp_from_a_killed_run_is_overwritten(tmp_path):
    (tmp_path / "s.tar.tmp").write_bytes(b"\xff" * 50_000)  # longer than the new shard: must be truncated
    info = _write(tmp_path / "s.tar")
    _write(tmp_path / "fresh.tar")
    assert (tmp_path / "s.tar").read_bytes() == (tmp_path / "fresh.tar").read_bytes()
    assert info.bytes == (tmp_path / "s.tar").stat().st_size < 50_000


def test_abort_ends_the_tar_stream_so_nothing_writes_to_the_closed_file_later(tmp_path, monkeypatch):
    # the tar stream buffers; left open, it flushed into the already closed file when garbage-collected
    # ("Exception ignored ... ValueError: write to closed file" on stderr after every aborted shard)
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    w = ShardWriter(tmp_path / "s.tar")
    w.add(*SAMPLES[0])
    w.abort()
    del w
    gc.collect()
    assert [str(u.exc_value) for u in unraisable] == []
    assert list(tmp_path.iterdir()) == []


def test_abort_after_close_keeps_the_finished_shard(tmp_path):
    w = ShardWriter(tmp_path / "s.tar")
    w.add(*SAMPLES[0])
    info = w.close()
    w.abort()
    assert shard_matches(tmp_path / "s.tar", info.bytes, info.sha256)


# --------------------------------------------------------------------------------------- integrity check
def test_sha256_file_equals_hashlib_across_chunk_boundaries(tmp_path):
    data = bytes(range(256)) * 41 + b"tail"  # 10500 bytes
    path = tmp_path / "blob"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    for chunk in (1, 7, 512, 10_500, 10_501, 1 << 20):
        assert sha256_file(path, chunk=chunk) == want
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_shard_matches_only_the_exact_recorded_file(tmp_path):
    path = tmp_path / "s.tar"
    info = _write(path)
    assert shard_matches(path, info.bytes, info.sha256)
    assert shard_matches(str(path), info.bytes, info.sha256)
    assert not shard_matches(path, info.bytes + 1, info.sha256)  # size differs: no hashing needed
    assert not shard_matches(path, info.bytes, "0" * 64)
    assert not shard_matches(tmp_path / "missing.tar", info.bytes, info.sha256)
    # one flipped byte, same size: only the hash can tell
    raw = bytearray(path.read_bytes())
    raw[600] ^= 0x01
    path.write_bytes(bytes(raw))
    assert not shard_matches(path, info.bytes, info.sha256)
    # truncated (a shard cut short by a crash before the rename existed)
    path.write_bytes(bytes(raw[: info.bytes // 2]))
    assert not shard_matches(path, info.bytes, info.sha256)
