"""Every engine command's run where file permissions bind (``tests.conftest.unprivileged_runner``: as root, under
``setpriv`` without the capabilities that ignore them), in ONE unprivileged interpreter.

Each such subprocess used to pay an interpreter and torch start-up (3-7 s on two cores) for one refusal; here
one subprocess runs ``python -m engine <command> ...``'s ``main(argv)`` for each job in turn, each with its own
stdout and stderr (file descriptors 1 and 2 redirected, so logging and C-level output are caught too) and exit
status, as a separate ``python -m engine`` would give them (an uncaught exception: its traceback on stderr and
status 1). The hostile test of each command reads its job's :class:`UnprivilegedRun`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

#: ``python -c`` body: argv[1] is the jobs file (a list of ``{"argv", "dir"}``).
DRIVER = """
import json, os, sys, traceback
from engine.cli import main
for job in json.loads(open(sys.argv[1]).read()):
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush(); sys.stderr.flush()
    with open(os.path.join(job["dir"], "stdout"), "wb") as out, open(os.path.join(job["dir"], "stderr"), "wb") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            code = main(job["argv"])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
    with open(os.path.join(job["dir"], "rc"), "w") as f:
        f.write(str(code))
"""


@dataclass
class UnprivilegedRun:
    """One command's run: ``returncode``, ``stdout`` and ``stderr`` as a subprocess of its own would give."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class ReadOnlyCase:
    """A hostile test's case: its folder (``ro/`` inside, read-only during the run), the snapshots of that folder
    before and after the run, and the run."""

    folder: Path
    before: dict[str, str]
    after: dict[str, str]
    res: UnprivilegedRun

    @property
    def ro(self) -> Path:
        return self.folder / "ro"


def read_only_cases(run_unprivileged, root: Path, synthetic_shards: Path) -> dict[str, ReadOnlyCase]:
    """Each command given an output in a read-only folder ``ro/`` (train, cv, evaluate, embed, export, classify),
    and classify given an input tree with an unreadable folder (``classify_unreadable``: ``in/a.wav`` and
    ``in/locked/b.wav``, ``locked`` mode 0, output ``r.jsonl`` beside ``in``), all in one unprivileged
    subprocess; the inputs are those of each command's hostile tests."""
    from tests.conftest import tree_snapshot
    from tests.engine import test_evaluate, test_hostile_classify, test_hostile_export
    from tests.engine.conftest import serving_args, tiny_checkpoint

    inputs = root / "inputs"
    inputs.mkdir()
    shard_set = test_evaluate.make_shard_set(inputs / "shards", test_evaluate.LABELS, tracks_per_label=1)
    checkpoint = test_evaluate.make_checkpoint(inputs / "model.pt", test_evaluate.LABELS)
    tiny = tiny_checkpoint(inputs / "tiny.pt", test_hostile_export.LABELS, test_hostile_export.SR,
                           test_hostile_export.SEG)  # fmt: skip
    ckpt = tiny_checkpoint(inputs / "classify.pt", test_hostile_classify.LABELS, test_hostile_classify.SR,
                           test_hostile_classify.SEG)  # fmt: skip
    clip = test_hostile_classify.write_clip(inputs / "a.wav")
    names = ["train", "cv", "evaluate", "embed", "export", "classify", "classify_unreadable"]
    folders = {name: root / name for name in names}
    ro = {name: folders[name] / "ro" for name in names}
    argv = {
        "train": ["train", "--shards", synthetic_shards, "--out", ro["train"] / "run", "run.cpu=true"],
        "cv": ["cv", "--shards", synthetic_shards, "--out", ro["cv"] / "cv"],
        "evaluate": ["evaluate", *serving_args(checkpoint, shard_set, ro["evaluate"] / "e")],
        "embed": ["embed", *serving_args(checkpoint, shard_set, ro["embed"] / "emb")],
        "export": ["export", *test_hostile_export._args(tiny, ro["export"] / "m.ts")],
        "classify": ["classify", ckpt, clip, "--out", ro["classify"] / "r.jsonl", "--num-workers", "0", "--no-progress"],
        "classify_unreadable": ["classify", ckpt, folders["classify_unreadable"] / "in", "--out",
                                folders["classify_unreadable"] / "r.jsonl", "--num-workers", "0", "--no-progress"],
    }  # fmt: skip
    locked = folders["classify_unreadable"] / "in" / "locked"
    locked.mkdir(parents=True)
    (locked.parent / "a.wav").write_bytes(clip.read_bytes())
    (locked / "b.wav").write_bytes(clip.read_bytes())
    (root / "logs").mkdir()
    jobs = {}
    for name in names:
        if name != "classify_unreadable":
            ro[name].mkdir(parents=True)
            ro[name].chmod(0o555)
        (root / "logs" / name).mkdir()
        jobs[name] = (argv[name], root / "logs" / name)
    locked.chmod(0)
    before = {name: tree_snapshot(folders[name]) for name in names}
    try:
        runs = run_all(run_unprivileged, jobs, root)
    finally:
        locked.chmod(0o755)
        for name in names:
            if name != "classify_unreadable":
                ro[name].chmod(0o755)
    return {name: ReadOnlyCase(folders[name], before[name], tree_snapshot(folders[name]), runs[name]) for name in names}


def run_all(run_unprivileged, jobs: dict[str, tuple[list, Path]], root: Path) -> dict[str, UnprivilegedRun]:
    """``jobs``: name -> (``python -m engine`` argv, the job's folder for its output files), run in one
    unprivileged subprocess (``run_unprivileged`` from ``tests.conftest.unprivileged_runner``)."""
    listing = [{"argv": [str(a) for a in argv], "dir": str(d)} for argv, d in jobs.values()]
    (root / "jobs.json").write_text(json.dumps(listing))
    proc = run_unprivileged([sys.executable, "-c", DRIVER, root / "jobs.json"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for name, (_, d) in jobs.items():
        rc = (d / "rc").read_text() if (d / "rc").exists() else None
        assert rc is not None, f"{name} did not finish: {proc.stderr[-3000:]}"
        text = [(d / f).read_bytes().decode("utf-8", "replace") for f in ("stdout", "stderr")]
        out[name] = UnprivilegedRun(int(rc), *text)
    return out
