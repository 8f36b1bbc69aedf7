"""Hostile cross-validation and comparison requests: refused before any model is built, with the fix named,
exit status 2 and nothing written."""

from __future__ import annotations

import pytest

from engine.compare import main as compare_main
from engine.cv import main as cv_main
from engine.demo import main as demo_main
from tests.engine.conftest import shard_copy

pytestmark = pytest.mark.usefixtures("one_thread")


def refused(main, capsys, argv, root, snapshot) -> str:
    before = snapshot(root)
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert snapshot(root) == before  # no fold directory, no cv.json, nothing
    return err


@pytest.mark.parametrize("folds", [0, -1])
def test_folds_below_two_are_refused_before_any_work(capsys, tmp_path, snapshot, synthetic_shards, folds):
    err = refused(cv_main, capsys, ["--shards", synthetic_shards, "--out", tmp_path / "cv", "--folds", folds], tmp_path, snapshot)
    assert f"--folds {folds}: cross-validation needs K >= 2 folds; leave --folds out to use the shard set's (3)" in err


def test_more_folds_than_the_shard_set_has_are_refused_before_any_work(capsys, tmp_path, snapshot, synthetic_shards):
    err = refused(cv_main, capsys, ["--shards", synthetic_shards, "--out", tmp_path / "cv", "--folds", 1000], tmp_path, snapshot)
    assert "--folds 1000 but the shard set was made with 3 folds" in err and "make_shards.py" in err


def test_cv_on_shards_without_folds_names_make_shards_folds(capsys, tmp_path, snapshot, synthetic_shards):
    shards = shard_copy(synthetic_shards, tmp_path / "s", lambda m: m.update(folds=0))
    err = refused(cv_main, capsys, ["--shards", shards, "--out", tmp_path / "cv"], tmp_path, snapshot)
    assert "has no fold assignment" in err and "python tools/make_shards.py SOURCE --out DIR --folds K" in err


def test_more_folds_than_tracks_is_refused_before_any_work(capsys, tmp_path, snapshot, synthetic_shards):
    shards = shard_copy(synthetic_shards, tmp_path / "s", lambda m: m.update(folds=1000))
    err = refused(cv_main, capsys, ["--shards", shards, "--out", tmp_path / "cv"], tmp_path, snapshot)
    assert "1000 folds but split 'train' holds" in err and "some folds are empty" in err


def test_a_fold_with_no_tracks_is_refused_before_any_work(capsys, tmp_path, snapshot, synthetic_shards):
    shards = shard_copy(synthetic_shards, tmp_path / "s", lambda m: m.update(folds=4))  # the tracks hold folds 0-2
    err = refused(cv_main, capsys, ["--shards", shards, "--out", tmp_path / "cv"], tmp_path, snapshot)
    assert "fold(s) 3 of 4 hold no track of split 'train'" in err and "fewer folds" in err


def test_cv_out_that_is_a_file_is_refused_before_any_work(capsys, tmp_path, snapshot, synthetic_shards):
    (tmp_path / "afile").write_text("mine")
    err = refused(cv_main, capsys, ["--shards", synthetic_shards, "--out", tmp_path / "afile"], tmp_path, snapshot)
    assert "--out" in err and "is a file, not a folder" in err


def test_cv_out_in_a_read_only_folder_is_refused(read_only_cases):
    """``python -m engine cv --shards ... --out ro/cv`` unprivileged, ``ro/`` read-only (run with the other
    commands' cases in one subprocess: ``tests.engine.unprivileged_runs``)."""
    case = read_only_cases["cv"]
    proc = case.res
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "read-only" in proc.stderr and case.after == case.before


@pytest.mark.parametrize("models", ["", " , "])
def test_compare_with_no_models_names_the_architectures(capsys, tmp_path, snapshot, synthetic_shards, models):
    err = refused(compare_main, capsys, ["--shards", synthetic_shards, "--out", tmp_path / "cmp", "--models", models], tmp_path, snapshot)
    assert "no rows; give architectures (cnn, cnn1d, crnn" in err


def test_compare_with_an_unknown_model_names_the_architectures(capsys, tmp_path, snapshot, synthetic_shards):
    argv = ["--shards", synthetic_shards, "--out", tmp_path / "cmp", "--models", "cnn,nosuch"]
    err = refused(compare_main, capsys, argv, tmp_path, snapshot)
    assert "unknown architecture 'nosuch'; valid: cnn, cnn1d, crnn" in err


def test_compare_out_that_is_a_file_is_refused(capsys, tmp_path, snapshot, synthetic_shards):
    (tmp_path / "afile").write_text("mine")
    err = refused(compare_main, capsys, ["--shards", synthetic_shards, "--out", tmp_path / "afile", "--models", "cnn"], tmp_path, snapshot)
    assert "is a file, not a folder" in err


def test_demo_config_mistake_is_refused_before_generating_anything(capsys, tmp_path, snapshot):
    err = refused(demo_main, capsys, ["--out", tmp_path / "demo", "--size", "tiny", "--epochs", 0], tmp_path, snapshot)
    assert "optim.epochs must be >= 1, got 0" in err


def test_demo_out_that_is_a_file_is_refused(capsys, tmp_path, snapshot):
    (tmp_path / "afile").write_text("mine")
    err = refused(demo_main, capsys, ["--out", tmp_path / "afile", "--size", "tiny"], tmp_path, snapshot)
    assert "is a file, not a folder" in err
