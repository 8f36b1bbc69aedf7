"""engine.cv's outputs: per-fold evaluations without plots, and one confusion matrix of the pooled held-out
folds (in cv.json and as a table in cv.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.config import load_config
from engine.cv import cross_validate
from engine.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def three_fold_shards(tmp_path_factory) -> Path:
    from tests.engine.conftest import make_synthetic_shards

    return make_synthetic_shards(tmp_path_factory.mktemp("three"), clips_per_genre=4, duration=1.0, folds=3)


def test_cv_pools_the_held_out_folds_into_one_confusion_matrix_and_draws_no_plot(three_fold_shards, tmp_path):
    cfg = load_config(TrainConfig, str(ROOT / "configs" / "stats.yaml"), [
        f"data.shards={three_fold_shards}", "data.segment_seconds=1.0", "data.num_workers=0", "run.progress=false",
        "run.tensorboard=false"])  # fmt: skip
    result = cross_validate(cfg, tmp_path / "cv")
    folds = [json.loads((tmp_path / "cv" / f"fold{k}" / "eval" / "metrics.json").read_text()) for k in range(3)]
    want = sum(np.asarray(m["track"]["confusion_matrix"]) for m in folds)
    pooled = json.loads((tmp_path / "cv" / "cv.json").read_text())["confusion_matrix"]
    assert pooled == result["confusion_matrix"]
    assert pooled["counts"] == want.tolist() and pooled["labels"] == list(folds[0]["track"]["per_class"])
    manifest = json.loads((three_fold_shards / "manifest.json").read_text())
    assert want.sum() == manifest["splits"]["train"]["tracks"]  # every training-split track once
    md = (tmp_path / "cv" / "cv.md").read_text()
    first = pooled["labels"][0]
    assert f"| {first} | " + " | ".join(map(str, pooled["counts"][0])) + " |" in md
    assert not list((tmp_path / "cv").rglob("*.png"))  # no matplotlib in a cv: it doubled a probe's wall time
    for k in range(3):
        assert ".png" not in (tmp_path / "cv" / f"fold{k}" / "eval" / "report.md").read_text()
