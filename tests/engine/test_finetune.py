"""Fine-tuning: ``train --init-from musicnn:MSD_musicnn`` on 22.05-kHz shards (the real converted weights) gets the
dataset's genre head and starts from every other pretrained tensor; frozen layers (and their BatchNorm statistics)
do not move during the freeze epochs and do after; the optimiser's learning-rate groups are those configured; a
checkpoint trained on another input is refused; two gloo processes run a temporary freeze."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.checkpoint import init_from, load_checkpoint
from engine.checkpoint_format import CheckpointError
from engine.config import ConfigError, from_dict, load_config
from engine.models import ModelConfig, build_model
from engine.optim import Freezer, make_optimizer, make_scheduler, param_groups
from engine.pretrained.musicnn import model_config
from engine.train import OptimConfig, TrainConfig, train

SPEC = "musicnn:MSD_musicnn"
REPO = Path(__file__).resolve().parents[2]
FRONT_MID = ["backbone.input_bn", "backbone.timbral", "backbone.temporal", "backbone.midend"]
BACK = ["backbone.pool_bn", "backbone.dense", "backbone.dense_bn"]
HEAD = ("backbone.classifier.weight", "backbone.classifier.bias")

#: The two-process fine-tune's run (``tests.engine.gloo_runs``), ``data.shards`` added there.
DDP_QUICK = ["model.arch=cnn", "model.params.channels=[8,16]", "model.params.hidden=32", "model.features.n_mels=32",
             "model.features.n_fft=512", "model.augment.enabled=false", "data.segment_seconds=1.0",
             "data.batch_size=8", "data.num_workers=0", "optim.max_steps_per_epoch=2", "optim.early_stop_patience=0",
             "run.tensorboard=false", "run.progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 genres x 4 clips x 3 s at 22.05 kHz (one 2.98-s window each)."""
    from shards.ingest import IngestConfig, run_ingest
    from shards.synthetic import make_corpus

    root = tmp_path_factory.mktemp("ft")
    make_corpus(root / "corpus", clips_per_genre=4, duration=3.0, genres=("classical", "metal", "reggae"),
                formats=("wav",), seed=0, workers=1, progress=False)  # fmt: skip
    run_ingest(IngestConfig(source=root / "corpus", out=root / "shards", layout="folder", seed=0, workers=1,
                            progress=False))  # fmt: skip
    return root / "shards"


def finetune_config(shards: Path, out: Path, *extra: str) -> TrainConfig:
    """configs/musicnn_finetune.yaml, one step per epoch, constant lr (a resume with more epochs keeps it)."""
    return load_config(TrainConfig, str(REPO / "configs" / "musicnn_finetune.yaml"), [
        f"data.shards={shards}", f"run.out_dir={out}", "data.batch_size=4", "data.eval_batch_size=8",
        "data.num_workers=0", "optim.max_steps_per_epoch=1", "optim.lr=0.01", "optim.schedule=none", "run.progress=false",
        "run.tensorboard=false", *extra,
    ])  # fmt: skip


def moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefixes: list[str]) -> dict[str, bool]:
    """For each float tensor under ``prefixes`` (parameters and BatchNorm statistics): did it change?"""
    stems = tuple(p + "." for p in prefixes)
    return {k: not torch.equal(a[k], b[k]) for k in a if k.startswith(stems) and a[k].is_floating_point()}


def test_finetune_gets_the_genre_head_and_freezes_then_trains_the_pretrained_layers(pretrained_cache, shards, tmp_path):
    """Epoch 0 with every pretrained layer frozen: the run starts from (and keeps) each pretrained tensor, only the
    new 3-genre head learns. Resumed for epoch 1 past ``freeze_epochs``: everything trains, the pretrained layers
    at a tenth of the head's rate, per the optimiser's saved groups."""
    pretrained = load_checkpoint(SPEC)["model_state"]
    run = tmp_path / "run"
    # the head of the shipped tag models (on the penultimate layer), so that every pretrained layer is on its path
    freeze = [f"run.freeze=[{','.join(FRONT_MID + BACK)}]", "model.params.head_input=penultimate",
              "optim.cache_frozen_prefix=false", "optim.head_init=none",  # a temporary freeze: no prefix cache
              "run.freeze_norm_stats=false"]  # the BatchNorms leave eval mode with the unfreeze
    first = train(finetune_config(shards, run, "optim.epochs=1", "optim.freeze_epochs=1", *freeze))
    assert first["labels"] == ["classical", "metal", "reggae"]
    after0 = torch.load(run / "last.pt", weights_only=True)["model_state"]
    assert after0.keys() == pretrained.keys()
    assert after0["backbone.classifier.weight"].shape == (3, 200) and after0["backbone.classifier.bias"].shape == (3,)
    for key, value in pretrained.items():
        if key not in HEAD:  # every other tensor, BatchNorm statistics included: the pretrained one, exactly
            assert torch.equal(after0[key], value), key
    opt0 = torch.load(run / "state" / "optimizer.bin", weights_only=False)
    assert [g["name"] for g in opt0["param_groups"]] == ["new", "pretrained"]
    assert [len(g["params"]) for g in opt0["param_groups"]] == [2, 34 + 6]  # head | front, mid and back end
    assert len(opt0["state"]) == 2  # Adam moments only for the head: frozen parameters had no gradient

    second = train(finetune_config(shards, run, "optim.epochs=2", "optim.freeze_epochs=1", "run.resume=true", *freeze))
    assert [h["epoch"] for h in second["history"]] == [0, 1]
    after1 = torch.load(run / "last.pt", weights_only=True)["model_state"]
    changed = moved(after0, after1, FRONT_MID + BACK)
    weights = [k for k in changed if k.endswith(".weight")]
    assert weights and all(changed[k] for k in weights)  # unfrozen in epoch 1: every layer's weights moved
    assert changed["backbone.timbral.0.bn.running_mean"]  # and the BatchNorms left eval mode
    opt1 = torch.load(run / "state" / "optimizer.bin", weights_only=False)
    new, pre = opt1["param_groups"]
    assert (new["lr"], pre["lr"]) == (0.01, pytest.approx(0.001))
    assert len(opt1["state"]) == 2 + 40


def test_param_groups_put_loaded_weights_at_the_scaled_rate_and_schedules_keep_the_ratio(pretrained_cache) -> None:
    model = build_model(model_config("MSD_musicnn"), 4, 22050, 65621)
    loaded = init_from(model, SPEC)["loaded"]
    cfg = OptimConfig(lr=0.01, pretrained_lr_scale=0.1, schedule="onecycle", epochs=2)
    groups = param_groups(model, cfg, loaded)
    assert [(g["name"], g["lr"]) for g in groups] == [("new", 0.01), ("pretrained", pytest.approx(0.001))]
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups[0]["params"]} == set(HEAD)
    assert sum(len(g["params"]) for g in groups) == len(names)
    assert [g["name"] for g in param_groups(model, OptimConfig(lr=0.01), loaded)] == ["all"]  # scale 1
    for schedule in ("onecycle", "cosine", "plateau"):
        cfg.schedule = schedule
        opt = make_optimizer(model, cfg, loaded)
        sched, _ = make_scheduler(opt, cfg, steps_per_epoch=5)
        for _ in range(3):
            opt.step()
            if schedule != "plateau":
                sched.step()
        new, pre = (g["lr"] for g in opt.param_groups)
        assert pre == pytest.approx(0.1 * new), schedule


def test_freezer_checks_its_settings_and_keeps_frozen_batchnorms_in_eval_mode(pretrained_cache) -> None:
    model = build_model(model_config("MSD_musicnn"), 3, 16000, 47616)
    with pytest.raises(ConfigError, match="needs run.freeze"):
        Freezer(model, [], 2)
    with pytest.raises(ConfigError, match="no parameter name starts with 'backbone.frontend'"):
        Freezer(model, ["backbone.frontend"], 2)
    freezer = Freezer(model, FRONT_MID, 2)
    assert all(p.requires_grad for p in model.parameters())  # temporary: nothing frozen before apply()
    model.train()
    assert freezer.apply(1) is True
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(tuple(p + "." for p in FRONT_MID)) for n in frozen)
    assert not model.backbone.midend[0].bn.training and model.backbone.dense_bn.training
    model.train()
    assert freezer.apply(2) is False and all(p.requires_grad for p in model.parameters())
    assert model.backbone.midend[0].bn.training


def test_frozen_norm_stats_keep_every_batchnorms_statistics_while_its_affine_parameters_train(pretrained_cache) -> None:
    torch.manual_seed(0)
    model = build_model(model_config("MSD_musicnn"), 3, 16000, 47616)
    freezer = Freezer(model, [], 0, norm_stats=True)  # run.freeze_norm_stats, nothing else frozen
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    bn = model.backbone.midend[0].bn
    affine = bn.weight.detach().clone()
    model.train()
    freezer.apply(0)
    assert not any(m.training for m in norms) and model.backbone.midend[0].conv.training  # only the norms
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 47616)).logsumexp(dim=1).mean().backward()
    opt.step()
    assert all(torch.equal(m.running_mean, a) and torch.equal(m.running_var, b) for m, (a, b) in zip(norms, stats))
    assert not torch.equal(bn.weight, affine)


def test_init_from_refuses_a_checkpoint_trained_on_another_input(pretrained_cache, tmp_path, make_tiny_checkpoint) -> None:
    logmel = from_dict(ModelConfig, {"arch": "musicnn", "features": {"features": ["logmel"], "n_fft": 512,
                                                                      "hop_length": 256, "n_mels": 96}})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"another input \(features \['musicnn'\] vs \['logmel'\]"):
        init_from(build_model(logmel, 3, 16000, 47616), SPEC)  # same shapes: it would have loaded silently
    tiny = make_tiny_checkpoint(tmp_path / "tiny.pt", ["a", "b", "c"], 8000, 8000)
    cfg = from_dict(ModelConfig, load_checkpoint(tiny)["config"]["model"])
    with pytest.raises(CheckpointError, match="sample_rate 8000 vs 16000 Hz.*re-shard at its rate"):
        init_from(build_model(cfg, 3, 16000, 16000), tiny)
    other = from_dict(ModelConfig, {**load_checkpoint(tiny)["config"]["model"], "features": {
        **load_checkpoint(tiny)["config"]["model"]["features"], "n_mels": 32, "backend": "torch"}})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"another input \(n_mels 16 vs 32;") as info:
        init_from(build_model(other, 3, 8000, 8000), tiny)
    assert "backend" not in str(info.value)  # the STFT implementation does not change the input


@pytest.mark.slow
def test_two_gloo_processes_fine_tune_with_a_temporary_freeze(gloo_runs) -> None:
    """DDP registers parameters when it wraps the model: the freeze starts after wrapping and DDP expects unused
    parameters, so both the frozen epoch and the unfrozen one run (and the frozen block moves only after).

    The run (:data:`DDP_QUICK`, 2 epochs from a 1-epoch run, ``backbone.blocks.0`` frozen for the first) is in the
    shared two-process launch of :mod:`tests.engine.gloo_runs`."""
    run = gloo_runs["finetune"]
    run.check()
    out, base = run.info["out"], run.info["base"]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    a = torch.load(base["last_checkpoint"], weights_only=True)["model_state"]
    b = torch.load(out / "last.pt", weights_only=True)["model_state"]
    assert not torch.equal(a["backbone.blocks.0.0.weight"], b["backbone.blocks.0.0.weight"])  # trained in epoch 1
    assert torch.isfinite(b["backbone.blocks.0.0.weight"]).all()


def test_meanmax_head_reads_the_standardised_pool_and_leaves_the_dense_layer_as_loaded(pretrained_cache, shards, tmp_path):
    """``model.params.head_input=meanmax``: the genre head is a linear layer on the BatchNorm'd 1,506 mean+max
    pool (computed here by hand from the mid-end); the Dense 200 layer gets no gradient and trains not at all;
    every pretrained tensor loads."""
    import dataclasses

    cfg = model_config("MSD_musicnn")
    cfg = dataclasses.replace(cfg, params={**cfg.params, "head_input": "meanmax"})
    model = build_model(cfg, 3, 22050, 65621)
    report = init_from(model, SPEC)
    assert report["reinitialised"] == ["backbone.classifier.weight", "backbone.classifier.bias"]
    assert model.backbone.classifier.weight.shape == (3, 1506)
    model.eval()
    torch.manual_seed(0)
    wave = (torch.randn(2, 65621) * 3000).to(torch.int16)
    feats = model.features(wave)
    mid = model.backbone.midend_features(feats)  # (B, 753, T)
    pooled = torch.stack([mid.amax(dim=2), mid.mean(dim=2)], dim=2).flatten(1)  # TF's interleaved [max, mean]
    bb = model.backbone
    want = bb.classifier(bb.pool_bn(pooled))
    torch.testing.assert_close(model(wave), want, rtol=1e-5, atol=1e-5)
    model(wave).sum().backward()
    assert all(p.grad is None for p in (*bb.dense.parameters(), *bb.dense_bn.parameters()))
    assert bb.midend[0].conv.weight.grad is not None and bb.classifier.weight.grad is not None

    pretrained = load_checkpoint(SPEC)["model_state"]
    run = tmp_path / "run"
    train(finetune_config(shards, run, "optim.epochs=1", "optim.freeze_epochs=0", "model.params.head_input=meanmax",
                          "run.freeze=[backbone.input_bn,backbone.timbral,backbone.temporal]"))  # fmt: skip
    after = torch.load(run / "last.pt", weights_only=True)["model_state"]
    assert after["backbone.classifier.weight"].shape == (3, 1506)
    assert torch.equal(after["backbone.dense.weight"], pretrained["backbone.dense.weight"])
    for stat in ("running_mean", "running_var"):  # its BatchNorm's statistics too: off the logits' path
        assert torch.equal(after[f"backbone.dense_bn.{stat}"], pretrained[f"backbone.dense_bn.{stat}"])
    assert torch.equal(after["backbone.timbral.0.conv.weight"], pretrained["backbone.timbral.0.conv.weight"])
    assert not torch.equal(after["backbone.midend.0.conv.weight"], pretrained["backbone.midend.0.conv.weight"])
