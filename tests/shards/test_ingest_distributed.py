"""make_shards over several processes (``accelerate launch`` / ``torchrun``) or into a ``pipe:`` command: the
same shard set, byte for byte, as one process writing a folder; a killed rank is resumed by a rerun."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shards.format import MANIFEST_NAME
from shards.ingest import main
from shards.ingest_ranks import RankMapper, Ranks, deal_shards
from shards.outsink import default_state_dir
from shards.procs import Mapper
from shards.shard_balance import cut_for_ranks

REPO = Path(__file__).resolve().parents[2]


def _collection(root: Path, clip_writer, corrupt_writer, n: int = 4, seconds: float = 0.5) -> Path:
    """``n`` clips in each of 3 genres, plus a corrupt WAV, a byte-identical duplicate and a file no decoder
    reads (garbage named ``.aiff``)."""
    for g in ("jazz", "rock", "pop"):
        for i in range(n):
            clip_writer(root / g / f"{g}{i}.{('wav', 'flac', 'ogg')[i % 3]}", seconds=seconds)
    corrupt_writer(root / "jazz" / "broken.wav", "truncated")
    shutil.copy(root / "rock" / "rock0.wav", root / "rock" / "rock0_copy.wav")
    corrupt_writer(root / "pop" / "noise.aiff", "garbage")
    return root


def _files(out: Path) -> dict[str, bytes]:
    """The shard set's files (tars and manifest) by name; the resume state is not part of it."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on the CPU even where GPUs exist
    return env


def _launch(n: int, args: list[str], cwd: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "tools.make_shards", *args]  # fmt: skip


# ---------------------------------------------------------------------------------------------- in process
def test_shards_are_dealt_largest_first_to_the_least_loaded_rank() -> None:
    shards = [{"name": f"s{i}", "start": a, "stop": b} for i, (a, b) in enumerate([(0, 5), (5, 6), (6, 10), (10, 13)])]
    dealt = deal_shards(shards, 2)
    assert [[s["name"] for s in d] for d in dealt] == [["s0", "s1"], ["s2", "s3"]]  # 6 and 7 tracks
    assert deal_shards(shards, 1) == [shards]
    assert [len(d) for d in deal_shards(shards, 6)] == [1, 1, 1, 1, 0, 0]


def test_train_split_is_cut_into_a_multiple_of_k_shards() -> None:
    shards = [{"name": f"train-{i:06d}.tar", "split": "train", "start": 10 * i, "stop": 10 * i + 10} for i in range(5)]
    shards.append({"name": "valid-000000.tar", "split": "valid", "start": 50, "stop": 57})
    warnings: list[str] = []
    cut = cut_for_ranks(shards, "train", 4, warnings)
    train = [s for s in cut if s["split"] == "train"]
    assert len(train) == 8 and train[0]["start"] == 0 and train[-1]["stop"] == 50 and not warnings
    assert all(b["start"] == a["stop"] for a, b in zip(train, train[1:]))
    assert {s["stop"] - s["start"] for s in train} <= {6, 7} and cut[-1] == shards[-1]
    assert cut_for_ranks(shards, "train", 5, warnings) == shards  # already a multiple
    assert cut_for_ranks(shards, "train", 64, warnings) == shards and "fewer than 64" in warnings[0]


def test_shards_for_ranks_reaches_the_manifest(tmp_path, clip_writer, corrupt_writer) -> None:
    src = _collection(tmp_path / "src", clip_writer, corrupt_writer, n=6)
    out = tmp_path / "out"
    assert main([str(src), "--out", str(out), "--workers", "1", "--shard-size", "100", "--shards-for-ranks", "4",
                 "--no-progress", "-q"]) == 0  # fmt: skip
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert len(manifest["splits"]["train"]["shards"]) == 4 and manifest["settings"]["shards_for_ranks"] == 4
    assert len(manifest["splits"]["valid"]["shards"]) == 1  # other splits are cut by --shard-size only


def test_one_process_rank_mapper_keeps_item_order() -> None:
    mapper = Mapper(1)
    assert list(RankMapper(mapper, Ranks()).imap(abs, [-3, 1, -2])) == [3, 1, 2]


def test_pipe_out_streams_the_same_bytes_as_a_folder(tmp_path, clip_writer, corrupt_writer, monkeypatch) -> None:
    src = _collection(tmp_path / "src", clip_writer, corrupt_writer)
    common = [str(src), "--workers", "1", "--shard-size", "3", "--no-progress", "-q"]
    assert main([*common, "--out", str(tmp_path / "dir")]) == 0
    (tmp_path / "piped").mkdir()
    monkeypatch.chdir(tmp_path)  # the default state dir is under the working directory
    out = f"pipe:cat > {tmp_path / 'piped'}/{{name}}"
    assert main([*common, "--out", out]) == 0
    ref, got = _files(tmp_path / "dir"), _files(tmp_path / "piped")
    assert ref.keys() == got.keys() and len(ref) > 3
    tars = [k for k in ref if k.endswith(".tar")]
    assert all(ref[k] == got[k] for k in tars)
    strip = re.compile(rb'\n "command": .*\n')  # the command line names --out
    assert strip.sub(b"\n", ref[MANIFEST_NAME]) == strip.sub(b"\n", got[MANIFEST_NAME])
    state = tmp_path / default_state_dir(out)
    assert (state / ".ingest" / "plan.json").is_file() and not list(state.glob("*.tar"))
    # a rerun trusts the local records (the store cannot be read back): nothing is streamed again
    for k in tars:
        (tmp_path / "piped" / k).unlink()
    assert main([*common, "--out", out]) == 0
    assert not list((tmp_path / "piped").glob("*.tar"))


def test_failing_pipe_command_is_one_line_error(tmp_path, clip_writer, corrupt_writer, capsys, monkeypatch) -> None:
    src = _collection(tmp_path / "src", clip_writer, corrupt_writer, n=1)
    monkeypatch.chdir(tmp_path)
    assert main([str(src), "--out", "pipe:exit 3 # {name}", "--workers", "1", "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err
    assert "pipe: command" in err and "exit 3" in err and "Traceback" not in err
    assert main([str(src), "--out", "pipe:cat > x", "--workers", "1"]) == 2
    assert "{name}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- launched
@pytest.mark.slow
def test_two_processes_write_the_one_process_set_byte_for_byte(tmp_path, clip_writer, corrupt_writer) -> None:
    src = _collection(tmp_path / "src", clip_writer, corrupt_writer)
    out = tmp_path / "out"
    args = [str(src), "--out", str(out), "--workers", "1", "--shard-size", "3", "--no-progress"]
    assert main(args) == 0  # the one-process reference, in this process (the manifest's command is the argv)
    ref = _files(out)
    out.rename(tmp_path / "ref")
    res = subprocess.run(_launch(2, args, REPO), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _files(out) == ref  # every tar and the manifest (skipped: the corrupt, the duplicate, the .aiff)
    assert res.stdout.count("skipped: 3") == 1  # the summary, once (rank 0)
    assert res.stderr.count("plan computed:") == 1  # once, on rank 0
    digests = dict(re.findall(r"plan sha256 (\w+) \(rank (\d) of 2\)", res.stderr))
    assert len(digests) == 1 and sorted(re.findall(r"\(rank (\d) of 2\)", res.stderr)) == ["0", "1"]
    # and streamed by two processes into a pipe: command (local state under --state-dir)
    piped = tmp_path / "piped"
    piped.mkdir()
    args[2] = f"pipe:cat > {piped}/{{name}}"
    res = subprocess.run(_launch(2, [*args, "--state-dir", str(tmp_path / "state")], REPO), env=_env(), cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    got = _files(piped)
    strip = re.compile(rb'\n "command": .*\n')  # the command line names --out
    assert got.keys() == ref.keys() and all(got[k] == ref[k] for k in ref if k != MANIFEST_NAME)
    assert strip.sub(b"\n", got[MANIFEST_NAME]) == strip.sub(b"\n", ref[MANIFEST_NAME])


@pytest.mark.slow
def test_killed_rank_stops_the_run_and_a_one_process_rerun_completes_it(
    tmp_path, clip_writer, corrupt_writer
) -> None:
    src = _collection(tmp_path / "src", clip_writer, corrupt_writer, n=12, seconds=1.0)
    args = [str(src), "--workers", "1", "--shard-size", "1", "--no-progress", "--offline-augment", "0.9:1"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main([*args, "--out", str(out), "-q"]) == 0
    out.rename(ref)  # the same --out in both runs: the same manifest "command"
    proc = subprocess.Popen(_launch(2, [*args, "--out", str(out)], REPO), env=_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    done = out / ".ingest" / "done"
    deadline = time.monotonic() + 240
    while not (done.is_dir() and any(done.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = _rank_pid(proc.pid, rank=1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=120)  # no hang on the dead rank
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, err[-2000:]
    assert not (out / MANIFEST_NAME).exists()
    for tar in out.glob("*.tar"):  # a shard under its final name is complete; unfinished ones are .tmp
        assert tar.read_bytes() == (ref / tar.name).read_bytes()
    written = len(list(done.iterdir()))
    assert 0 < written < len(list((ref / ".ingest" / "done").iterdir()))
    assert main([*args, "--out", str(out), "-q"]) == 0  # one process resumes the two-process run
    assert _files(out) == _files(ref)


@pytest.mark.slow
def test_rank_dying_without_a_launcher_to_stop_the_others_ends_them_with_a_clear_error(
    tmp_path, clip_writer, corrupt_writer
) -> None:
    """What the ranks on another machine see: no launcher kills them, their next collective fails at once."""
    src = _collection(tmp_path / "src", clip_writer, corrupt_writer, n=8, seconds=1.0)
    out = tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank)}  # fmt: skip
        cmd = [sys.executable, "-m", "tools.make_shards", str(src), "--out", str(out), "--workers", "1",
               "--shard-size", "1", "--no-progress", "--offline-augment", "0.9:1"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 240
        while not (out / ".ingest" / "plan.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        procs[1].kill()
        _, err = procs[0].communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 2 and "stopped answering" in err and "rerun the same command" in err
    assert "Traceback" not in err


def _parent(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the process with ``RANK=rank`` in its environment under the process ``launcher`` (Linux)."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            env = (p / "environ").read_bytes().split(b"\0")
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"tools.make_shards" in cmd:
            pid = int(p.name)
            while pid > 1:  # an ancestor is the launcher
                pid = _parent(pid)
                if pid == launcher:
                    return int(p.name)
    return None
