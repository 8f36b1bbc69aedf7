"""Multi-label training end to end on a hand-made tag shard set: the checkpoint's task and thresholds, evaluate's
tag metrics against scikit-learn on the same scores, validation equal to evaluate, cv's summary, two processes.
The shard set is read by the real multi-label reader (``CropStream`` / ``WindowStream`` ``"targets"``).
"""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import load_config
from engine.train import TrainConfig, train
from shards import format as fmt
from tests.engine.multilabel_shards import TAGS, make_multilabel_shards

ROOT = Path(__file__).resolve().parents[2]

QUICK = [
    "model.arch=cnn", "model.params.channels=[4,8]", "model.params.hidden=16", "model.features.n_fft=256",
    "model.features.hop_length=128", "model.features.n_mels=32", "model.augment.enabled=false",
    "data.segment_seconds=1.0", "data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=0",
    "optim.lr=3e-3", "optim.early_stop_patience=0", "run.tensorboard=false", "run.progress=false",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tag_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_multilabel_shards(tmp_path_factory.mktemp("tags") / "shards")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tag_shards: Path) -> dict:
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(TrainConfig, None, [f"data.shards={tag_shards}", f"run.out_dir={out}", *QUICK,
                                          "optim.epochs=3", "optim.pos_weight=balanced"])  # fmt: skip
    return train(cfg)


def _track_scores(checkpoint: Path, shards: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys, sigmoid scores [N, K] and 0/1 targets [N, K] of every track of ``split``, by the model directly
    (1-s tracks, 1-s windows: one window per track)."""
    from engine.checkpoint import load_model

    model, _ = load_model(checkpoint, "cpu")
    keys, scores, targets = [], [], []
    for shard in sorted(shards.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        for name in sorted(n for n in members if n.endswith(".json")):
            meta = fmt.decode_meta(members[name])
            wave = torch.from_numpy(fmt.decode_pcm(members[name[:-5] + ".pcm"]).copy())[None]
            with torch.no_grad():
                scores.append(torch.sigmoid(model(wave)).double()[0].numpy())
            keys.append(meta["key"])
            targets.append([int(t in meta["labels"]) for t in TAGS])
    return keys, np.array(scores), np.array(targets)


def test_checkpoint_records_the_task_and_thresholds_chosen_on_validation(trained):
    ckpt = torch.load(trained["best_checkpoint"], map_location="cpu", weights_only=True)
    extra = ckpt["extra"]
    assert extra["task"] == "multilabel" and extra["multi_label"] is True and extra["label_kind"] == "tags"
    assert len(extra["thresholds"]) == len(TAGS) and all(0 < t < 1 for t in extra["thresholds"])
    assert ckpt["labels"] == TAGS
    row = trained["history"][-1]
    for key in ("valid_loss", "valid_map", "valid_roc_auc", "valid_f1", "valid_segment_map", "train_acc"):
        assert np.isfinite(row[key]), key
    assert row["valid_tracks"] == 8
    best = max(trained["history"], key=lambda r: r["valid_map"])  # eval.select_metric auto = map
    assert trained["best_epoch"] == best["epoch"]
    assert trained["history"][-1]["train_loss"] < trained["history"][0]["train_loss"]


def test_evaluate_writes_tag_metrics_equal_to_sklearn_on_the_same_scores(trained, tag_shards, tmp_path):
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    from engine.evaluate import evaluate_checkpoint

    out = tmp_path / "eval"
    m = evaluate_checkpoint(trained["best_checkpoint"], tag_shards, split="test", out=out, num_workers=0, progress=False)
    keys, scores, targets = _track_scores(Path(trained["best_checkpoint"]), tag_shards, "test")
    trk = m["track"]
    assert m["task"] == "multilabel" and trk["n"] == m["segment"]["n"] == 8 and m["tracks_expected"] == 8
    assert trk["roc_auc_macro"] == trk["roc_auc"] == pytest.approx(roc_auc_score(targets, scores, average="macro"), abs=1e-6)
    assert trk["pr_auc_macro"] == trk["map"] == pytest.approx(average_precision_score(targets, scores, average="macro"), abs=1e-6)
    assert trk["roc_auc_micro"] == pytest.approx(roc_auc_score(targets, scores, average="micro"), abs=1e-6)
    assert trk["pr_auc_micro"] == pytest.approx(average_precision_score(targets, scores, average="micro"), abs=1e-6)
    assert trk["f1_micro"] == pytest.approx(f1_score(targets, scores >= 0.5, average="micro", zero_division=0))
    thr = np.array(torch.load(trained["best_checkpoint"], weights_only=True)["extra"]["thresholds"])
    assert trk["f1_macro_tuned"] == pytest.approx(f1_score(targets, scores >= thr, average="macro", zero_division=0))
    for j, tag in enumerate(TAGS):
        assert trk["per_tag"][tag]["roc_auc"] == pytest.approx(roc_auc_score(targets[:, j], scores[:, j]), abs=1e-6)
        assert trk["per_tag"][tag]["support"] == int(targets[:, j].sum())
        assert trk["per_tag"][tag]["threshold"] == pytest.approx(thr[j])

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["track"]["map"] == pytest.approx(trk["map"])
    report = (out / "report.md").read_text()
    assert "## Per tag (track level)" in report and "Best tags by AP" in report and "Worst tags by AP" in report
    assert (out / "pr_curve.png").stat().st_size > 0 and (out / "tag_auc.png").stat().st_size > 0
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["key"] for r in rows) == sorted(keys)
    by_key = dict(zip(keys, scores))
    for r in rows:
        assert [float(r[f"p_{t}"]) for t in TAGS] == pytest.approx(list(by_key[r["key"]]), abs=1e-5)


def test_validation_figures_equal_evaluate_on_the_validation_split(trained, tag_shards):
    from engine.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(trained["last_checkpoint"], tag_shards, split="valid", num_workers=0, progress=False)
    row = trained["history"][-1]
    assert (row["valid_map"], row["valid_roc_auc"]) == (m["track"]["map"], m["track"]["roc_auc"])
    assert row["valid_segment_map"] == m["segment"]["map"] and row["valid_windows"] == m["windows"]


def test_a_single_label_checkpoint_on_a_tag_set_is_refused(tag_shards, tmp_path, make_tiny_checkpoint):
    from engine.evaluate import evaluate_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "genre.pt", TAGS, 8000, 8000)
    with pytest.raises(ValueError, match="single-label model"):
        evaluate_checkpoint(ckpt, tag_shards, split="test", num_workers=0, progress=False)


def test_select_metric_of_the_other_task_is_a_config_error(tag_shards, tmp_path):
    from engine.config import ConfigError

    cfg = load_config(TrainConfig, None, [f"data.shards={tag_shards}", f"run.out_dir={tmp_path / 'r'}", *QUICK,
                                          "eval.select_metric=accuracy"])  # fmt: skip
    with pytest.raises(ConfigError, match="select_metric"):
        train(cfg)


def test_cv_summary_holds_track_roc_auc_and_map_over_folds(tag_shards, tmp_path):
    from engine.compare import cv_comparison_markdown, cv_row
    from engine.cv import cross_validate

    cfg = load_config(TrainConfig, None, [f"data.shards={tag_shards}", *QUICK, "optim.epochs=1",
                                          "optim.max_steps_per_epoch=2"])  # fmt: skip
    result = cross_validate(cfg, tmp_path / "cv")
    summary = result["summary"]
    for key in ("track_roc_auc", "track_map", "segment_map"):
        assert set(summary[key]) == {"mean", "std"}
        folds = [r[key] for r in result["folds"]]
        assert summary[key]["mean"] == pytest.approx(float(np.mean(folds)))
        assert summary[key]["std"] == pytest.approx(float(np.std(folds)))
    assert "track_map" in (tmp_path / "cv" / "cv.md").read_text()
    row = cv_row("cnn", cfg, tmp_path)  # reads the finished folds of tmp_path / "cv" back
    table = cv_comparison_markdown([row])
    assert "track mAP (mean ± std)" in table and "track ROC-AUC (mean ± std)" in table


@pytest.mark.slow
def test_two_processes_give_the_same_tag_metrics_as_one(gloo_runs, tmp_path):
    """A run like ``trained``'s (QUICK, 3 epochs, balanced pos_weight, made in ``tests.engine.gloo_runs``),
    evaluated here and in the shared two-process launch."""
    from engine.evaluate import main

    run = gloo_runs["tags_evaluate"]
    assert main([*run.info["common"], "--out", str(tmp_path / "one")]) == 0
    run.check()
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((run.info["out"] / "metrics.json").read_text())
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    for level in ("segment", "track"):
        assert m2[level]["n"] == m1[level]["n"]
        for key in ("map", "roc_auc", "pr_auc_micro", "roc_auc_micro", "f1_macro", "f1_micro", "f1_macro_tuned"):
            assert m2[level][key] == pytest.approx(m1[level][key], abs=1e-12), (level, key)
        for tag in TAGS:
            for key in ("roc_auc", "ap", "support", "f1", "f1_tuned"):
                assert m2[level]["per_tag"][tag][key] == pytest.approx(m1[level]["per_tag"][tag][key], abs=1e-12)


def test_real_reader_trains_and_evaluates_tags(tag_shards, tmp_path):
    """The same run with the shards side's own multi-label reader, no stand-in: task, thresholds, tag metrics."""
    from engine.evaluate import evaluate_checkpoint

    cfg = load_config(TrainConfig, None, [f"data.shards={tag_shards}", f"run.out_dir={tmp_path / 'run'}", *QUICK,
                                          "optim.epochs=2"])  # fmt: skip
    summary = train(cfg)
    extra = torch.load(summary["best_checkpoint"], weights_only=True)["extra"]
    assert extra["task"] == "multilabel" and len(extra["thresholds"]) == len(TAGS)
    m = evaluate_checkpoint(summary["best_checkpoint"], tag_shards, split="test", num_workers=0, progress=False)
    assert m["track"]["n"] == 8 and 0.0 <= m["track"]["map"] <= 1.0
    assert summary["history"][-1]["valid_map"] == pytest.approx(
        evaluate_checkpoint(summary["last_checkpoint"], tag_shards, split="valid", num_workers=0, progress=False)["track"]["map"]
    )
