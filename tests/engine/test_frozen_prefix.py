"""Fine-tuning after a frozen prefix: ``data.crop_grid`` crops are evaluation windows; ``optim.cache_frozen_prefix``
trains to the same losses and weights as the uncached run on those crops, computes each window's prefix once, and
refuses a setting that would make the cache stale; ``optim.head_init: lbfgs`` starts from scikit-learn's
logistic regression on the pooled windows and records it as epoch 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from engine.checkpoint import load_model
from engine.config import ConfigError, load_config
from engine.feature_cache import FeatureStore
from engine.models.inputs import model_input
from engine.tasks import get_task
from engine.train import TrainConfig, train
from engine.train.data import open_shard_set
from engine.train.pooled_fit import pooled_training_set
from shards.crop_stream import CropStream
from shards.window_stream import WindowStream

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 22050
PREFIX = "run.freeze=[backbone.input_bn,backbone.timbral,backbone.temporal]"
#: a musicnn small enough for CPU tests (front end 2 x 12 + 3 x 3 = 33 channels, mid-end 3 x 8), 1-s windows
TINY = ["model.arch=musicnn", "model.params.frontend_filters=0.1", "model.params.midend_filters=8",
        "model.params.backend_units=8", "model.params.dropout=0.0", "model.params.head_input=meanmax",
        "model.features.features=[logmel]", "model.features.n_mels=32", "model.features.n_fft=512",
        "model.features.hop_length=512", "model.augment.enabled=false", "data.segment_seconds=1.0",
        "data.crops_per_track=2", "data.batch_size=8", "data.eval_batch_size=32", "data.num_workers=0",
        "optim.schedule=none", "optim.early_stop_patience=0", "run.progress=false", "run.tensorboard=false",
        "data.crop_grid=true", PREFIX]  # fmt: skip


def tiny_config(shards: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [f"data.shards={shards}", f"run.out_dir={out}", *TINY, *extra])


def window_bytes(shards: Path, split: str, window: int) -> set[bytes]:
    stream = WindowStream(shards, split, window_samples=window, batch_size=64)
    return {row.numpy().tobytes() for b in stream for row in model_input(b)[b["valid"].bool()]}


def test_crop_grid_crops_are_evaluation_windows_and_random_crops_are_not(synthetic_shards):
    windows = window_bytes(synthetic_shards, "train", SR // 2)
    for hop, inside in ((SR // 2, True), (0, False)):
        stream = CropStream(synthetic_shards, "train", crop_samples=SR // 2, batch_size=16, crops_per_track=3,
                            grid_hop=hop, shuffle_buffer=1)  # fmt: skip
        for epoch in (0, 1):
            stream.set_epoch(epoch)
            crops = [row.numpy().tobytes() for b in stream for row in b["wave"]]
            assert len(crops) == 3 * 32
            hits = sum(c in windows for c in crops)
            assert hits == len(crops) if inside else hits < len(crops) // 4, (hop, epoch)


def test_cached_prefix_trains_like_the_uncached_model_and_computes_each_window_once(synthetic_shards, tmp_path):
    steps = ["optim.epochs=2", "optim.max_steps_per_epoch=3", "optim.lr=0.01"]
    plain = train(tiny_config(synthetic_shards, tmp_path / "plain", *steps))
    store = FeatureStore()
    cached = train(tiny_config(synthetic_shards, tmp_path / "cached", *steps, "optim.cache_frozen_prefix=true"),
                   feature_cache=store)  # fmt: skip
    for a, b in zip(plain["history"], cached["history"], strict=True):
        for key in ("train_loss", "valid_loss", "valid_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    wa = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)["model_state"]
    wb = torch.load(tmp_path / "cached" / "last.pt", weights_only=True)["model_state"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
    (memory,) = store.memory.values()
    distinct = window_bytes(synthetic_shards, "train", SR) | window_bytes(synthetic_shards, "valid", SR)
    assert 0 < len(memory) <= len(distinct)  # one prefix output per window, whatever the epochs re-read


@pytest.mark.parametrize(("extra", "message"), [
    (["data.crop_grid=false"], "data.crop_grid must be true"),
    (["optim.freeze_epochs=1"], "optim.freeze_epochs must be 0"),
    (["model.augment.enabled=true", "model.augment.mixup_p=0.5", "model.augment.gain_p=0", "model.augment.noise_p=0",
      "model.augment.shift_p=0", "model.augment.polarity_p=0", "model.augment.freq_masks=0",
      "model.augment.time_masks=0", "model.augment.time_stretch_p=0", "model.augment.pitch_shift_p=0"],
     "mixup_p must be 0"),
    (["run.freeze=[backbone.input_bn,backbone.timbral]"], r"not frozen: backbone\.temporal"),
    (["model.arch=cnn", "model.params={}", "run.freeze=[backbone.blocks.0]"], "has no frozen-prefix protocol"),
])  # fmt: skip
def test_cache_frozen_prefix_refuses_settings_that_would_make_it_stale(synthetic_shards, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        train(tiny_config(synthetic_shards, tmp_path / "run", "optim.cache_frozen_prefix=true", *extra))


def test_head_init_starts_from_sklearns_logistic_regression_and_is_epoch_0(synthetic_shards, tmp_path):
    """Everything but the classifier frozen and a negligible rate: the checkpoint after epoch 1 still holds the
    exactly initialised head, whose validation probabilities are scikit-learn's on the pool standardised as the
    pooling BatchNorm standardises it (``sqrt(var + eps)``: a near-constant value is damped, not blown up)."""
    cfg = tiny_config(synthetic_shards, tmp_path / "run", "optim.epochs=1", "optim.max_steps_per_epoch=1",
                      "optim.lr=1e-12", "optim.head_init=lbfgs", "optim.cache_frozen_prefix=true",
                      "run.freeze=[backbone.input_bn,backbone.timbral,backbone.temporal,backbone.midend,backbone.pool_bn]")  # fmt: skip
    summary = train(cfg)
    assert [r["epoch"] for r in summary["history"]] == [0, 1]
    assert summary["history"][0]["head_init"] == "lbfgs" and summary["history"][0]["C"] == 1.0
    model = load_model(summary["last_checkpoint"])[0].eval()
    cfg, shards = open_shard_set(cfg)
    with torch.no_grad():
        train_set = pooled_training_set(cfg, shards, get_task("singlelabel"),
                                        lambda clips, rows: model.backbone.pooled(model.features(rows)), torch.device("cpu"))  # fmt: skip
    x, y, w = train_set.x.numpy(), train_set.targets.numpy(), train_set.weight.numpy()
    mean, scale = x.mean(axis=0), np.sqrt(x.var(axis=0) + model.backbone.pool_bn.eps)

    def standardise(a: np.ndarray) -> np.ndarray:
        return (a - mean) / scale

    lr = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(standardise(x), y, sample_weight=w)
    valid = WindowStream(synthetic_shards, "valid", window_samples=SR, batch_size=64)
    rows = torch.cat([model_input(b)[b["valid"].bool()] for b in valid])
    with torch.no_grad():
        ours = model.probabilities(rows).numpy()
        want = lr.predict_proba(standardise(model.backbone.pooled(model.features(rows)).double().numpy()))
    np.testing.assert_allclose(ours, want, atol=1e-3)


def test_a_run_with_head_init_resumes_after_its_saved_epochs_without_refitting(synthetic_shards, tmp_path):
    quick = ["optim.max_steps_per_epoch=1", "optim.head_init=lbfgs", "optim.cache_frozen_prefix=true"]
    first = train(tiny_config(synthetic_shards, tmp_path / "run", "optim.epochs=1", *quick))
    second = train(tiny_config(synthetic_shards, tmp_path / "run", "optim.epochs=2", "run.resume=true", *quick))
    assert [r["epoch"] for r in second["history"]] == [0, 1, 2]
    assert second["history"][:2] == first["history"]  # epoch 0 (the fit) and epoch 1 read back, not redone
    assert [r.get("head_init") for r in second["history"]] == ["lbfgs", None, None]


def test_head_init_with_the_exact_solver_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="optim.solver=lbfgs already fits the head exactly: leave head_init at none"):
        load_config(TrainConfig, str(Path(__file__).resolve().parents[2] / "configs" / "stats.yaml"),
                    ["data.shards=x", "optim.head_init=lbfgs"])
