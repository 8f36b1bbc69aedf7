"""One ``accelerate launch --multi_gpu --num_processes 2`` (gloo on CPU) that runs several commands' ``main`` one
after the other in the same two processes, for the tests that compare a two-process run with one process.

Each launch costs the launcher's and both workers' interpreter and torch start-up (about 10 s on two cores);
sharing one launch among the train, fine-tune, evaluate and classify tests pays it once. Each command runs as
``python -m <module>`` would (``main(argv)``), in its own output folder; the commands already run several times in
one process (cv and compare train again in-process), so one does not disturb the next.

:func:`prepare_jobs` writes every job's inputs (in this process) and returns the jobs; :func:`launch` runs them;
each test reads its own job's :class:`JobResult`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: ``tests.engine.test_recipes``' run: 1-s crops, 2-s evaluation windows every 0.5 s, EMA, mean log-prob.
RECIPES_WINDOWS = ["data.segment_seconds=1.0", "data.eval_segment_seconds=2.0", "data.eval_hop_seconds=0.5",
                   "data.eval_batch_size=5", "eval.track_aggregate=mean_logprob", "optim.ema_decay=0.5",
                   "optim.epochs=1", "optim.max_steps_per_epoch=3"]  # fmt: skip

#: Runs in each of the two processes: every job's ``main(argv)`` in order, its stdout into ``stdout.rank<r>`` and
#: its exit status into ``rc.rank<r>`` in the job's folder; the first failing job ends the launch.
DRIVER = """
import contextlib, importlib, json, os, sys
rank = os.environ.get("RANK", "0")
for job in json.loads(open(sys.argv[1]).read()):
    main = importlib.import_module(job["module"]).main
    with open(os.path.join(job["dir"], "stdout.rank" + rank), "w") as out, contextlib.redirect_stdout(out):
        try:
            code = main(job["argv"])
        except SystemExit as stop:
            code = stop.code
    with open(os.path.join(job["dir"], "rc.rank" + rank), "w") as f:
        f.write(str(code))
    if code:
        sys.exit(code)
"""


@dataclass
class JobResult:
    """One command's run in the shared launch: its folder, both ranks' exit status and rank 0's stdout."""

    dir: Path
    stderr: str  # the whole launch's stderr (both ranks, every job)
    info: dict  # what the job's preparation made (checkpoints, summaries, input folders)

    def check(self) -> None:
        """Assert both ranks ran this job to exit status 0 (else show the launch's stderr)."""
        codes = [(self.dir / f"rc.rank{r}").read_text() if (self.dir / f"rc.rank{r}").exists() else None for r in (0, 1)]
        assert codes == ["0", "0"], self.stderr[-3000:]

    @property
    def stdout(self) -> str:
        return (self.dir / "stdout.rank0").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_jobs(root: Path, synthetic_shards: Path) -> dict[str, tuple[str, list[str], dict]]:
    """Each two-process test's command line, with the inputs it needs made here in one process:

    ``train``: a 2-epoch DDP training run (``tests.engine.test_train``); ``finetune``: a DDP fine-tune of a 1-epoch
    run with a temporary freeze (``test_finetune``); ``recipes_evaluate``: evaluate with 2-s windows over a
    1-s-crop EMA run (``test_recipes``); ``tags_evaluate``: evaluate of a multi-label run
    (``test_multilabel_train``); ``classify``: classify of 11 tracks and a broken file into an output that
    already holds 3 of them (``test_classify``).
    """
    import torch

    from engine.classify import classify
    from engine.config import load_config
    from engine.train import TrainConfig, train
    from tests.engine import test_classify, test_finetune, test_multilabel_train, test_train
    from tests.engine.conftest import tiny_checkpoint
    from tests.engine.multilabel_shards import make_multilabel_shards

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on two shared cores
    try:
        jobs: dict[str, tuple[str, list[str], dict]] = {}
        out = root / "train" / "ddp"
        jobs["train"] = ("engine.train", [f"--shards={synthetic_shards}", f"--out={out}", *test_train.QUICK,
                                          "optim.epochs=2", "optim.max_steps_per_epoch=3"], {"out": out})  # fmt: skip

        quick = [*test_finetune.DDP_QUICK, f"data.shards={synthetic_shards}"]
        base = train(load_config(TrainConfig, None, [*quick, f"run.out_dir={root / 'finetune_base'}", "optim.epochs=1"]))
        out = root / "finetune" / "ddp"
        jobs["finetune"] = ("engine.train", [f"--out={out}", *quick, "optim.epochs=2",
                                             f"run.init_from={base['last_checkpoint']}", "run.freeze=[backbone.blocks.0]",
                                             "optim.freeze_epochs=1", "optim.pretrained_lr_scale=0.5"],
                            {"out": out, "base": base})  # fmt: skip

        run = root / "recipes_run"
        summary = train(test_train.quick_config(synthetic_shards, run, *RECIPES_WINDOWS))
        out = root / "recipes_evaluate" / "two"
        jobs["recipes_evaluate"] = ("engine.evaluate", [run / "last.pt", "--shards", synthetic_shards, "--split", "valid",
                                                        "--out", out, "--batch-size", "5", "--hop-seconds", "0.5",
                                                        "--workers", "0", "--no-progress"],
                                    {"out": out, "run": run, "summary": summary})  # fmt: skip

        tag_shards = make_multilabel_shards(root / "tag_shards")
        trained = train(load_config(TrainConfig, None, [f"data.shards={tag_shards}", f"run.out_dir={root / 'tags_run'}",
                                                        *test_multilabel_train.QUICK, "optim.epochs=3",
                                                        "optim.pos_weight=balanced"]))  # fmt: skip
        common = [trained["best_checkpoint"], "--shards", tag_shards, "--batch-size", "3", "--workers", "0",
                  "--no-progress"]  # fmt: skip
        out = root / "tags_evaluate" / "two"
        jobs["tags_evaluate"] = ("engine.evaluate", [*common, "--out", out],
                                 {"out": out, "common": [str(a) for a in common]})  # fmt: skip

        ckpt = tiny_checkpoint(root / "classify_ckpt.pt", test_classify.LABELS, test_classify.SR, test_classify.SEG)
        files = test_classify._many_tracks(root / "classify_in", 11)
        (root / "classify_in" / "broken.wav").write_bytes(b"RIFF")
        out = root / "classify" / "two.jsonl"
        (root / "classify").mkdir()
        classify(ckpt, files[:3], out, num_workers=0, progress=False)  # a few files already in the output
        jobs["classify"] = ("engine.classify.cli", [ckpt, root / "classify_in", "--out", out, "--num-workers", "1",
                                                    "--batch-size", "4", "--no-progress", "--device", "cpu"],
                            {"out": out, "ckpt": ckpt, "in": root / "classify_in", "files": files})  # fmt: skip
        return jobs
    finally:
        torch.set_num_threads(threads)


def launch(jobs: dict[str, tuple[str, list[str], dict]], root: Path) -> dict[str, JobResult]:
    """Run ``jobs`` (name -> (module, argv, info)) in one two-process launch; each job's folder is ``root/name``."""
    listing = []
    for name, (module, argv, _) in jobs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        listing.append({"module": module, "argv": [str(a) for a in argv], "dir": str(root / name)})
    (root / "jobs.json").write_text(json.dumps(listing))
    (root / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env.update({"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",  # gloo on CPU even where GPUs exist
                "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})  # fmt: skip
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(root / "driver.py"), str(root / "jobs.json")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    return {name: JobResult(root / name, proc.stderr, info) for name, (_, _, info) in jobs.items()}
