"""classify refuses each mistake a user can make with one clear line (exit 2), before any work, and never
touches a file it did not write; what it reads is never silently lost (unreadable folders, non-UTF-8 names)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.classify import classify, read_records
from engine.classify.cli import main

SR, SEG = 8000, 8000
LABELS = ["blues", "jazz", "metal", "pop"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, make_tiny_checkpoint) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", LABELS, SR, SEG)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "a.wav")


def write_clip(path: Path) -> Path:
    """A 1.5-s 440-Hz tone at the model's rate."""
    t = np.arange(int(1.5 * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
    return path


def _args(ckpt: Path, clip: Path, out: Path, *more: str) -> list[str]:
    return [str(ckpt), str(clip), "--out", str(out), "--num-workers", "0", "--no-progress", *more]


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("--top-k", "0", ">= 1"),
        ("--top-k", "-1", ">= 1"),
        ("--batch-size", "0", ">= 1"),
        ("--max-windows", "0", ">= 1"),
        ("--chunk-seconds", "-1", "> 0"),
        ("--chunk-seconds", "0", "> 0"),
        ("--num-workers", "-1", ">= 0"),
    ],
)
def test_a_number_out_of_range_is_refused_naming_option_value_and_range(
    tmp_path: Path, ckpt: Path, clip: Path, refused, capsys, snapshot, option: str, value: str, allowed: str
) -> None:
    before = snapshot(tmp_path)
    argv = [str(ckpt), str(clip), "--out", str(tmp_path / "r.jsonl"), option, value]
    err = refused(main, argv, capsys)
    assert f"argument {option}: {value} is out of range" in err and allowed in err
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_refused_with_the_fix(tmp_path, ckpt, clip, refused, capsys, snapshot) -> None:
    before = snapshot(tmp_path)
    err = refused(main, _args(ckpt, clip, tmp_path / "r.jsonl", "--device", "cuda"), capsys)
    assert "--device cuda: CUDA is not available" in err and "--device cpu" in err
    assert snapshot(tmp_path) == before


def test_tags_on_a_genre_model_is_refused_and_leaves_no_sidecar(tmp_path, ckpt, clip, refused, capsys, snapshot) -> None:
    before = snapshot(tmp_path)
    err = refused(main, _args(ckpt, clip, tmp_path / "r.jsonl", "--tags", "genre"), capsys)
    assert "--tags genre" in err and "not a multi-label tag model" in err
    assert snapshot(tmp_path) == before  # no r.jsonl, no r.jsonl.run.json


def test_a_corrupt_checkpoint_is_refused_and_leaves_no_sidecar(tmp_path, ckpt, clip, refused, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ckpt.read_bytes()[:1000])
    err = refused(main, _args(bad, clip, tmp_path / "r.jsonl"), capsys)
    assert str(bad) in err and "not a readable" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("mine.csv", b"my,own,data\n1,2,3\n"),
        ("notes.jsonl", b'{"mine": true}\n'),
        ("empty.jsonl", b""),
        ("ours_without_sidecar.jsonl", b'{"path": "/x/a.wav", "status": "ok", "reason": null, "duration": 1.0}\n'),
    ],
)
def test_an_existing_output_not_written_by_classify_is_refused_and_left_byte_identical(
    tmp_path, ckpt, clip, refused, capsys, snapshot, name: str, content: bytes
) -> None:
    out = tmp_path / name
    out.write_bytes(content)
    before = snapshot(tmp_path)
    err = refused(main, _args(ckpt, clip, out), capsys)
    assert str(out) in err and "not written by classify" in err and "--overwrite" in err and "another --out" in err
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_users_file_and_its_sidecar(tmp_path, ckpt, clip) -> None:
    out = tmp_path / "mine.jsonl"
    out.write_text('{"mine": true}\n')
    assert main(_args(ckpt, clip, out, "--overwrite")) == 0
    recs = list(read_records(out, "jsonl"))
    assert [r["path"] for r in recs] == [str(clip)] and recs[0]["status"] == "ok"
    assert json.loads(Path(f"{out}.run.json").read_text())["format"] == "jsonl"
    assert main(_args(ckpt, clip, out)) == 0  # now it is ours: the rerun resumes
    assert len(list(read_records(out, "jsonl"))) == 1


def test_a_part_file_without_its_sidecar_is_refused(tmp_path, ckpt, clip, refused, capsys, snapshot) -> None:
    out = tmp_path / "r.jsonl"
    Path(f"{out}.rank0.part").write_text('{"path": "/x/a.wav", "status": "ok"}\n')
    before = snapshot(tmp_path)
    err = refused(main, _args(ckpt, clip, out), capsys)
    assert "r.jsonl.rank0.part" in err and "--overwrite" in err
    assert snapshot(tmp_path) == before


def test_output_path_that_is_a_folder_is_refused(tmp_path, ckpt, clip, refused, capsys, snapshot) -> None:
    (tmp_path / "results").mkdir()
    before = snapshot(tmp_path)
    err = refused(main, _args(ckpt, clip, tmp_path / "results"), capsys)
    assert "--out" in err and "is a folder, not a file" in err and "name a file" in err
    assert snapshot(tmp_path) == before


def test_output_under_a_file_is_refused(tmp_path, ckpt, clip, refused, capsys, snapshot) -> None:
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    err = refused(main, _args(ckpt, clip, tmp_path / "afile" / "r.jsonl"), capsys)
    assert "afile is a file, not a folder" in err
    assert snapshot(tmp_path) == before


def test_output_in_a_missing_folder_creates_the_folder(tmp_path, ckpt, clip) -> None:
    out = tmp_path / "new" / "dir" / "r.jsonl"
    assert main(_args(ckpt, clip, out)) == 0
    assert len(list(read_records(out, "jsonl"))) == 1 and Path(f"{out}.run.json").is_file()


def test_a_list_that_is_not_utf8_is_refused_naming_file_line_and_byte(tmp_path, ckpt, refused, capsys) -> None:
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"/tmp/a.wav\n/tmp/caf\xe9.wav\n")
    out = tmp_path / "r.jsonl"
    err = refused(main, [str(ckpt), "--from-list", str(listing), "--out", str(out)], capsys)
    assert str(listing) in err and "byte 0xe9" in err and "line 2" in err and "UTF-8" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.txt"]


def test_a_file_name_that_is_not_utf8_gets_a_printable_line_and_resumes(tmp_path, ckpt, clip) -> None:
    root = tmp_path / "in"
    root.mkdir()
    odd = os.path.join(os.fsencode(root), b"caf\xe9.wav")
    with open(odd, "wb") as fh:
        fh.write(clip.read_bytes())
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"r.{fmt}"
        s = classify(ckpt, [root], out, num_workers=0, progress=False)
        assert s["ok"] == 1
        (rec,) = read_records(out, fmt)
        assert rec["path"] == str(root / "caf\\xe9.wav") and rec["status"] == "ok"
        again = classify(ckpt, [root], out, num_workers=0, progress=False)  # the printable path counts as done
        assert again["new"] == 0 and again["skipped"] == 1


def test_output_in_a_read_only_folder_is_refused(read_only_cases) -> None:
    """``python -m engine classify CKPT a.wav --out ro/r.jsonl --num-workers 0`` unprivileged, ``ro/`` read-only
    (run with the other commands' cases in one subprocess: ``tests.engine.unprivileged_runs``)."""
    case = read_only_cases["classify"]
    res, ro = case.res, case.ro
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert f"--out {ro / 'r.jsonl'}" in res.stderr and "read-only" in res.stderr
    assert case.after == case.before


def test_an_unreadable_folder_under_the_inputs_gets_an_error_line_and_is_counted(read_only_cases) -> None:
    """``classify CKPT in/ --out r.jsonl`` unprivileged over ``in/a.wav`` and ``in/locked/b.wav`` (``locked``
    mode 0), in the shared unprivileged subprocess of ``tests.engine.unprivileged_runs``."""
    case = read_only_cases["classify_unreadable"]
    res, root, out = case.res, case.folder / "in", case.folder / "r.jsonl"
    assert res.returncode == 0, res.stderr[-2000:]
    by_path = {r["path"]: r for r in read_records(out, "jsonl")}
    assert by_path[str(root / "a.wav")]["status"] == "ok"
    locked = by_path[str(root / "locked")]
    assert locked["status"] == "error" and locked["reason"].startswith("cannot read this folder (permission denied)")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["error"] == 1 and summary["unreadable_folders"] == 1
    assert summary["errors_by_reason"] == {"cannot read this folder": 1}
    assert json.loads(Path(f"{out}.run.json").read_text())["unreadable_folders"] == 1
