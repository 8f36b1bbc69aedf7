"""The make_shards CLI: errors, summary, and resume after a SIGKILL of a real subprocess mid-run.

Most cases call ``shards.ingest.main`` in-process (tools/make_shards.py is exactly that call); a real
subprocess is used where the process boundary matters (argparse exit, a killed run).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shards.ingest import main

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "make_shards.py"


def _shard_bytes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def _main(capsys, *args) -> tuple[int, str, str]:
    """The CLI's own entry point in-process (what tools/make_shards.py calls): fast, same code path."""
    rc = main([*map(str, args), "--no-progress"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_rejects_unknown_layout_listing_the_valid_ones(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    with pytest.raises(SystemExit) as exc:  # argparse's own exit, as in the real process
        main(["--layout", "nosuch", str(tmp_path / "src"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'nosuch'" in err and "gtzan" in err and "msd" in err
    assert not (tmp_path / "o").exists()


def test_cli_errors_are_clear_and_non_zero(tmp_path, capsys, corrupt_writer):
    (tmp_path / "empty").mkdir()
    rc, _, err = _main(capsys, tmp_path / "empty", "--out", tmp_path / "o1")
    assert rc == 2 and "is empty" in err
    rc, _, err = _main(capsys, tmp_path / "nope", "--out", tmp_path / "o2")
    assert rc == 2 and "does not exist" in err
    for i in range(3):
        corrupt_writer(tmp_path / "broken" / "rock" / f"b{i}.wav", ["text", "empty", "header_only"][i])
    rc, _, err = _main(capsys, tmp_path / "broken", "--out", tmp_path / "o4")
    assert rc == 2 and "zero decodable tracks" in err and "empty file" in err
    assert not (tmp_path / "o4").exists()  # nothing written before the plan stands
    (tmp_path / "docs" / "x").mkdir(parents=True)
    (tmp_path / "docs" / "x" / "readme.txt").write_text("no audio here")
    rc, _, err = _main(capsys, tmp_path / "docs", "--out", tmp_path / "o5")
    assert rc == 2 and "no audio files found" in err
    rc, _, err = _main(capsys, tmp_path / "docs", "--out", tmp_path / "o6", "--split-ratios", "1,2")
    assert rc == 2 and "split-ratios" in err
    rc, _, err = _main(capsys, tmp_path / "docs", "--out", tmp_path / "o7", "--layout", "fma")
    assert rc == 2 and "fma_metadata/tracks.csv" in err


def test_cli_summary_names_layout_and_every_skipped_file(tmp_path, capsys, clip_writer, corrupt_writer):
    src = tmp_path / "src"
    for lab in ("a", "b"):
        for i in range(3):
            clip_writer(src / lab / f"{lab}{i}.flac", seconds=0.2)
    corrupt_writer(src / "a" / "fake.wav", "text")
    corrupt_writer(src / "b" / "zero.wav", "empty")
    rc, out, err = _main(capsys, src, "--out", tmp_path / "out", "--workers", "2")
    assert rc == 0, err
    assert "layout: auto -> folder" in err
    assert "a/fake.wav: not audio" in out and "b/zero.wav: empty file (0 bytes)" in out
    assert "skipped: 2" in out and "train: 4 tracks" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["command"].startswith("make_shards.py ") and "--workers 2" in manifest["command"]


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, capsys, clip_writer):
    src = tmp_path / "src"
    for lab in ("a", "b", "c"):
        for i in range(16):
            clip_writer(src / lab / f"{lab}{i:02d}.flac", sample_rate=48000, channels=2, seconds=3.0)
    ref = tmp_path / "ref"
    assert (
        main([str(src), "--out", str(ref), "--shard-size", "1", "--workers", "2", "--seed", "3", "-q"]) == 0
    )

    out = tmp_path / "out"
    args = [sys.executable, str(TOOL), str(src), "--out", str(out), "--shard-size", "1", "--workers", "2"]
    args += ["--seed", "3", "--no-progress"]
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    done_dir = out / ".ingest" / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if done_dir.is_dir() and len(list(done_dir.glob("*.json"))) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its pool workers: a hard crash, no cleanup
    proc.wait(timeout=30)
    assert not (out / "manifest.json").exists()
    finished_before = len(list(done_dir.glob("*.json")))
    assert 3 <= finished_before < 48

    capsys.readouterr()
    assert (
        main([str(src), "--out", str(out), "--shard-size", "1", "--workers", "2", "--seed", "3", "-q"]) == 0
    )
    assert f"resumed: {finished_before} shards were already complete" in capsys.readouterr().out
    m_ref = json.loads((ref / "manifest.json").read_text())
    m_out = json.loads((out / "manifest.json").read_text())
    assert m_out["splits"] == m_ref["splits"] and m_out["skipped"] == m_ref["skipped"] == []
    assert sum(e["tracks"] for e in m_out["splits"].values()) == 48
    assert _shard_bytes(out) == _shard_bytes(ref) and len(_shard_bytes(out)) == 48
    assert not list(out.glob("*.tmp"))
