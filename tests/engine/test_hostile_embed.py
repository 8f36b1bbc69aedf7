"""embed refuses each mistake a user can make with one clear line (exit 2) before the model loads, and
writes only into an empty folder or one that holds its own run."""

from __future__ import annotations

import pytest

from engine.embed import main
from tests.engine.conftest import serving_args


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [("--hop-seconds", "0", "> 0"), ("--hop-seconds", "-2", "> 0"), ("--batch-size", "0", ">= 1")],
)
def test_a_number_out_of_range_is_refused_naming_option_value_and_range(
    tmp_path, checkpoint, shard_set, refused, capsys, snapshot, option: str, value: str, allowed: str
) -> None:
    before = snapshot(tmp_path)
    err = refused(main, serving_args(checkpoint, shard_set, tmp_path / "emb", option, value), capsys)
    assert f"argument {option}: {value} is out of range" in err and allowed in err
    assert snapshot(tmp_path) == before


def test_a_split_the_shard_set_does_not_have_is_refused(tmp_path, checkpoint, shard_set, refused, capsys) -> None:
    err = refused(main, serving_args(checkpoint, shard_set, tmp_path / "emb", "--splits", "test,nosuch"), capsys)
    assert "--splits nosuch" in err and "has test" in err and "leave --splits out" in err
    assert not (tmp_path / "emb").exists()


def test_out_that_is_a_file_is_refused_and_left_as_it_is(tmp_path, checkpoint, shard_set, refused, capsys, snapshot) -> None:
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    err = refused(main, serving_args(checkpoint, shard_set, tmp_path / "afile"), capsys)
    assert f"--out {tmp_path / 'afile'}: is a file, not a folder" in err
    assert snapshot(tmp_path) == before


def test_a_folder_holding_other_files_is_refused_before_the_model_loads(
    tmp_path, checkpoint, shard_set, refused, capsys, snapshot
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    err = refused(main, serving_args(checkpoint, shard_set, out), capsys)
    assert f"--out {out}" in err and "holds notes.txt" in err and "no embedding run" in err and "another --out" in err
    assert snapshot(tmp_path) == before


def test_out_in_a_read_only_folder_is_refused(read_only_cases) -> None:
    """``python -m engine embed CHECKPOINT --shards ... --out ro/emb`` unprivileged, ``ro/`` read-only (run with
    the other commands' cases in one subprocess: ``tests.engine.unprivileged_runs``)."""
    case = read_only_cases["embed"]
    res, ro = case.res, case.ro
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and f"--out {ro / 'emb'}" in res.stderr and "read-only" in res.stderr
    assert case.after == case.before
