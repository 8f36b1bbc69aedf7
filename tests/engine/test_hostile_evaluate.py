"""evaluate refuses each mistake a user can make with one clear line (exit 2) before any work, and writes its
report files only into a folder where they are its own."""

from __future__ import annotations

import pytest

from engine.evaluate import evaluate_checkpoint, main
from tests.engine.conftest import serving_args


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("--batch-size", "0", ">= 1"),
        ("--segment-seconds", "0", "> 0"),
        ("--segment-seconds", "-1", "> 0"),
        ("--hop-seconds", "0", "> 0"),
        ("--hop-seconds", "nan", "finite"),
        ("--workers", "-1", ">= 0"),
        ("--fold", "-1", ">= 0"),
    ],
)
def test_a_number_out_of_range_is_refused_naming_option_value_and_range(
    tmp_path, checkpoint, shard_set, refused, capsys, snapshot, option: str, value: str, allowed: str
) -> None:
    before = snapshot(tmp_path)
    err = refused(main, serving_args(checkpoint, shard_set, tmp_path / "eval", option, value), capsys)
    assert f"argument {option}: " in err and value in err and allowed in err
    assert snapshot(tmp_path) == before


def test_a_fold_the_shard_set_does_not_have_is_refused(tmp_path, checkpoint, shard_set, refused, capsys) -> None:
    err = refused(main, serving_args(checkpoint, shard_set, tmp_path / "eval", "--fold", "99"), capsys)
    assert "fold 99 does not exist" in err and "--folds K" in err
    assert not (tmp_path / "eval").exists()


def test_a_split_the_shard_set_does_not_have_is_refused_listing_the_splits(
    tmp_path, checkpoint, shard_set, refused, capsys
) -> None:
    err = refused(main, serving_args(checkpoint, shard_set, tmp_path / "eval", "--split", "nosuch"), capsys)
    assert "--split 'nosuch'" in err and "it has test" in err
    assert not (tmp_path / "eval").exists()


def test_out_that_is_a_file_is_refused_and_left_as_it_is(tmp_path, checkpoint, shard_set, refused, capsys, snapshot) -> None:
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    err = refused(main, serving_args(checkpoint, shard_set, tmp_path / "afile"), capsys)
    assert f"--out {tmp_path / 'afile'}: is a file, not a folder" in err
    assert snapshot(tmp_path) == before


def test_a_users_file_named_like_a_report_file_is_refused_and_left_as_it_is(
    tmp_path, checkpoint, shard_set, refused, capsys, snapshot
) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "report.md").write_text("# my own notes\n")
    (out / "other.txt").write_text("also mine\n")
    before = snapshot(tmp_path)
    err = refused(main, serving_args(checkpoint, shard_set, out), capsys)
    assert str(out / "report.md") in err and "not written by evaluate" in err and "another --out" in err
    assert snapshot(tmp_path) == before


def test_a_rerun_replaces_its_own_report_and_leaves_other_files(tmp_path, checkpoint, shard_set) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "other.txt").write_text("mine\n")
    for _ in range(2):
        evaluate_checkpoint(checkpoint, shard_set, out=out, progress=False)
    assert (out / "other.txt").read_text() == "mine\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["other.txt", "metrics.json", "report.md", "confusion_matrix.png", "confusion_matrix_segment.png",
         "predictions.csv"]  # fmt: skip
    )  # no .tmp left over


def test_a_label_map_that_is_not_utf8_is_refused_naming_file_line_and_byte(
    tmp_path, checkpoint, shard_set, refused, capsys
) -> None:
    label_map = tmp_path / "map.yaml"
    label_map.write_bytes(b"blues: blues\nhiphop: caf\xe9\n")
    err = refused(main, serving_args(checkpoint, shard_set, tmp_path / "eval", "--label-map", label_map), capsys)
    assert str(label_map) in err and "byte 0xe9" in err and "line 2" in err
    assert not (tmp_path / "eval").exists()


def test_out_in_a_read_only_folder_is_refused(read_only_cases) -> None:
    """``python -m engine evaluate CHECKPOINT --shards ... --out ro/e`` unprivileged, ``ro/`` read-only (run with
    the other commands' cases in one subprocess: ``tests.engine.unprivileged_runs``)."""
    case = read_only_cases["evaluate"]
    res, ro = case.res, case.ro
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and f"--out {ro / 'e'}" in res.stderr and "read-only" in res.stderr
    assert case.after == case.before
