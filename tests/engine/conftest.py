"""Shared engine fixtures: a real shard set made from the synthetic corpus by the real ingest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

#: Four genres whose recipes differ most, so a few CPU epochs learn them.
GENRES = ("classical", "metal", "reggae", "hiphop")


def make_synthetic_shards(root: Path, *, clips_per_genre: int, duration: float, folds: int = 0) -> Path:
    from shards.ingest import IngestConfig, run_ingest
    from shards.synthetic import make_corpus

    corpus = root / "corpus"
    make_corpus(corpus, clips_per_genre=clips_per_genre, duration=duration, genres=GENRES,
                formats=("wav", "flac"), seed=0, workers=1, progress=False)  # fmt: skip
    out = root / "shards"
    run_ingest(IngestConfig(source=corpus, out=out, layout="folder", seed=0, folds=folds, workers=1, progress=False))
    return out


def shard_copy(src: Path, dst: Path, edit) -> Path:
    """``src``'s shards linked into ``dst`` with ``edit(manifest)`` applied to its manifest."""
    dst.mkdir()
    for tar in src.glob("*.tar"):
        os.symlink(tar, dst / tar.name)
    manifest = json.loads((src / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 genres x 12 clips x 3 s, stratified 70/15/15 (32/8/8 tracks... by ingest's rounding), 3 folds."""
    return make_synthetic_shards(tmp_path_factory.mktemp("synth"), clips_per_genre=12, duration=3.0, folds=3)


@pytest.fixture(scope="session")
def gloo_runs(tmp_path_factory: pytest.TempPathFactory, synthetic_shards: Path) -> dict:
    """The two-process tests' commands, run in one shared ``accelerate launch`` of two gloo processes
    (:mod:`tests.engine.gloo_runs`): job name -> its :class:`~tests.engine.gloo_runs.JobResult`."""
    from tests.engine.gloo_runs import launch, prepare_jobs

    root = tmp_path_factory.mktemp("gloo")
    return launch(prepare_jobs(root, synthetic_shards), root)


@pytest.fixture(scope="session")
def read_only_cases(tmp_path_factory: pytest.TempPathFactory, synthetic_shards: Path) -> dict:
    """The hostile tests' runs where file permissions bind, in one unprivileged subprocess
    (:func:`tests.engine.unprivileged_runs.read_only_cases`): case name -> its ``ReadOnlyCase``."""
    from tests.conftest import unprivileged_runner
    from tests.engine.unprivileged_runs import read_only_cases as run_cases

    return run_cases(unprivileged_runner(), tmp_path_factory.mktemp("read-only"), synthetic_shards)


def tiny_checkpoint(path: Path, labels: list[str], sample_rate: int, segment_samples: int, seed: int = 0) -> Path:
    """A tiny untrained CNN on 16-band log-mels with non-trivial BatchNorm statistics (so eval mode matters);
    plumbing tests compare against this model's own eager outputs, not against genres."""
    import torch

    from engine.checkpoint_format import save_checkpoint
    from engine.config import from_dict, to_dict
    from engine.models import ModelConfig, build_model

    torch.manual_seed(seed)
    cfg = from_dict(
        ModelConfig,
        {
            "arch": "cnn",
            "params": {"channels": [4, 8], "hidden": 16, "dropout": 0.0},
            "features": {"n_fft": 256, "hop_length": 128, "n_mels": 16, "n_mfcc": 13},
        },
    )
    model = build_model(cfg, len(labels), sample_rate, segment_samples)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(
        path, model=model, config={"model": to_dict(cfg)}, labels=labels, sample_rate=sample_rate,
        segment_samples=segment_samples, epoch=0, metrics={},
    )  # fmt: skip


@pytest.fixture(scope="session")
def make_tiny_checkpoint() -> Callable[..., Path]:
    """:func:`tiny_checkpoint` for tests and module-scoped fixtures."""
    return tiny_checkpoint


@pytest.fixture(scope="session")
def pretrained_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache of converted pretrained checkpoints for the session: each model converts on first use,
    as on a user's first run, and the tests that need it share the conversion."""
    root = tmp_path_factory.mktemp("pretrained-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENRE_ENGINE_CACHE", str(root))
        yield root


def run_refused(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command's ``main(argv)`` in this process; assert it refused the way every command refuses a
    user's mistake (exit status 2, from argparse's parser or the command, and no traceback); returns its
    stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse refuses an option value by exiting
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def refused() -> Callable[..., str]:
    """:func:`run_refused`: ``refused(main, argv, capsys) -> stderr`` of a command that must refuse."""
    return run_refused


# ---------------------------------------------------------------- evaluate / embed refusals (hostile tests)
@pytest.fixture(scope="module")
def shard_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny audio shard set, one track per label (``tests.engine.test_evaluate``'s maker)."""
    from tests.engine.test_evaluate import LABELS, make_shard_set

    return make_shard_set(tmp_path_factory.mktemp("shards"), LABELS, tracks_per_label=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny genre checkpoint for those labels (not an embedding model: a refusal that came too late would
    fail with "no named outputs" instead)."""
    from tests.engine.test_evaluate import LABELS, make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", LABELS)


def serving_args(checkpoint: Path, shards: Path, out: Path, *more: str) -> list[str]:
    """``CHECKPOINT --shards DIR --out OUT --no-progress ...``: evaluate's and embed's command line."""
    return [str(checkpoint), "--shards", str(shards), "--out", str(out), "--no-progress", *more]
