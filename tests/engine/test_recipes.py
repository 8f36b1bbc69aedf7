"""Small-set recipes in training: crops per track, length in optimiser steps with warmup + cosine, the EMA of
the weights, evaluation windows longer than the training crop (one and two real gloo processes)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from engine.config import ConfigError, load_config
from engine.ema import EMA
from engine.optim import make_scheduler
from engine.train import OptimConfig, TrainConfig, train
from tests.engine.test_train import quick_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models on 2 shared cores

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, message",
    [
        ("data.crops_per_track=0", "crops_per_track must be >= 1"),
        ("data.eval_segment_seconds=0", "eval_segment_seconds must be > 0"),
        ("optim.ema_decay=1.0", "ema_decay must be in"),
        ("optim.warmup_fraction=0.1 optim.warmup_steps=5 optim.schedule=cosine", "not both"),
        ("optim.warmup_steps=5 optim.schedule=plateau", "warmup_\\* works with schedule cosine or none"),
        ("optim.min_lr=0.1 optim.lr=0.01", "min_lr must be in"),
        ("optim.max_steps=-1", "max_steps and optim.warmup_steps must be >= 0"),
        ("eval.track_aggregate=median", "eval.track_aggregate"),
    ],
)
def test_recipe_settings_are_checked_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, ["data.shards=x", *override.split()])


def test_seed_cnn_config_is_the_seed_plain_recipe():
    seed = load_config(TrainConfig, ROOT / "configs" / "seed_cnn.yaml", ["data.shards=x"])
    assert seed.model.arch == "cnn" and seed.data.segment_seconds == 3.0
    assert seed.data.crops_per_track == 1 and seed.data.eval_segment_seconds is None
    assert seed.optim.max_steps == 0 and seed.optim.epochs == 30 and seed.optim.schedule == "plateau"
    assert seed.optim.ema_decay == 0.0 and seed.eval.track_aggregate == "mean_prob"


# ----------------------------------------------------------------------------------------- schedule
def _lrs(cfg: OptimConfig, steps_per_epoch: int, n: int) -> list[float]:
    """The lr of each of the first ``n`` optimiser steps under ``make_scheduler``."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, kind = make_scheduler(opt, cfg, steps_per_epoch)
    assert kind == "step"
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_to_min_lr_per_optimiser_step():
    import math

    cfg = OptimConfig(lr=0.1, schedule="cosine", max_steps=20, warmup_steps=4, min_lr=0.01, epochs=99)
    got = _lrs(cfg, steps_per_epoch=7, n=21)  # max_steps, not epochs x steps per epoch, sets the length
    want = [0.1 * (s + 1) / 4 for s in range(4)]  # linear warmup: 0.025, 0.05, 0.075, 0.1
    want += [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 16)) for s in range(4, 21)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[-1] == pytest.approx(0.01)  # after the last step: min_lr
    # warmup as a fraction of the run (epochs x steps when max_steps is 0); schedule none: constant after it
    frac = _lrs(OptimConfig(lr=0.1, schedule="none", epochs=2, warmup_fraction=0.25), steps_per_epoch=8, n=8)
    assert frac == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1], rel=1e-12)


def test_max_steps_sets_the_epochs_and_crops_per_track_the_epoch_length(tmp_path, synthetic_shards):
    # 32 training tracks x 2 crops / batch 8 = 8 steps per epoch; 11 steps = 8 + 3: the second epoch stops early
    summary = train(quick_config(synthetic_shards, tmp_path / "run", "data.crops_per_track=2", "optim.max_steps=11",
                                 "optim.epochs=50", "optim.schedule=cosine", "optim.warmup_fraction=0.2"))  # fmt: skip
    assert [r["step"] for r in summary["history"]] == [8, 11]
    assert summary["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # min_lr 0 reached at max_steps


# ---------------------------------------------------------------------------------------------- EMA
def test_ema_in_training_equals_the_hand_computed_average_of_the_weights(
    tmp_path, synthetic_shards, monkeypatch
):
    """EMA decay 0.2: the warmed-up decays of the 4 optimiser steps are 0.1, 2/11, 0.2, 0.2 (update n uses
    min(0.2, (1 + n) / (10 + n))). The average over the weights after each optimiser step (4 steps of 2
    accumulated batches each), starting from the initial weights, computed here in float64, equals the
    weights ``last.pt`` holds."""
    snapshots: list[dict[str, torch.Tensor]] = []
    real_init, real_update = EMA.__init__, EMA.update

    def init_and_record(self, model, decay):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})  # initial weights
        real_init(self, model, decay)

    def update_and_record(self, model):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})  # after a step
        real_update(self, model)

    monkeypatch.setattr(EMA, "__init__", init_and_record)
    monkeypatch.setattr(EMA, "update", update_and_record)
    summary = train(quick_config(synthetic_shards, tmp_path / "run", "optim.ema_decay=0.2", "optim.grad_accum=2",
                                 "optim.max_steps_per_epoch=4", "optim.epochs=2"))  # fmt: skip
    assert [r["step"] for r in summary["history"]] == [2, 4] and len(snapshots) == 1 + 4
    decays = [min(0.2, (1 + n) / (10 + n)) for n in range(4)]
    assert decays == pytest.approx([0.1, 2 / 11, 0.2, 0.2])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["extra"]["weights"] == "ema" and summary["weights"] == "ema"
    averaged = 0
    for name, got in ckpt["model_state"].items():
        if not got.is_floating_point():  # num_batches_tracked: copied from the trained model
            assert torch.equal(got, snapshots[-1][name])
            continue
        want = snapshots[0][name].double()
        for d, weights in zip(decays, snapshots[1:]):
            want = d * want + (1 - d) * weights[name].double()
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)
        if not torch.equal(snapshots[-1][name], snapshots[0][name]):
            averaged += 1
            assert not torch.allclose(got, snapshots[-1][name])  # the average, not the last weights
    assert averaged > 5  # weights and BatchNorm statistics moved, and were averaged


def test_ema_is_what_validation_scores_and_best_pt_holds(tmp_path, synthetic_shards):
    """The validation figures of an EMA run are those of its checkpoint (the averaged weights); early
    stopping and best.pt follow the averaged model's validation loss."""
    from engine.evaluate import evaluate_checkpoint

    summary = train(quick_config(synthetic_shards, tmp_path / "run", "optim.ema_decay=0.5", "optim.epochs=3",
                                 "optim.max_steps_per_epoch=2", "optim.early_stop_patience=1"))  # fmt: skip
    hist = summary["history"]
    best = min(hist, key=lambda r: r["valid_loss"])
    assert summary["best_epoch"] == best["epoch"]
    # patience 1: the run stops after the first epoch that does not improve the averaged model's loss
    stop = next(
        (i for i in range(1, len(hist)) if hist[i]["valid_loss"] >= min(r["valid_loss"] for r in hist[:i])),
        None,
    )
    assert len(hist) == (stop + 1 if stop is not None else 3)
    ev = evaluate_checkpoint(summary["best_checkpoint"], synthetic_shards, split="valid", batch_size=64,
                             num_workers=0, progress=False)  # fmt: skip
    assert (
        ev["segment"]["accuracy"] == best["valid_acc"] and ev["track"]["accuracy"] == best["valid_track_acc"]
    )


# ---------------------------------------------------------------------------------- long eval windows
@pytest.mark.slow
def test_eval_windows_longer_than_the_crop_give_the_same_tracks_on_one_and_two_processes(
    tmp_path, synthetic_shards, gloo_runs
):
    """1-s training crops, 2-s evaluation windows every 0.5 s (3 per 3-s clip), EMA weights, the mean of
    log-probabilities as the headline: the checkpoint carries the window and the aggregate, validation and
    ``evaluate`` agree, and ``evaluate`` under ``accelerate launch --multi_gpu --num_processes 2`` (gloo)
    gives every track the same prediction as one process.

    The training run (``tests.engine.gloo_runs.RECIPES_WINDOWS``) and the two-process evaluation are in the
    shared two-process launch's preparation and launch."""
    from engine.classify.predictor import Predictor
    from engine.evaluate import evaluate_checkpoint

    two_run = gloo_runs["recipes_evaluate"]
    run, summary = two_run.info["run"], two_run.info["summary"]
    row = summary["history"][0]
    assert row["valid_tracks"] == 8 and row["valid_windows"] == 8 * 3
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert (ckpt["segment_samples"], ckpt["window_samples"]) == (22050, 44100)
    assert Predictor(run / "last.pt", "cpu").segment_samples == 44100  # classify scores 2-s windows too

    one = tmp_path / "one"
    m1 = evaluate_checkpoint(run / "last.pt", synthetic_shards, split="valid", out=one, batch_size=5,
                             hop_seconds=0.5, num_workers=0, progress=False)  # fmt: skip
    assert m1["segment_samples"] == 44100 and m1["train_segment_samples"] == 22050 and m1["windows"] == 24
    assert m1["track_aggregate"] == "mean_logprob"
    assert (m1["segment"]["accuracy"], m1["track"]["accuracy"]) == (row["valid_acc"], row["valid_track_acc"])
    assert m1["track_mean_prob"]["accuracy"] == row["valid_track_acc_mean_prob"]
    assert (
        m1["track_mean_logprob"]["accuracy"] == row["valid_track_acc_mean_logprob"] == row["valid_track_acc"]
    )

    two_run.check()
    two = two_run.info["out"]
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["world_size"] == 2  # `--cpu --num_processes 2` would silently run one
    assert (m2["segment_samples"], m2["windows"], m2["track_aggregate"]) == (44100, 24, "mean_logprob")
    for level in ("segment", "track"):
        assert m2[level]["confusion_matrix"] == m1[level]["confusion_matrix"]
    for name in ("track_mean_prob", "track_mean_logprob"):
        assert m2[name] == m1[name]
    with open(one / "predictions.csv") as f1, open(two / "predictions.csv") as f2:
        r1, r2 = list(csv.DictReader(f1)), list(csv.DictReader(f2))
    assert [(r["key"], r["predicted_label"], r["windows"]) for r in r1] == [
        (r["key"], r["predicted_label"], r["windows"]) for r in r2
    ]
    labels = ckpt["labels"]
    for a, b in zip(r1, r2):
        assert [float(a[f"p_{n}"]) for n in labels] == pytest.approx(
            [float(b[f"p_{n}"]) for n in labels], abs=1e-6
        )
