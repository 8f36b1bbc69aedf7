"""export refuses each mistake a user can make with one clear line (exit 2) before the checkpoint loads,
never replaces a file it did not write (without --overwrite) and never leaves a half-written one."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.export import is_exported_model, main

SR, SEG = 8000, 8000
LABELS = ["blues", "jazz", "metal", "pop"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, make_tiny_checkpoint) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", LABELS, SR, SEG)


def _args(ckpt: Path, out: Path, *more: str) -> list[str]:
    return [str(ckpt), "--format", "torchscript", "--out", str(out), *more]


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [("--window-samples", "0", ">= 1"), ("--window-samples", "-5", ">= 1"), ("--tolerance", "-1", ">= 0")],
)
def test_a_number_out_of_range_is_refused_naming_option_value_and_range(
    tmp_path, ckpt, refused, capsys, snapshot, option: str, value: str, allowed: str
) -> None:
    before = snapshot(tmp_path)
    err = refused(main, _args(ckpt, tmp_path / "m.ts", option, value), capsys)
    assert f"argument {option}: {value} is out of range" in err and allowed in err
    assert snapshot(tmp_path) == before


def test_out_that_is_a_folder_is_refused(tmp_path, ckpt, refused, capsys, snapshot) -> None:
    (tmp_path / "models").mkdir()
    before = snapshot(tmp_path)
    err = refused(main, _args(ckpt, tmp_path / "models"), capsys)
    assert "--out" in err and "is a folder, not a file" in err
    assert snapshot(tmp_path) == before


def test_a_file_export_did_not_write_is_refused_then_replaced_with_overwrite(
    tmp_path, ckpt, refused, capsys, snapshot
) -> None:
    out = tmp_path / "model.ts"
    out.write_text("my own notes\n")
    before = snapshot(tmp_path)
    err = refused(main, _args(ckpt, out), capsys)
    assert str(out) in err and "not a model written by export" in err and "--overwrite" in err
    assert snapshot(tmp_path) == before  # byte-identical, and no temporary file left beside it
    assert main(_args(ckpt, out, "--overwrite")) == 0
    assert is_exported_model(out)
    assert main(_args(ckpt, out)) == 0  # its own export is replaced without asking
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts"]


def test_out_in_a_missing_folder_creates_the_folder(tmp_path, ckpt) -> None:
    out = tmp_path / "new" / "dir" / "m.ts"
    assert main(_args(ckpt, out)) == 0 and is_exported_model(out)


def test_out_in_a_read_only_folder_is_refused(read_only_cases) -> None:
    """``python -m engine export CHECKPOINT --format torchscript --out ro/m.ts`` unprivileged, ``ro/`` read-only
    (run with the other commands' cases in one subprocess: ``tests.engine.unprivileged_runs``)."""
    case = read_only_cases["export"]
    res, ro = case.res, case.ro
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and f"--out {ro / 'm.ts'}" in res.stderr and "read-only" in res.stderr
    assert case.after == case.before
