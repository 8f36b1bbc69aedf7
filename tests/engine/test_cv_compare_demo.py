"""Cross-validation, architecture comparison and the demo, end to end on tiny budgets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.compare import compare, comparison_markdown
from engine.config import ConfigError, load_config
from engine.cv import cross_validate, cv_markdown
from engine.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.arch=cnn", "model.features.n_mels=32", "model.features.n_fft=512", "model.augment.mixup_p=0",
    "data.segment_seconds=1.0", "data.batch_size=8", "data.num_workers=0", "optim.epochs=1",
    "optim.max_steps_per_epoch=2", "run.tensorboard=false", "run.progress=false",
]  # fmt: skip


# tiny models on a shared 2-core machine: intra-op threads cost more than they give
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(shards: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [f"data.shards={shards}", *TINY, *extra])


def test_cv_trains_one_model_per_fold_and_evaluates_each_on_its_own_fold(tmp_path, synthetic_shards):
    manifest = json.loads((synthetic_shards / "manifest.json").read_text())
    result = cross_validate(tiny_config(synthetic_shards, "data.eval_hop_seconds=0.5"), tmp_path / "cv")
    assert [r["fold"] for r in result["folds"]] == [0, 1, 2]
    for row in result["folds"]:
        eval_metrics = json.loads((tmp_path / "cv" / f"fold{row['fold']}" / "eval" / "metrics.json").read_text())
        assert eval_metrics["hop_seconds"] == pytest.approx(0.5)  # the run's evaluation settings are used
        assert 0.0 <= row["track_accuracy"] <= 1.0
        assert row["track_accuracy"] == pytest.approx(eval_metrics["track"]["accuracy"])
    # every training-split track is tested exactly once across the folds
    tested = sum(
        json.loads((tmp_path / "cv" / f"fold{k}" / "eval" / "metrics.json").read_text())["track"]["n"] for k in range(3)
    )
    assert tested == manifest["splits"]["train"]["tracks"]
    accs = [r["track_accuracy"] for r in result["folds"]]
    assert result["summary"]["track_accuracy"]["mean"] == pytest.approx(sum(accs) / 3)
    table = cv_markdown(result)
    assert "mean ± std" in table and table.count("\n| ") >= 4
    # resumable fold by fold: a finished cv is read back, nothing retrained
    mtime = (tmp_path / "cv" / "fold0" / "run" / "best.pt").stat().st_mtime
    again = cross_validate(tiny_config(synthetic_shards, "data.eval_hop_seconds=0.5"), tmp_path / "cv")
    assert again["folds"] == result["folds"]
    assert (tmp_path / "cv" / "fold0" / "run" / "best.pt").stat().st_mtime == mtime


def test_cv_refuses_a_shard_set_without_folds_or_with_other_k(tmp_path, synthetic_shards):
    with pytest.raises(ConfigError, match="made with 3 folds"):
        cross_validate(tiny_config(synthetic_shards), tmp_path / "cv", folds=5)


def test_compare_writes_one_consistent_row_per_model_and_resumes(tmp_path, synthetic_shards):
    rows = compare(tiny_config(synthetic_shards), ["cnn", "rnn"], tmp_path / "cmp", features=["logmel"])
    assert [r["model"] for r in rows] == ["cnn", "rnn"]
    for r in rows:
        metrics = json.loads((tmp_path / "cmp" / r["model"] / "eval" / "metrics.json").read_text())
        assert r["track_accuracy"] == pytest.approx(metrics["track"]["accuracy"])
        assert r["segment_macro_f1"] == pytest.approx(metrics["segment"]["macro_f1"])
        assert r["parameters"] > 1000 and r["train_clips_per_s"] > 0 and r["inference_clips_per_s"] > 0
        assert r["features"] == "logmel"
    assert rows[0]["parameters"] != rows[1]["parameters"]
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["cnn", "rnn"]
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table == comparison_markdown(rows)
    assert "| cnn | logmel |" in table and "| rnn | logmel |" in table and " - |" not in table
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000
    again = compare(tiny_config(synthetic_shards), ["cnn", "rnn"], tmp_path / "cmp", features=["logmel"])
    assert again == rows  # read back, not retrained


def test_compare_validates_every_model_before_training_any(tmp_path, synthetic_shards):
    with pytest.raises((ConfigError, KeyError), match="nosuch"):
        compare(tiny_config(synthetic_shards), ["cnn", "nosuch"], tmp_path / "cmp")
    assert not (tmp_path / "cmp" / "cnn").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_ends_with_checkpoint_and_accuracy_lines(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "demo", "--size", "tiny", "--out", str(out), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-2:]
    assert last[0] == f"checkpoint: {out / 'run' / 'best.pt'}"
    m = re.fullmatch(r"track accuracy: (\d+\.\d)%", last[1])
    assert m, last
    report = json.loads((out / "demo.json").read_text())
    assert float(m.group(1)) == pytest.approx(100 * report["track_accuracy"], abs=0.05)
    for path in ("eval/report.md", "eval/metrics.json", "eval/confusion_matrix.png", "eval/predictions.csv",
                 "run/curves.png", "shards/manifest.json"):  # fmt: skip
        assert (out / path).is_file(), path
    lines = [json.loads(x) for x in (out / "classified.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(x["status"] == "ok" for x in lines)  # 4 genres x 1 new clip
