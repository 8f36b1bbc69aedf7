"""Reading hostile shards: a member name pointing outside the shard, a truncated shard, a duplicate key or
member. Each comes back with the shard path and the member name -- a :class:`ShardReadError` when the rest of
the shard cannot be trusted, an error record (``Sample.error``) when only that sample is bad."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from shards.tarstream import ShardReadError, iter_samples, unsafe_member_name


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _sample(key: str, n: int = 8) -> list[tuple[str, bytes]]:
    pcm = np.arange(n, dtype="<i2").tobytes()
    meta = json.dumps({"key": key, "label_index": 0}).encode()
    return [(f"{key}.pcm", pcm), (f"{key}.json", meta)]


@pytest.mark.parametrize("name", ["/etc/evil.pcm", "../../evil.pcm", "a/../../evil.json", "C:evil.pcm"])
def test_member_name_pointing_outside_the_shard_is_an_error_naming_shard_and_member(tmp_path, name):
    url = str(_tar(tmp_path / "s.tar", [*_sample("ok"), (name, b"\0\0")]))
    with pytest.raises(ShardReadError) as exc:
        list(iter_samples(url, range(10)))
    assert exc.value.url == url and exc.value.member == name
    assert str(exc.value).startswith(f"{url}: member {name!r}: the name points outside the shard")
    assert "remake the shard set" in str(exc.value)


def test_unsafe_member_names():
    assert not any(unsafe_member_name(n) for n in ["a.pcm", "dir/a.json", "a..b.pcm", "x.feats.npy"])
    assert all(unsafe_member_name(n) for n in ["/a.pcm", "..", "../a", "a/../b", "\\a", "D:\\a"])


def test_truncated_shard_is_an_error_naming_the_member_it_ends_in(tmp_path):
    full = _tar(tmp_path / "full.tar", [*_sample("a", 400), *_sample("b", 4000)]).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full[: 512 * 6])  # inside b.pcm's data
    with pytest.raises(ShardReadError) as exc:
        list(s.key for s in iter_samples(str(cut), range(2)))
    assert exc.value.member == "b.pcm" and exc.value.url == str(cut)
    assert "truncated member data" in exc.value.reason and "the shard ends early" in exc.value.reason
    assert str(exc.value).startswith(f"{cut}: member 'b.pcm': truncated")


def test_shard_cut_inside_a_header_names_the_member_before(tmp_path):
    full = _tar(tmp_path / "full.tar", [*_sample("a", 8), *_sample("b", 8)]).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full[: 512 * 4 + 100])  # a.pcm, a.json (header + data), then 100 bytes of b.pcm's header
    with pytest.raises(ShardReadError, match=r"member 'a.json': truncated tar header at byte 2048 \(the header after"):
        list(iter_samples(str(cut), range(2)))


def test_duplicate_key_later_in_the_shard_is_an_error_record_and_reading_goes_on(tmp_path):
    url = str(_tar(tmp_path / "s.tar", [*_sample("a"), *_sample("b"), *_sample("a"), *_sample("c")]))
    samples = list(iter_samples(url, range(4)))
    assert [(s.ordinal, s.key) for s in samples] == [(0, "a"), (1, "b"), (2, "a"), (3, "c")]
    assert [s.error for s in samples] == [None, None, "a.pcm: duplicate key 'a' (an earlier sample of this shard has it)", None]
    assert samples[2].data is None and samples[3].data is not None


def test_duplicate_member_in_one_sample_is_an_error_record(tmp_path):
    pcm, meta = _sample("a")
    url = str(_tar(tmp_path / "s.tar", [pcm, pcm, meta, *_sample("b")]))
    a, b = iter_samples(url, range(2))
    assert a.error == "a.pcm: duplicate member (sample 'a' already has a .pcm)"
    assert b.key == "b" and b.error is None
