"""Training, evaluation and the input-kind checks on MSD feature shards made by the real ingest from real
HDF5 track files (h5py) and a tagtraum-style label file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import load_model
from engine.checkpoint_format import save_checkpoint
from engine.classify import CheckpointInputError, check_input_kind
from engine.compare import inference_clips_per_s
from engine.config import ConfigError, load_config
from engine.evaluate import evaluate_checkpoint
from engine.evaluate import main as evaluate_main
from engine.models import ModelConfig, build_model
from engine.train import TrainConfig, train
from shards.format import load_manifest
from shards.ingest import IngestConfig, run_ingest
from shards.msd import write_msd_file

GENRES = ("Rock", "Jazz", "Rap")
#: Rock dominates, as in the real MSD genre sets.
TRACKS = {"Rock": 18, "Jazz": 9, "Rap": 9}
#: Tiny backbones (a few thousand parameters): the test is about the plumbing, not the architectures.
TINY = {
    "cnn1d": ["model.params.channels=[16,16]", "model.params.hidden=16"],
    "rnn": ["model.params.hidden=16", "model.params.layers=1"],
    "crnn": [
        "model.params.channels=[8,8]",
        "model.params.pools=[[2,2],[2,1]]",
        "model.params.rnn_hidden=8",
        "model.params.rnn_layers=1",
    ],
}


# two cores shared with DataLoader and subprocesses: intra-op threads cost more than they give
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def msd_shards(tmp_path_factory) -> Path:
    """36 tracks (Rock 18, Jazz 9, Rap 9; two per artist) whose timbre / chroma carry the genre, plus label
    lines for tracks without files; ingested with artist-grouped 60/20/20 splits."""
    root = tmp_path_factory.mktemp("msd")
    rng = np.random.default_rng(0)
    lines = ["# tagtraum CD2C-style annotations", ""]
    i = 0
    for g, genre in enumerate(GENRES):
        for _ in range(TRACKS[genre]):
            track_id = f"TRB{i:05d}QQQ0000000"
            n = int(rng.integers(60, 140))
            timbre = rng.normal(0, 20, (n, 12)) + 25.0 * (np.arange(12) % 3 == g)  # genre -> timbre bands
            pitches = rng.random((n, 12)) * 0.5 + 0.5 * (np.arange(12) == 4 * g)
            loud = rng.normal(-12 - 4 * g, 3, n)
            starts = np.cumsum(rng.uniform(0.15, 0.35, n)) - 0.15
            path = root / "data" / "B" / str(i % 3) / str(i % 2) / f"{track_id}.h5"
            write_msd_file(path, timbre, pitches, loud, starts, artist_id=f"AR{genre}{i // 2:05d}",
                           tempo=80.0 + 20 * g)  # fmt: skip
            lines.append(f"{track_id}\t{genre}")
            i += 1
    lines += ["TRZZZZZZZZZZZZZZZZ\tRock", "TRYYYYYYYYYYYYYYYY\tJazz\tBlues"]
    labels = root / "cd2c.cls"
    labels.write_text("\n".join(lines) + "\n")
    out = root / "shards"
    run_ingest(IngestConfig(source=root / "data", out=out, layout="msd", labels=labels, workers=1,
                            split_ratios=(0.6, 0.2, 0.2), progress=False))  # fmt: skip
    return out


def feature_config(shards: Path, out: Path, arch: str, *extra: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        None,
        [
            f"data.shards={shards}",
            f"run.out_dir={out}",
            f"model.arch={arch}",
            "model.features.features=[precomputed]",
            "data.segment_seconds=10",  # 40 segments at the nominal 4 segments / s
            "data.batch_size=8",
            "data.num_workers=0",
            "optim.lr=3e-3",
            "optim.class_weights=true",
            "optim.early_stop_patience=0",
            "run.tensorboard=false",
            "run.progress=false",
            *TINY[arch],
            *extra,
        ],
    )


def test_msd_shards_carry_the_feature_manifest(msd_shards):
    m = load_manifest(msd_shards)
    assert m["kind"] == "features" and m["feature_dim"] == 25 and m["sample_rate"] == 4
    assert sum(m["splits"][s]["tracks"] for s in ("train", "valid", "test")) == 36
    assert sum(m["splits"][s]["per_label"]["Rock"] for s in m["splits"]) == 18
    assert sorted(s["path"] for s in m["skipped"]) == ["TRYYYYYYYYYYYYYYYY", "TRZZZZZZZZZZZZZZZZ"]


def test_cnn1d_trains_on_msd_features_with_stored_normalisation_and_evaluates_macro_f1_first(
    msd_shards, tmp_path, capsys
):
    cfg = feature_config(msd_shards, tmp_path / "run", "cnn1d", "optim.epochs=6", "model.augment.mixup_p=0")
    res = train(cfg)
    assert cfg.model.features.norm_mean == []  # the caller's config is not mutated
    assert len(res["history"]) == 6 and res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]

    model, ckpt = load_model(res["best_checkpoint"])
    feats_cfg = ckpt["config"]["model"]["features"]
    assert feats_cfg["features"] == ["precomputed"] and feats_cfg["feature_dim"] == 25
    assert feats_cfg["norm"] == "stats" and len(feats_cfg["norm_mean"]) == len(feats_cfg["norm_std"]) == 25
    # the stored statistics are those of the training frames: loudness_max (dim 24) lies in [-30, 0] dB,
    # chroma (12..23) in [0, 1], timbre std ~20-25
    assert -25 < feats_cfg["norm_mean"][24] < -5 and all(0 < v < 1 for v in feats_cfg["norm_mean"][12:24])
    assert all(15 < v < 35 for v in feats_cfg["norm_std"][:12])
    assert ckpt["sample_rate"] == 4 and ckpt["segment_samples"] == 40 and model.input_kind == "features"
    assert model.in_shape == (1, 25, 40)

    manifest = load_manifest(msd_shards)
    m = evaluate_checkpoint(res["best_checkpoint"], msd_shards, "test", tmp_path / "ev", num_workers=0,
                            progress=False)  # fmt: skip
    assert m["track"]["n"] == manifest["splits"]["test"]["tracks"] == m["tracks_expected"]
    assert m["tracks_missing"] == [] and m["segment_seconds"] == 10.0
    assert 0.0 <= m["track"]["macro_f1"] <= 1.0 and 0.0 <= m["segment"]["macro_f1"] <= 1.0
    assert m["track"]["accuracy"] >= 0.5  # genre is in the features: well above chance (1/3)
    report = (tmp_path / "ev" / "report.md").read_text()
    headline = report.split("## Headline", 1)[1].splitlines()
    assert headline[4].startswith("| macro F1 |")  # first row under the table header
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["track"]["macro_f1"] == pytest.approx(m["track"]["macro_f1"])

    assert evaluate_main([res["best_checkpoint"], "--shards", str(msd_shards), "--out", str(tmp_path / "ev2"),
                          "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    metric_lines = [ln for ln in printed if ln[:18].strip() and ln.rstrip().endswith("%")]
    assert metric_lines[0].startswith("macro F1")


@pytest.mark.parametrize("arch", ["rnn", "crnn"])
def test_sequence_backbones_train_on_msd_features(msd_shards, tmp_path, arch):
    res = train(feature_config(msd_shards, tmp_path / arch, arch, "optim.epochs=1"))
    row = res["history"][0]
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["valid_loss"])
    assert row["valid_tracks"] == load_manifest(msd_shards)["splits"]["valid"]["tracks"]
    assert 0.0 <= row["valid_track_f1"] <= 1.0


def test_input_kind_mismatches_are_clear_errors(msd_shards, tmp_path):
    audio_cfg = load_config(TrainConfig, None, [f"data.shards={msd_shards}", f"run.out_dir={tmp_path / 'a'}",
                                                "data.num_workers=0", "run.tensorboard=false"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"holds precomputed feature sequences .*features=\[precomputed\]"):
        train(audio_cfg)
    # an audio checkpoint evaluated on MSD shards
    audio = build_model(ModelConfig(arch="cnn1d", params={"channels": [4], "hidden": 4}), 3, 8000, 8000)
    path = tmp_path / "audio.pt"
    save_checkpoint(path, model=audio, config={"model": audio.config_dict()}, labels=list(GENRES),
                    sample_rate=8000, segment_samples=8000, epoch=0, metrics={})  # fmt: skip
    with pytest.raises(ValueError, match="takes audio but shard set .* holds feature sequences"):
        evaluate_checkpoint(path, msd_shards, "test", None, num_workers=0, progress=False)


def test_msd_checkpoint_refuses_audio_classification_and_audio_input(msd_shards, tmp_path):
    res = train(feature_config(msd_shards, tmp_path / "r", "cnn1d", "optim.epochs=1"))
    with pytest.raises(CheckpointInputError, match="MSD-trained models need MSD features, not audio"):
        check_input_kind(res["best_checkpoint"])
    model, _ = load_model(res["best_checkpoint"])
    with pytest.raises(ValueError, match=r"expected \[B, frames, D=25\]"):
        model(torch.zeros(2, 8000))
    probs = model.probabilities(torch.randn(2, 57, 25).half())  # any frame count
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(1), torch.ones(2))
    assert inference_clips_per_s(res["best_checkpoint"], batch_size=4, repeats=1) > 0  # compare's timing


def test_normalisation_is_reproducible_and_follows_the_config(msd_shards):
    from engine.feature_shards import prepare_model_config
    from kernels.features import FrontendConfig

    manifest = load_manifest(msd_shards)
    base = ModelConfig(arch="cnn1d", features=FrontendConfig(features=["precomputed"]))
    kw = dict(split="train", segment_frames=40, batch_size=8, seed=0)
    a = prepare_model_config(base, manifest, str(msd_shards), **kw)
    b = prepare_model_config(base, manifest, str(msd_shards), **kw)  # every rank / a resumed run: the same
    assert a.features.norm_mean == b.features.norm_mean and a.features.norm_std == b.features.norm_std
    assert a.features.feature_dim == 25 and a.features.norm == "stats" and base.features.norm_mean == []
    learned = ModelConfig(arch="cnn1d", features=FrontendConfig(features=["precomputed"], norm="batchnorm"))
    bn = prepare_model_config(learned, manifest, str(msd_shards), **kw)
    assert bn.features.norm == "batchnorm" and bn.features.norm_mean == [] and bn.features.feature_dim == 25
    wrong = ModelConfig(arch="cnn1d", features=FrontendConfig(features=["precomputed"], feature_dim=12))
    with pytest.raises(ConfigError, match="feature_dim=12 but .* holds D=25"):
        prepare_model_config(wrong, manifest, str(msd_shards), **kw)
