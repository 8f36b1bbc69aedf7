"""shards.resumable: atomic state files, identity checks that name the differing field, done-records that are
trusted only while the file on disk matches them."""

from __future__ import annotations

import json
import os

import pytest

from shards.resumable import DoneRecords, atomic_write_json, atomic_write_text, identity_diff
from shards.writer import ShardWriter


def test_atomic_write_leaves_the_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"b": 1, "a": "é"})
    atomic_write_json(path, {"b": 2, "a": "é"})  # replaces the old file
    assert path.read_text(encoding="utf-8") == '{\n "a": "é",\n "b": 2\n}\n'  # sorted, indent 1, newline
    atomic_write_text(tmp_path / "run.json", "x")
    assert sorted(os.listdir(tmp_path)) == ["run.json", "state.json"]


def test_a_failed_atomic_write_keeps_the_old_file_whole(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})  # fails while serialising, before anything is written
    assert json.loads(path.read_text(encoding="utf-8")) == {"ok": True}
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_identity_mismatch_names_each_differing_field():
    old = {"seed": 0, "sample_rate": 22050, "layout": "folder"}
    assert identity_diff(old, dict(old)) == []
    assert identity_diff(old, {**old, "seed": 1}) == ["seed"]
    assert identity_diff(old, {**old, "seed": 1, "layout": "gtzan"}) == ["layout", "seed"]  # sorted by default
    assert identity_diff(old, {**old, "folds": 3}) == ["folds"]  # a field only one side has differs too


def test_identity_diff_compares_only_the_given_fields_with_defaults_for_old_identities():
    old = {"model": "a.pt", "format": "csv"}  # written before "pad" existed: it stood for "zero"
    new = {"model": "b.pt", "format": "csv", "pad": "zero"}
    assert identity_diff(old, new, keys=["format", "pad"], defaults={"pad": "zero"}) == []
    assert identity_diff(old, {**new, "pad": "loop"}, keys=["pad", "format"], defaults={"pad": "zero"}) == ["pad"]
    assert identity_diff(old, new, keys=["model"]) == ["model"]


def _written_shard(out, name: str) -> dict:
    with ShardWriter(out / name) as writer:
        writer.add("k", {"txt": b"hello"})
        info = writer.close()
    return info.to_dict()


def test_done_record_is_trusted_only_while_the_file_matches_its_sha256(tmp_path):
    done = DoneRecords(tmp_path, ".job")
    done.mkdir()
    rec = {"shard": _written_shard(tmp_path, "train-000000.tar"), "seconds": 1.5}
    done.write("train-000000.tar", rec)
    assert (tmp_path / ".job" / "done" / "train-000000.tar.json").is_file()
    assert done.verified("train-000000.tar") == rec

    data = bytearray((tmp_path / "train-000000.tar").read_bytes())
    data[600] ^= 0xFF  # same size, other bytes
    (tmp_path / "train-000000.tar").write_bytes(bytes(data))
    assert done.verified("train-000000.tar") is None
    assert done.read("train-000000.tar") == rec  # the record as saved, unchecked

    (tmp_path / "train-000000.tar").unlink()
    assert done.verified("train-000000.tar") is None


def test_done_record_with_a_wrong_sha256_is_not_trusted(tmp_path):
    done = DoneRecords(tmp_path, ".job")
    done.mkdir()
    info = _written_shard(tmp_path, "valid-000000.tar")
    done.write("valid-000000.tar", {"shard": {**info, "sha256": "0" * 64}})
    assert done.verified("valid-000000.tar") is None


def test_missing_unreadable_and_empty_shard_records(tmp_path):
    done = DoneRecords(tmp_path, ".job")
    done.mkdir()
    assert done.verified("test-000000.tar") is None  # no record: not done
    done.path("test-000000.tar").write_text("{ torn", encoding="utf-8")
    assert done.verified("test-000000.tar") is None  # unreadable: not done
    done.write("test-000001.tar", {"shard": None, "skipped": [{"path": "a.wav", "reason": "empty"}]})
    assert done.verified("test-000001.tar") == {"shard": None, "skipped": [{"path": "a.wav", "reason": "empty"}]}
