"""``engine embed``: musicnn embeddings of a real (synthetic-corpus) shard set at 22.05 kHz as a feature-shard set --
rows equal to the converted pretrained model's outputs on evaluate's windows, the source's tracks and splits
kept, resume over verified shards, two gloo processes, and a linear probe (configs/probe.yaml) trained on it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint, model_config_from
from engine.config import load_config
from engine.embed import EmbedError, embed
from engine.evaluate import evaluate_checkpoint
from engine.models import build_model
from engine.train import TrainConfig, train
from shards import format as fmt
from shards.tarstream import iter_samples
from shards.window_stream import WindowStream
from shards.windows import window_starts

SPEC = "musicnn:MSD_musicnn"
ROOT = Path(__file__).resolve().parents[2]
REPO = Path(__file__).resolve().parents[2]
GENRES = ("classical", "metal", "reggae")
SECONDS = 4.6  # two windows of 2.98 s per track: one at 0, one end-aligned over the 1.6-s tail


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 genres x 8 clips x 4.6 s at 22.05 kHz, stratified train/valid/test, 2 folds."""
    from shards.ingest import IngestConfig, run_ingest
    from shards.synthetic import make_corpus

    root = tmp_path_factory.mktemp("src")
    make_corpus(root / "corpus", clips_per_genre=8, duration=SECONDS, genres=GENRES, formats=("wav",), seed=0,
                workers=1, progress=False)  # fmt: skip
    run_ingest(IngestConfig(source=root / "corpus", out=root / "shards", layout="folder", seed=0, folds=2,
                            workers=1, progress=False))  # fmt: skip
    return root / "shards"


@pytest.fixture(scope="module")
def emb(pretrained_cache: Path, source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("emb") / "emb"
    return out, embed(SPEC, source, out, batch_size=16, progress=False)


def read_tracks(url: str) -> list[tuple[dict, np.ndarray]]:
    return [(fmt.decode_meta(s.meta), np.array(s.data)) for s in iter_samples(url, range(1 << 62))]


def test_rows_are_the_pretrained_models_outputs_on_evaluates_windows(emb, source: Path) -> None:
    out, res = emb
    src, man = fmt.load_manifest(source), fmt.load_manifest(out)
    assert man["kind"] == "features" and man["layout"] == "embedding" and man["feature_dim"] == 1506
    assert man["labels"] == src["labels"] and man["folds"] == src["folds"] == 2 and man["sample_rate"] == 1
    assert res["written"] == 3 and res["windows"] == 2 * 8 * len(GENRES)
    # reference: the converted checkpoint rebuilt at the shards' 22,050 Hz (the feature resamples to 16 kHz)
    ckpt = load_checkpoint(SPEC)
    seg = round(47616 * 22050 / 16000)
    model = build_model(model_config_from(ckpt), 50, 22050, seg)
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    assert model.in_shape == (1, 96, 187)
    for split, entry in src["splits"].items():
        got = man["splits"][split]
        assert (got["tracks"], got["per_label"]) == (entry["tracks"], entry["per_label"])
        assert [s["name"] for s in got["shards"]] == [s["name"] for s in entry["shards"]]
        # the evaluation stream evaluate reads: its windows, run through outputs() directly
        stream = WindowStream(str(source), split, window_samples=seg, batch_size=5, rank=0, world_size=1)
        want: dict[int, list[np.ndarray]] = {}
        with torch.no_grad():
            for batch in stream:
                rows = model.backbone.outputs(model.features(batch["wave"]))["meanmax"].numpy()
                for t, ok, row in zip(batch["track"].tolist(), batch["valid"].tolist(), rows):
                    if ok:
                        want.setdefault(t, []).append(row)
        src_tracks = [m for s in entry["shards"] for m, _ in read_tracks(str(source / s["name"]))]
        emb_tracks = [x for s in got["shards"] for x in read_tracks(str(out / s["name"]))]
        assert [m["key"] for m, _ in emb_tracks] == stream.track_keys() == [m["key"] for m in src_tracks]
        for t, ((meta, feats), smeta) in enumerate(zip(emb_tracks, src_tracks)):
            for k in ("label", "label_index", "fold", "artist", "path", "split", "duration"):
                assert meta[k] == smeta[k], k
            assert feats.dtype == np.float16 and feats.shape == (2, 1506) == (meta["num_samples"], 1506)
            assert meta["window_starts"] == window_starts(smeta["num_samples"], seg).tolist()
            ref = np.stack(want[t])
            np.testing.assert_allclose(feats.astype(np.float32), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_probe_trains_on_the_embeddings_with_the_existing_train_command(emb, tmp_path: Path) -> None:
    """configs/probe.yaml (the ``stats`` head: window mean, standardised, linear) on the 1,506-d embeddings:
    the three synthetic genres are separated after a few epochs of two steps."""
    out, _ = emb
    cfg = load_config(TrainConfig, str(REPO / "configs" / "probe.yaml"), [
        f"data.shards={out}", f"run.out_dir={tmp_path / 'probe'}", "optim.epochs=6", "run.progress=false",
        "data.num_workers=0", "run.cpu=true",
    ])  # fmt: skip
    summary = train(cfg)
    assert summary["parameters"] == 1506 * 3 + 3  # a linear layer on the embedding, nothing else trained
    best = summary["best"]
    test = evaluate_checkpoint(summary["best_checkpoint"], out, "test", tmp_path / "eval", num_workers=0,
                               progress=False)["track"]  # fmt: skip
    assert (best["valid_tracks"], best["valid_windows"], test["n"]) == (3, 3, 3)  # one 30-window window each
    # stated accuracy: at least 5 of the 6 held-out tracks (valid + test) right
    assert best["valid_track_acc"] * 3 + test["accuracy"] * 3 >= 5 - 1e-9


def test_rerun_skips_verified_shards_redoes_a_damaged_one_and_refuses_other_settings(
    emb, source: Path, tmp_path: Path, make_tiny_checkpoint
) -> None:
    out = tmp_path / "emb"
    shutil.copytree(emb[0], out)
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    res = embed(SPEC, source, out, batch_size=16, progress=False)
    assert (res["written"], res["resumed"], res["windows"]) == (0, 3, 0)
    data = bytearray(before["valid-000000.tar"])
    data[2000] ^= 0xFF  # inside the first track's features
    (out / "valid-000000.tar").write_bytes(bytes(data))
    res = embed(SPEC, source, out, batch_size=7, progress=False)  # other batching: same rows
    assert (res["written"], res["resumed"]) == (1, 2)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before
    with pytest.raises(EmbedError, match="embedding: 'meanmax'"):
        embed(SPEC, source, out, embedding="penultimate", progress=False)
    with pytest.raises(EmbedError, match="penultimate, taggram"):
        embed(SPEC, source, tmp_path / "bad", embedding="nope", progress=False)
    with pytest.raises(EmbedError, match="no named outputs"):
        embed(make_tiny_checkpoint(tmp_path / "t.pt", list(GENRES), 22050, 22050), source, tmp_path / "t", progress=False)
    with pytest.raises(EmbedError, match="re-shard the source at 8000 Hz"):
        embed(make_tiny_checkpoint(tmp_path / "u.pt", list(GENRES), 8000, 8000), source, tmp_path / "u", progress=False)


def test_a_run_that_recorded_precision_no_resumes_as_the_fp32_run_it_was(emb, source: Path, tmp_path: Path) -> None:
    """Runs from before the shared precision names recorded accelerate's ``no`` for fp32: the same run."""
    out = tmp_path / "emb"
    shutil.copytree(emb[0], out)
    state = out / ".embed" / "embed.json"
    ident = json.loads(state.read_text())
    assert ident["precision"] == "fp32"
    state.write_text(json.dumps({**ident, "precision": "no"}))
    res = embed(SPEC, source, out, batch_size=16, progress=False)
    assert (res["written"], res["resumed"]) == (0, 3)
    res = embed(SPEC, source, out, batch_size=16, precision="no", progress=False)  # the old name is still taken
    assert (res["written"], res["resumed"]) == (0, 3)


def test_two_gloo_processes_each_write_their_shards_and_equal_one_process(emb, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb2"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "engine.embed", SPEC,
           "--shards", str(source), "--out", str(out), "--splits", "valid,test", "--batch-size", "16",
           "--no-progress", "--device", "cpu"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), CUDA_VISIBLE_DEVICES="")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2
    ranks = {json.loads(p.read_text())["rank"] for p in (out / ".embed" / "done").glob("*.json")}
    assert ranks == {0, 1}  # valid-000000 on rank 0, test-000000 on rank 1
    man = fmt.load_manifest(out)
    assert sorted(man["splits"]) == ["test", "valid"]
    for split in ("valid", "test"):
        one = read_tracks(str(emb[0] / f"{split}-000000.tar"))
        two = read_tracks(str(out / f"{split}-000000.tar"))
        assert [m for m, _ in two] == [m for m, _ in one]
        for (_, a), (_, b) in zip(one, two):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=2e-3, atol=1e-3)


def test_a_track_shorter_than_a_window_is_looped_as_evaluation_fills_it(pretrained_cache: Path, tmp_path: Path) -> None:
    """A 1.2-s clip (under one 2.98-s window): its one row is the model on the clip looped to fill the window,
    the window the evaluation stream gives, not on the clip followed by silence."""
    from shards.ingest import IngestConfig, run_ingest
    from shards.synthetic import make_corpus

    make_corpus(tmp_path / "corpus", clips_per_genre=3, duration=1.2, genres=("metal",), formats=("wav",), seed=0,
                workers=1, progress=False)  # fmt: skip
    run_ingest(IngestConfig(source=tmp_path / "corpus", out=tmp_path / "shards", layout="folder", seed=0,
                            split_ratios=(1.0, 0.0, 0.0), workers=1, progress=False))  # fmt: skip
    embed(SPEC, tmp_path / "shards", tmp_path / "emb", batch_size=4, progress=False)
    ckpt = load_checkpoint(SPEC)
    seg = round(47616 * 22050 / 16000)
    model = build_model(model_config_from(ckpt), 50, 22050, seg)
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    man = fmt.load_manifest(tmp_path / "emb")
    (shard,) = man["splits"]["train"]["shards"]
    (src_shard,) = fmt.load_manifest(tmp_path / "shards")["splits"]["train"]["shards"]
    got = read_tracks(str(tmp_path / "emb" / shard["name"]))
    src = read_tracks(str(tmp_path / "shards" / src_shard["name"]))
    assert len(got) == len(src) == 3
    for (meta, feats), (smeta, pcm) in zip(got, src):
        assert meta["key"] == smeta["key"] and pcm.size < seg and feats.shape == (1, 1506)
        window = torch.from_numpy(np.resize(pcm, seg))[None]  # the clip repeated from its start
        with torch.no_grad():
            ref = model.backbone.outputs(model.features(window))["meanmax"].numpy()
            silent = model.backbone.outputs(model.features(torch.nn.functional.pad(torch.from_numpy(pcm)[None],
                                                                                    (0, seg - pcm.size))))["meanmax"].numpy()  # fmt: skip
        np.testing.assert_allclose(feats.astype(np.float32), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
        assert np.abs(feats.astype(np.float32) - silent).max() > 10 * 2e-3 * np.abs(ref).max()


def test_a_tag_sets_embeddings_are_a_tag_set_a_probe_trains_on(pretrained_cache: Path, tmp_path: Path) -> None:
    """Embedding a multi-label shard set keeps its task and per-tag counts, so the probe trains on the tags."""
    from tests.engine.multilabel_shards import TAGS, make_multilabel_shards

    tags = make_multilabel_shards(tmp_path / "tags")
    source = fmt.load_manifest(tags)
    res = embed(SPEC, tags, tmp_path / "emb", splits=["train", "valid"], batch_size=16, progress=False)
    manifest = res["manifest"]
    assert manifest["task"] == "multilabel" and manifest["labels"] == source["labels"] == TAGS
    for split in ("train", "valid"):
        assert manifest["splits"][split]["per_label"] == source["splits"][split]["per_label"]
    probe = train(load_config(TrainConfig, ROOT / "configs" / "probe.yaml", [
        f"data.shards={tmp_path / 'emb'}", f"run.out_dir={tmp_path / 'probe'}", "optim.epochs=2",
        "data.num_workers=0", "run.progress=false", "run.tensorboard=false"]))  # fmt: skip
    ckpt = torch.load(probe["best_checkpoint"], weights_only=True)
    assert ckpt["extra"]["task"] == "multilabel" and len(ckpt["extra"]["thresholds"]) == len(TAGS)


# ------------------------------------------------------------------------------------- several embeddings at once
PARTS = "musicnn:MSD_musicnn,musicnn:MTT_musicnn,stats"
SEG = round(47616 * 22050 / 16000)  # musicnn's window at the shards' 22,050 Hz: every part's window


@pytest.fixture(scope="module")
def multi(emb, source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("multi") / "emb"
    return out, embed(PARTS, source, out, batch_size=16, progress=False)


def test_several_models_rows_are_each_models_own_rows_side_by_side_in_the_stated_order(
    emb, multi, source: Path, tmp_path: Path
) -> None:
    mtt = embed("musicnn:MTT_musicnn", source, tmp_path / "mtt", splits=["valid"], batch_size=16, progress=False)
    assert mtt["feature_dim"] == 1506
    for split in ("train", "valid"):
        both = read_tracks(str(multi[0] / f"{split}-000000.tar"))
        msd = read_tracks(str(emb[0] / f"{split}-000000.tar"))
        assert [m for m, _ in both] == [m for m, _ in msd]
        for (_, got), (_, one) in zip(both, msd):
            assert got.shape == (2, 1506 + 1506 + 144)
            np.testing.assert_array_equal(got[:, :1506], one)  # same windows, same batches: the same float16 rows
    for (_, got), (_, one) in zip(read_tracks(str(multi[0] / "valid-000000.tar")),
                                  read_tracks(str(tmp_path / "mtt" / "valid-000000.tar"))):  # fmt: skip
        np.testing.assert_array_equal(got[:, 1506:3012], one)
        assert not np.array_equal(got[:, :1506], got[:, 1506:3012])  # two models, not one twice


def test_stats_rows_are_the_stats_front_ends_mean_and_std_over_the_same_windows(multi, source: Path) -> None:
    from engine.config import from_dict, load_yaml
    from engine.models import ModelConfig
    from engine.models.stats import pooled_statistics
    from kernels.features import MFCC, build_frontend

    model_cfg = from_dict(ModelConfig, load_yaml(REPO / "configs" / "stats.yaml")["model"], "model")
    front = build_frontend(model_cfg.features, 22050).eval()
    mfcc = MFCC(dataclasses.replace(model_cfg.features, features=["mfcc"], deltas=0), 22050).eval()
    src = read_tracks(str(source / "test-000000.tar"))
    got = read_tracks(str(multi[0] / "test-000000.tar"))
    for (smeta, pcm), (meta, feats) in zip(src, got):
        starts = window_starts(smeta["num_samples"], SEG).tolist()
        assert meta["window_starts"] == starts
        wins = torch.from_numpy(np.stack([pcm[s : s + SEG] for s in starts])).float() / 32768.0
        with torch.no_grad():
            ref = pooled_statistics(front(wins), ("mean", "std")).numpy()  # (2, 144): 72 means, then 72 stds
            hand = mfcc(wins[:1])[0, 0].numpy().astype(np.float64).mean(axis=1)  # window 0's 20 MFCC means
        stats = feats[:, 3012:].astype(np.float32)
        np.testing.assert_allclose(stats, ref, rtol=2e-3, atol=1e-3 * np.abs(ref).max())
        np.testing.assert_allclose(stats[0, :20], hand, rtol=2e-3, atol=1e-3 * np.abs(hand).max())


def test_the_manifest_lists_the_parts_and_a_rerun_resumes_only_the_same_list(multi, source: Path, tmp_path) -> None:
    out, res = multi
    man = fmt.load_manifest(out)
    assert man["feature_dim"] == res["feature_dim"] == 1506 + 1506 + 144
    parts = man["embedding"]["parts"]
    assert [(p["name"], p["dim"], p["offset"]) for p in parts] == [
        ("musicnn:MSD_musicnn", 1506, 0), ("musicnn:MTT_musicnn", 1506, 1506), ("stats", 144, 3012)]  # fmt: skip
    assert parts[0]["embedding"] == "meanmax" and parts[2]["stats"] == ["mean", "std"]
    assert parts[2]["features"]["features"] == ["mfcc", "chroma"] and man["embedding"]["window_samples"] == SEG
    again = embed(PARTS, source, out, batch_size=16, progress=False)
    assert (again["written"], again["resumed"]) == (0, 3)
    with pytest.raises(EmbedError, match="parts"):  # the same parts in another order are another embedding
        embed("musicnn:MTT_musicnn,musicnn:MSD_musicnn,stats", source, out, progress=False)
    with pytest.raises(EmbedError, match=r"unknown embedding 'mfcc': name stats, musicnn:MSD_musicnn, musicnn:MTT"):
        embed("musicnn:MSD_musicnn,mfcc", source, tmp_path / "bad", progress=False)
    with pytest.raises(EmbedError, match="stats alone has no window"):
        embed("stats", source, tmp_path / "bad", progress=False)


def test_probe_trains_on_the_concatenated_embeddings(multi, tmp_path: Path) -> None:
    out, _ = multi
    cfg = load_config(TrainConfig, str(REPO / "configs" / "probe.yaml"), [
        f"data.shards={out}", f"run.out_dir={tmp_path / 'probe'}", "run.progress=false", "data.num_workers=0",
        "run.cpu=true",
    ])  # fmt: skip
    summary = train(cfg)
    assert summary["parameters"] == (1506 + 1506 + 144) * 3 + 3  # one linear layer on the concatenation
    test = evaluate_checkpoint(summary["best_checkpoint"], out, "test", tmp_path / "eval", num_workers=0,
                               progress=False)["track"]  # fmt: skip
    assert summary["best"]["valid_track_acc"] * 3 + test["accuracy"] * 3 >= 5 - 1e-9
