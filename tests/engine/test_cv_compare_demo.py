"""Cross-validation, architecture comparison and the demo, end to end on tiny budgets."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from engine.compare import compare, comparison_markdown, parse_models, row_configs
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
    # both track aggregates are flattened (the headline mean_prob, mean_logprob beside it), and train time per fold
    for row in result["folds"]:
        eval_metrics = json.loads((tmp_path / "cv" / f"fold{row['fold']}" / "eval" / "metrics.json").read_text())
        for agg in ("mean_prob", "mean_logprob"):
            assert row[f"track_{agg}_accuracy"] == pytest.approx(eval_metrics[f"track_{agg}"]["accuracy"])
        assert row["train_seconds"] > 0 and row["parameters"] > 1000
    assert result["train_seconds_total"] == pytest.approx(sum(r["train_seconds"] for r in result["folds"]))
    table = cv_markdown(result)
    assert "mean ± std" in table and table.count("\n| ") >= 4
    assert "track_mean_logprob_accuracy" in table and "train s" in table
    # resumable fold by fold: a finished cv is read back, nothing retrained
    mtime = (tmp_path / "cv" / "fold0" / "run" / "best.pt").stat().st_mtime
    again = cross_validate(tiny_config(synthetic_shards, "data.eval_hop_seconds=0.5"), tmp_path / "cv")
    assert again["folds"] == result["folds"]
    assert (tmp_path / "cv" / "fold0" / "run" / "best.pt").stat().st_mtime == mtime


def test_cv_refuses_a_shard_set_without_folds_or_with_other_k(tmp_path, synthetic_shards):
    with pytest.raises(ConfigError, match="made with 3 folds"):
        cross_validate(tiny_config(synthetic_shards), tmp_path / "cv", folds=5)


def test_cv_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, synthetic_shards, capsys):
    import yaml

    from engine.cv import main as cv_main

    out = tmp_path / "cv"
    rc = cv_main(["--config", str(ROOT / "configs" / "crnn.yaml"), "--shards", str(synthetic_shards), "--out", str(out),
                  "--print-config", "optim.epochs=2"])  # fmt: skip
    assert rc == 0 and not out.exists()
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["arch"] == "crnn" and cfg["optim"]["epochs"] == 2 and cfg["data"]["crops_per_track"] == 8


def test_compare_writes_one_consistent_row_per_model_and_resumes(tmp_path, synthetic_shards):
    rows = compare(tiny_config(synthetic_shards), ["cnn", "rnn"], tmp_path / "cmp", features=["logmel"], baseline=False)
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
    again = compare(tiny_config(synthetic_shards), ["cnn", "rnn"], tmp_path / "cmp", features=["logmel"], baseline=False)
    assert again == rows  # read back, not retrained


# overrides every row takes (arch-neutral: each row's config file names its architecture)
ROW_OVERRIDES = [
    "data.segment_seconds=1.0", "data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=0",
    "optim.epochs=1", "optim.max_steps=0", "optim.max_steps_per_epoch=2", "run.tensorboard=false", "run.progress=false",
]  # fmt: skip
TINY_CNN_MODEL = """model:
  arch: cnn
  params: {channels: [4, 8], hidden: 16, dropout: 0.0}
  features: {features: [logmel], n_mels: 32, n_fft: 512}
  augment: {mixup_p: 0.0}
"""


def test_compare_cv_puts_stats_first_and_gives_mean_std_and_time_per_fold_of_each_recipe(tmp_path, synthetic_shards):
    # two recipes of one architecture: the seed's plain one and a small-set one (crops, EMA, longer eval windows)
    plain, recipe = tmp_path / "plain.yaml", tmp_path / "recipe.yaml"
    plain.write_text(TINY_CNN_MODEL)
    recipe.write_text(TINY_CNN_MODEL + "data: {crops_per_track: 2, eval_segment_seconds: 2.0}\noptim: {ema_decay: 0.9}\n")
    base = load_config(TrainConfig, None, [f"data.shards={synthetic_shards}", *ROW_OVERRIDES])
    rows = compare(base, f"plain={plain},recipe={recipe}", tmp_path / "cmp", cv=True, overrides=ROW_OVERRIDES)
    assert [r["model"] for r in rows] == ["stats", "plain", "recipe"]  # the baseline added, first
    assert [r["arch"] for r in rows] == ["stats", "cnn", "cnn"]
    for r in rows:
        folds = [json.loads((tmp_path / "cmp" / r["model"] / "cv" / f"fold{k}" / "test_metrics.json").read_text()) for k in range(3)]
        for key in ("track_accuracy", "track_mean_logprob_accuracy", "segment_accuracy"):
            values = [f[key] for f in folds]
            assert r[key] == pytest.approx(sum(values) / 3)
            assert r[f"{key}_std"] == pytest.approx(statistics.pstdev(values))
        assert r["fold_track_accuracy"] == [f["track_accuracy"] for f in folds]
        seconds = [f["train_seconds"] for f in folds]
        assert r["fold_train_seconds"] == seconds and all(t > 0 for t in seconds)
        assert r["train_seconds_total"] == pytest.approx(sum(seconds))
        assert r["train_seconds_per_fold"] == pytest.approx(sum(seconds) / 3)
        assert r["parameters"] == folds[0]["parameters"] > 100
    # the recipe row really ran its recipe: 2-s evaluation windows in its checkpoint's evaluation
    metrics = json.loads((tmp_path / "cmp" / "recipe" / "cv" / "fold0" / "eval" / "metrics.json").read_text())
    assert metrics["segment_seconds"] == pytest.approx(2.0)
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table == comparison_markdown(rows)
    lines = [x for x in table.splitlines() if x.startswith("| ")]
    assert lines[1].startswith("| stats | stats | mfcc+chroma |")
    r = rows[1]
    assert f"{100 * r['track_accuracy']:.1f} ± {100 * r['track_accuracy_std']:.1f}%" in lines[2]
    assert " / ".join(f"{t:.0f}" for t in r["fold_train_seconds"]) in lines[2]
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000
    assert compare(base, f"plain={plain},recipe={recipe}", tmp_path / "cmp", cv=True, overrides=ROW_OVERRIDES) == rows


def test_compare_rows_name_their_config_and_shards_and_stats_moves_first(tmp_path, synthetic_shards):
    specs = parse_models(f"crnn,probe={ROOT / 'configs/probe.yaml'}@{tmp_path / 'emb'},base={ROOT / 'configs/stats.yaml'}")
    assert [(s.name, s.arch, s.shards) for s in specs] == [
        ("crnn", "crnn", None), ("probe", None, str(tmp_path / "emb")), ("base", None, None)
    ]  # fmt: skip
    base = load_config(TrainConfig, None, [f"data.shards={synthetic_shards}"])
    configs = row_configs(base, specs, overrides=["optim.epochs=3"])
    assert list(configs) == ["base", "crnn", "probe"]  # the stats row first; the probe (stats on embeddings) is not it
    assert configs["probe"].data.shards == str(tmp_path / "emb") and configs["probe"].model.features.features == ["precomputed"]
    assert configs["base"].data.shards == str(synthetic_shards) and configs["base"].optim.epochs == 3
    with pytest.raises(ConfigError, match="distinct"):
        parse_models("cnn,cnn")
    with pytest.raises(ConfigError, match="not found"):
        parse_models("x=nosuch.yaml")


def test_compare_validates_every_model_before_training_any(tmp_path, synthetic_shards):
    with pytest.raises((ConfigError, KeyError), match="nosuch"):
        compare(tiny_config(synthetic_shards), ["cnn", "nosuch"], tmp_path / "cmp")
    assert not (tmp_path / "cmp" / "cnn").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_ends_with_checkpoint_and_accuracy_lines(tmp_path, capsys):
    """``python -m engine demo --size tiny --epochs 1 --quiet``'s command ``main``, in this process (the
    interpreter and torch start-up of a subprocess buy nothing here)."""
    from engine.demo import main

    out = tmp_path / "demo"
    rc = main(["--size", "tiny", "--epochs", "1", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    last = captured.out.strip().splitlines()[-2:]
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
