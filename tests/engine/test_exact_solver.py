"""``optim.solver: lbfgs``: the exact logistic regression of a linear head against scikit-learn (on a model and
through train + evaluate), the refusals, and cv's features computed once for every fold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from engine.checkpoint import load_model
from engine.config import ConfigError, from_dict, load_config
from engine.cv import cross_validate, evaluate_best, flatten_metrics
from engine.evaluate import evaluate_checkpoint
from engine.models import ARCHS
from engine.train import TrainConfig, train
from engine.train.pooled_fit import PooledSet, solve
from shards.window_stream import WindowStream

ROOT = Path(__file__).resolve().parents[2]

#: configs/stats.yaml on the 3-s synthetic clips: one 3-s window per track, an exact fit with a given C
EXACT = ["data.segment_seconds=3.0", "data.num_workers=0", "run.progress=false", "run.tensorboard=false",
         "optim.solver=lbfgs"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def stats_config(shards: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, str(ROOT / "configs" / "stats.yaml"),
                       [f"data.shards={shards}", f"run.out_dir={out}", *EXACT, *extra])  # fmt: skip


def _pooled_problem(multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Backbone inputs [60, 1, 8, 20] whose pooled mean/std separate 3 classes (or 3 tags) only in part."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    x = rng.standard_normal((60, 1, 8, 20)) * np.logspace(-1, 1, 8).reshape(1, 1, 8, 1)
    x[:, 0, :3, :] += 0.8 * np.eye(3)[y][:, :, None]  # class c lifts band c
    if multilabel:
        targets = (rng.random((60, 3)) < 0.3) | (np.eye(3)[y] > 0)
        return x.astype(np.float32), targets.astype(np.float32)
    return x.astype(np.float32), y


@pytest.mark.parametrize("multilabel", [False, True], ids=["multinomial", "one-vs-rest"])
def test_exact_fit_loaded_into_the_stats_head_gives_sklearn_probabilities(multilabel):
    feats, y = _pooled_problem(multilabel)
    cls = ARCHS.get("stats")
    net = cls(from_dict(cls.Config, {"stats": ["mean", "std"]}, "stats"), (1, 8, 20), 3).eval()
    pooled = net.pooled(torch.from_numpy(feats)).double()  # (60, 16)
    cfg = load_config(TrainConfig, None, ["data.shards=unused", "optim.solver_c=0.3"])
    data = PooledSet(pooled, torch.from_numpy(y) if multilabel else torch.from_numpy(y).long(),
                     torch.ones(60, dtype=torch.float64), np.arange(60) % 3, 60)  # fmt: skip
    fit = solve(cfg, data, None, 3)
    norm, classifier = net.linear_head()
    fit.load_into(classifier, norm)
    with torch.no_grad():
        logits = net(torch.from_numpy(feats)).double()
    ours = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
    z = StandardScaler().fit_transform(pooled.numpy())
    lr = LogisticRegression(C=0.3, tol=1e-10, max_iter=10000)
    want = (OneVsRestClassifier(lr).fit(z, y) if multilabel else lr.fit(z, y)).predict_proba(z)
    np.testing.assert_allclose(ours.numpy(), want, atol=1e-3)


def _pooled_tracks(
    checkpoint: Path, shards: Path, split: str, holdout: int = -1
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(keys, pooled [N, 144], labels [N]) of a split's 3-s tracks, by the checkpoint's front end and NumPy."""
    model = load_model(checkpoint)[0].eval()
    stream = WindowStream(shards, split, window_samples=3 * 22050, batch_size=64, holdout_fold=holdout)
    keys, xs, ys = stream.track_keys(), [], []
    for batch in stream:
        ok = batch["valid"].bool()
        with torch.no_grad():
            feats = model.features(batch["wave"][ok]).double().numpy()  # (B, 1, 72, frames)
        flat = feats.reshape(feats.shape[0], -1, feats.shape[-1])
        xs.append(np.concatenate([flat.mean(-1), flat.std(-1)], axis=1))
        ys.append(batch["label"][ok].numpy())
    return keys, np.concatenate(xs), np.concatenate(ys)


def test_train_with_lbfgs_writes_a_checkpoint_whose_evaluation_is_sklearns_prediction(
    synthetic_shards, tmp_path
):
    summary = train(stats_config(synthetic_shards, tmp_path / "run", "optim.solver_c=1.0"))
    assert summary["best_checkpoint"] and Path(summary["best_checkpoint"]).read_bytes() == Path(
        summary["last_checkpoint"]).read_bytes()  # fmt: skip
    assert [r["epoch"] for r in summary["history"]] == [0] and summary["best"]["solver"] == "lbfgs"
    assert summary["features"]["computed"] == summary["best"]["train_tracks"]  # one window per track, once
    _, x_train, y_train = _pooled_tracks(summary["best_checkpoint"], synthetic_shards, "train")
    keys, x_test, _ = _pooled_tracks(summary["best_checkpoint"], synthetic_shards, "test")
    sk = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(
        StandardScaler().fit(x_train).transform(x_train), y_train
    )
    want = sk.predict_proba(StandardScaler().fit(x_train).transform(x_test))
    evaluate_checkpoint(summary["best_checkpoint"], synthetic_shards, "test", tmp_path / "eval", num_workers=0,
                        progress=False)  # fmt: skip
    with open(tmp_path / "eval" / "predictions.csv") as f:
        labels = json.loads((synthetic_shards / "manifest.json").read_text())["labels"]
        got = {r["key"]: [float(r[f"p_{n}"]) for n in labels] for r in csv.DictReader(f)}
    np.testing.assert_allclose(np.array([got[k] for k in keys]), want, atol=1e-3)


@pytest.mark.parametrize(("override", "message"), [
    ("model.params.hidden=16", "linear head"),
    ("model.augment.noise_p=0.5", "do not change during training"),
    ("model.params.dropout=0.2", "model.params.dropout"),
    ("model.augment.mixup_p=0.5", "mixup_p"),
])  # fmt: skip
def test_lbfgs_refuses_a_nonlinear_augmenting_or_regularised_model_before_writing(
    synthetic_shards, tmp_path, override, message
):
    with pytest.raises(ConfigError, match=message):
        train(stats_config(synthetic_shards, tmp_path / "run", override))
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def five_fold_shards(tmp_path_factory) -> Path:
    from tests.engine.conftest import make_synthetic_shards

    return make_synthetic_shards(tmp_path_factory.mktemp("five"), clips_per_genre=8, duration=2.0, folds=5)


def test_cv_computes_each_tracks_features_once_for_five_folds_and_matches_uncached_folds(
    five_fold_shards, tmp_path
):
    cfg = stats_config(
        five_fold_shards, tmp_path / "unused", "data.segment_seconds=2.0", "optim.solver_c=0.5"
    )
    result = cross_validate(cfg, tmp_path / "cv")
    splits = json.loads((five_fold_shards / "manifest.json").read_text())["splits"]
    n_train, n_valid = int(splits["train"]["tracks"]), int(splits["valid"]["tracks"])
    assert len(result["folds"]) == 5
    assert sum(r["features_computed"] for r in result["folds"]) == n_train  # each track once across 5 folds
    # one file per clip: the training tracks, the validation tracks every fold validates on (and the padding
    # row that fills the last validation batch)
    assert len(list((tmp_path / "cv" / "feature_cache").rglob("*.npy"))) in (n_train + n_valid, n_train + n_valid + 1)
    for row in result["folds"]:  # the same fold without the shared cache: the same test figures
        fold = row["fold"]
        fold_cfg = stats_config(five_fold_shards, tmp_path / f"plain{fold}", "data.segment_seconds=2.0",
                                "optim.solver_c=0.5", f"data.holdout_fold={fold}")  # fmt: skip
        summary = train(fold_cfg)
        assert summary["features"]["computed"] == n_train - sum(
            1 for f in WindowStream(five_fold_shards, "train", window_samples=1, batch_size=1).track_folds() if f == fold
        )  # fmt: skip
        plain = flatten_metrics(  # the figures only: no report folder (its plots cost a second per fold)
            evaluate_best(cfg, summary["best_checkpoint"], "train", None, fold=fold)
        )
        for key, value in plain.items():
            assert row[key] == pytest.approx(value, abs=1e-6), key
