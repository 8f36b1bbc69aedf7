"""Training: config strictness, learning on the synthetic corpus, exact resume, two real gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.config import ConfigError, load_config
from engine.train import TrainConfig, check_resume_config, main, train

ROOT = Path(__file__).resolve().parents[2]

#: A recipe that learns the 4 synthetic genres in a few CPU epochs: 2-s crops, 64 mels, light augmentation.
QUICK = [
    "model.arch=cnn",
    "model.features.n_mels=64",
    "model.features.n_fft=1024",
    "model.augment.mixup_p=0",
    "model.augment.noise_p=0",
    "model.augment.time_stretch_p=0",
    "data.segment_seconds=2.0",
    "data.batch_size=8",
    "data.num_workers=0",
    "optim.lr=3e-3",
    "optim.early_stop_patience=0",
    "run.tensorboard=false",
    "run.progress=false",
]


def quick_config(shards: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [f"data.shards={shards}", f"run.out_dir={out}", *QUICK, *extra])


# two cores shared with DataLoader and subprocesses: intra-op threads cost more than they give
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- config
def test_config_rejects_unknown_keys_and_bad_types_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(TrainConfig, None, ["data.shards=x", "optim.lrr=1"])
    with pytest.raises(ConfigError, match="data.batch_size: expected an integer"):
        load_config(TrainConfig, None, ["data.shards=x", "data.batch_size=big"])
    with pytest.raises((ConfigError, KeyError), match="resnett"):
        load_config(TrainConfig, None, ["data.shards=x", "model.arch=resnett"])
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optim:\n  lr: 0.01\n  bogus: 3\n")
    with pytest.raises(ConfigError, match="optim.bogus"):
        load_config(TrainConfig, cfg_file, [])


def test_bad_feature_settings_are_config_errors_and_the_cli_says_so(tmp_path, synthetic_shards, capsys):
    # FrontendConfig validates with plain ValueError (kernels do not depend on engine)
    with pytest.raises(ConfigError, match="n_fft must be >= 16"):
        load_config(TrainConfig, None, ["data.shards=x", "model.features.n_fft=4"])
    with pytest.raises(ConfigError, match="log_every must be >= 1"):
        load_config(TrainConfig, None, ["data.shards=x", "run.log_every=0"])
    # checks that need the sample rate run when the model is built: still a clean exit 2, no traceback
    argv = [
        f"--shards={synthetic_shards}",
        f"--out={tmp_path / 'r'}",
        "model.features.f_max=20000",
        "run.progress=false",
    ]
    assert main(argv) == 2
    assert "above Nyquist" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main([f"--shards={synthetic_shards}", f"--out={tmp_path / 'r2'}", f"--init-from={junk}"]) == 2
    assert "is not a readable genre-engine checkpoint" in capsys.readouterr().err


def test_cli_overrides_apply_on_top_of_yaml_and_numbers_parse(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data:\n  shards: s\noptim:\n  lr: 0.01\n  epochs: 3\n")
    cfg = load_config(TrainConfig, cfg_file, ["optim.lr=3e-4", "model.arch=crnn"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.epochs == 3 and cfg.model.arch == "crnn"


def test_cli_overrides_may_stand_before_and_after_options(tmp_path, capsys):
    assert main(["data.shards=s", "optim.lr=3e-4", f"--out={tmp_path / 'r'}", "model.arch=rnn", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "arch: rnn" in printed and "lr: 0.0003" in printed and f"out_dir: {tmp_path / 'r'}" in printed


def test_config_round_trips_through_strict_json_with_non_finite_floats():
    from engine.config import config_json, from_dict

    cfg = load_config(TrainConfig, None, ["data.shards=x", "model.features.chroma_norm=.inf"])
    text = json.dumps(config_json(cfg), allow_nan=False)  # strict JSON: no Infinity literal
    assert '"chroma_norm": "inf"' in text
    again = from_dict(TrainConfig, json.loads(text))
    assert again == cfg and again.model.features.chroma_norm == float("inf")


def test_missing_shards_and_bad_splits_are_clear_errors(tmp_path, synthetic_shards, capsys):
    assert main([f"--shards={tmp_path / 'nope'}", f"--out={tmp_path / 'r'}"]) == 2
    assert "no shard set" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{truncated")
    assert main([f"--shards={bad}", f"--out={tmp_path / 'r'}"]) == 2
    assert "manifest.json is not valid JSON" in capsys.readouterr().err
    (bad / "manifest.json").write_text('{"format_version": 1, "labels": ["a", "b"]}')
    assert main([f"--shards={bad}", f"--out={tmp_path / 'r'}"]) == 2
    assert "lacks sample_rate, splits" in capsys.readouterr().err
    assert main([f"--shards={synthetic_shards}", f"--out={tmp_path / 'r2'}", "data.valid_split=dev"]) == 2
    assert "no 'dev' split" in capsys.readouterr().err


def test_label_seen_only_in_validation_is_rejected(tmp_path, synthetic_shards):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["splits"]["train"]["per_label"]["reggae"] = 0
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"labels \['reggae'\] occur in 'valid' but never in 'train'"):
        train(quick_config(shards, tmp_path / "run"))


def test_resume_without_saved_state_and_rerun_into_a_finished_run_are_errors(tmp_path, synthetic_shards):
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(quick_config(synthetic_shards, tmp_path / "run", "run.resume=true"))
    train(quick_config(synthetic_shards, tmp_path / "run", "optim.epochs=1", "optim.max_steps_per_epoch=1"))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(quick_config(synthetic_shards, tmp_path / "run", "optim.epochs=1"))
    # the same shard directory spelled differently is the same data
    respelled = synthetic_shards.parent / ".." / synthetic_shards.parent.name / synthetic_shards.name
    check_resume_config(tmp_path / "run" / "config.yaml", quick_config(respelled, tmp_path / "run"))
    # a resume that changes the model or the data would mix two runs in one history and checkpoint
    with pytest.raises(ConfigError, match=r"model, data.segment_seconds differ from the run"):
        train(quick_config(synthetic_shards, tmp_path / "run", "run.resume=true", "model.features.n_mels=32",
                           "data.segment_seconds=1.5"))  # fmt: skip


# ----------------------------------------------------------------------------------------- learning
def test_short_run_learns_synthetic_genres_far_above_chance(tmp_path, synthetic_shards):
    """4 genres (chance 25%): 12 CPU epochs reach >= 62.5% track accuracy on the held-out validation split
    (measured here: 87.5%, 7 of 8 tracks) and write the run directory's artefacts."""
    summary = train(quick_config(synthetic_shards, tmp_path / "run", "optim.epochs=12", "optim.schedule=cosine"))
    best = summary["best"]
    assert best["valid_tracks"] == 8  # every validation track counted once
    assert best["valid_track_acc"] >= 0.625, summary["history"]
    first, last = summary["history"][0], summary["history"][-1]
    assert last["train_loss"] < first["train_loss"]
    run = Path(summary["run_dir"])
    for name in ("best.pt", "last.pt", "config.yaml", "history.jsonl", "history.csv", "summary.json", "curves.png"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(12))


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, synthetic_shards):
    extra = ["optim.max_steps_per_epoch=2", "model.augment.mixup_p=0.5"]  # mixup: RNG-dependent steps too
    full = train(quick_config(synthetic_shards, tmp_path / "full", "optim.epochs=3", *extra))
    train(quick_config(synthetic_shards, tmp_path / "cut", "optim.epochs=1", *extra))  # "stopped" after epoch 0
    resumed = train(quick_config(synthetic_shards, tmp_path / "cut", "optim.epochs=3", "run.resume=true", *extra))
    keys = ("train_loss", "valid_loss", "valid_acc", "valid_track_acc", "lr")
    for a, b in zip(full["history"], resumed["history"]):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    sa = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model_state"]
    sb = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["model_state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_init_from_fine_tunes_another_runs_weights(tmp_path, synthetic_shards):
    base = train(quick_config(synthetic_shards, tmp_path / "base", "optim.epochs=1", "optim.max_steps_per_epoch=2"))
    tuned = train(
        quick_config(synthetic_shards, tmp_path / "tuned", "optim.epochs=1", "optim.max_steps_per_epoch=1",
                     f"run.init_from={base['best_checkpoint']}", "optim.lr=1e-9")  # fmt: skip
    )
    a = torch.load(base["best_checkpoint"], weights_only=False)["model_state"]
    b = torch.load(tuned["last_checkpoint"], weights_only=False)["model_state"]
    conv = next(k for k in a if k.endswith("weight") and a[k].dim() == 4)
    assert torch.allclose(a[conv], b[conv], atol=1e-6)  # lr ~ 0: the weights are the base run's


def test_validation_during_training_equals_evaluate_on_the_checkpoint(tmp_path, synthetic_shards):
    """One evaluation path: the figures training logs for an epoch are those ``evaluate`` gives for the
    checkpoint of that epoch on the same split (overlapping windows: hop 1 s over 2-s windows)."""
    from engine.evaluate import evaluate_checkpoint

    summary = train(quick_config(synthetic_shards, tmp_path / "run", "optim.epochs=1", "optim.max_steps_per_epoch=3",
                                 "data.eval_hop_seconds=1.0", "data.eval_batch_size=5"))  # fmt: skip
    row = summary["history"][0]
    ev = evaluate_checkpoint(summary["last_checkpoint"], synthetic_shards, split="valid", batch_size=5,
                             hop_seconds=1.0, num_workers=0, progress=False)  # fmt: skip
    assert row["valid_tracks"] == ev["track"]["n"] == 8
    assert row["valid_windows"] == ev["windows"] == ev["segment"]["n"] == 8 * 2  # 3-s clips: windows at 0, 1 s
    assert (row["valid_acc"], row["valid_f1"]) == (ev["segment"]["accuracy"], ev["segment"]["macro_f1"])
    assert (row["valid_track_acc"], row["valid_track_f1"]) == (ev["track"]["accuracy"], ev["track"]["macro_f1"])


# ------------------------------------------------------------------------------------ two processes
@pytest.mark.slow
def test_two_gloo_processes_train_and_validate_like_one_process_evaluation(gloo_runs, synthetic_shards):
    """``engine.train`` under ``accelerate launch --multi_gpu --num_processes 2`` (the shared launch of
    :mod:`tests.engine.gloo_runs`: QUICK, 2 epochs of 3 steps)."""
    run = gloo_runs["train"]
    run.check()
    out = run.info["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2  # `--cpu --num_processes 2` would silently run one
    best = summary["best"]
    assert best["valid_tracks"] == 8  # each rank validated its own tracks; none counted twice

    from engine.evaluate import evaluate_checkpoint

    single = evaluate_checkpoint(out / "best.pt", synthetic_shards, split="valid", progress=False)
    assert single["track"]["n"] == 8 and single["windows"] == best["valid_windows"]
    for ours, theirs in (("valid_acc", ("segment", "accuracy")), ("valid_f1", ("segment", "macro_f1")),
                         ("valid_track_acc", ("track", "accuracy")), ("valid_track_f1", ("track", "macro_f1"))):
        assert best[ours] == pytest.approx(single[theirs[0]][theirs[1]]), ours  # fmt: skip


#: The small-set recipe: 2 crops per track, length in optimiser steps (10 = 4 + 4 + 2: the last epoch stops
#: mid-way), warmup + cosine to min_lr per step, and the EMA of the weights (validated and saved).
RECIPE = ["data.crops_per_track=2", "optim.max_steps=10", "optim.warmup_steps=3", "optim.min_lr=1e-4",
          "optim.ema_decay=0.9"]  # fmt: skip

#: The crash/kill tests' run: 3 epochs of 4 steps, RNG-dependent augmentation, a save every 2 steps, cosine.
CRASH_RUN = ["optim.epochs=3", "optim.max_steps_per_epoch=4", "model.augment.mixup_p=0.5", "model.augment.noise_p=0.5",
             "run.save_every_steps=2", "optim.schedule=cosine"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_shards):
    """``uninterrupted(recipe_id) -> (run folder, summary)``: the run that never stopped, with ``CRASH_RUN`` (and
    ``RECIPE`` for ``"recipe"``), trained once for the crash and kill tests that compare with it."""
    runs: dict[str, tuple[Path, dict]] = {}

    def get(recipe_id: str) -> tuple[Path, dict]:
        if recipe_id not in runs:
            out = tmp_path_factory.mktemp(f"full-{recipe_id}")
            recipe = RECIPE if recipe_id == "recipe" else []
            runs[recipe_id] = out, train(quick_config(synthetic_shards, out, *CRASH_RUN, *recipe))
        return runs[recipe_id]

    return get


#: ``python -c`` body: engine.train's CLI in a real process that SIGKILLs itself right after it saved the training
#: state at (epoch, epoch_step) = argv[1:3] -- a kill at a precise point, not a race against progress.
KILL_AFTER_SAVE = """
import os, signal, sys
import engine.train.loop as t
from engine.train import main
at = tuple(map(int, sys.argv[1:3]))
real_save = t.save_train_state
def save_then_die(accelerator, run_dir, state, net):
    real_save(accelerator, run_dir, state, net)
    if (state.epoch, state.epoch_step) == at:
        os.kill(os.getpid(), signal.SIGKILL)
t.save_train_state = save_then_die
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_run_killed_mid_training_resumes_to_the_uninterrupted_result(tmp_path, synthetic_shards, uninterrupted):
    """SIGKILL a real training process right after its mid-epoch save at batch 2 of epoch 1; resume in-process;
    equal to no kill (``CRASH_RUN``'s uninterrupted run, shared with the crash test).

    The kill is followed by the two other crash windows of the state swap: a half-written ``state.new/``
    and a ``state/`` caught mid-rename (only ``state.old/`` left) -- neither may lose or mix epochs.
    """
    import shutil
    import signal

    from engine.train import saved_state_dir

    extra = CRASH_RUN
    full_dir, full = uninterrupted("plain")
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-c", KILL_AFTER_SAVE, "1", "2", f"--shards={synthetic_shards}", f"--out={cut}", *QUICK, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state = saved_state_dir(cut)
    assert state == cut / "state"
    saved = json.loads((state / "train_state.json").read_text())
    assert (saved["epoch"], saved["epoch_step"]) == (1, 2) and len(saved["history"]) == 1
    (cut / "state.new").mkdir()
    (cut / "state.new" / "model.safetensors").write_bytes(b"half-written")
    shutil.move(str(state), str(cut / "state.old"))

    resumed = train(quick_config(synthetic_shards, cut, "run.resume=true", *extra))
    keys = ("epoch", "train_loss", "valid_loss", "valid_acc", "valid_track_acc", "lr")
    assert [{k: r[k] for k in keys} for r in resumed["history"]] == [{k: r[k] for k in keys} for r in full["history"]]
    sa = torch.load(full_dir / "last.pt", weights_only=False)["model_state"]
    sb = torch.load(cut / "last.pt", weights_only=False)["model_state"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert saved_state_dir(cut) == cut / "state" and not (cut / "state.old").exists()


def test_gradient_accumulation_runs_whole_cycles_and_steps_once_per_cycle(tmp_path, synthetic_shards):
    summary = train(
        quick_config(synthetic_shards, tmp_path / "acc", "optim.grad_accum=2", "optim.max_steps_per_epoch=5",
                     "optim.epochs=2")  # fmt: skip
    )
    # 5 batches per epoch -> 4 (two whole cycles of 2) -> 2 optimiser steps per epoch
    assert [r["step"] for r in summary["history"]] == [2, 4]


def test_class_weighted_validation_loss_is_the_weighted_mean(tmp_path, synthetic_shards):
    import shutil

    import torch.nn.functional as F

    from engine.checkpoint import load_model
    from engine.losses import class_weight_tensor
    from shards.window_stream import WindowStream

    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["splits"]["train"]["per_label"].update(classical=16, metal=2)  # as if imbalanced: weights differ
    (shards / "manifest.json").write_text(json.dumps(manifest))
    summary = train(quick_config(shards, tmp_path / "w", "optim.class_weights=true", "optim.epochs=1",
                                 "optim.max_steps_per_epoch=2"))  # fmt: skip
    model, ckpt = load_model(summary["last_checkpoint"])
    stream = WindowStream(str(shards), "valid", window_samples=ckpt["segment_samples"], batch_size=64)
    weight = class_weight_tensor(manifest, "train", ckpt["labels"])
    assert weight.max() / weight.min() > 4
    logits, labels = [], []
    with torch.no_grad():
        for batch in stream:
            ok = batch["valid"]
            logits.append(model(batch["wave"][ok]))
            labels.append(batch["label"][ok])
    expected = F.cross_entropy(torch.cat(logits), torch.cat(labels), weight=weight).item()
    assert summary["history"][0]["valid_loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("recipe", [[], RECIPE], ids=["plain", "recipe"])
def test_crash_mid_epoch_resumes_from_the_mid_epoch_state_to_the_uninterrupted_result(
    tmp_path, synthetic_shards, monkeypatch, recipe, uninterrupted
):
    """``run.save_every_steps``: a run that dies right after saving at batch 2 of epoch 1 resumes there (data
    position, optimiser, schedule, EMA, dropout and augmentation streams) and ends exactly as the run that
    never stopped."""
    import engine.train.loop as train_module

    extra = [*CRASH_RUN, *recipe]
    full_dir, full = uninterrupted("recipe" if recipe else "plain")

    real_save = train_module.save_train_state

    def save_then_crash(accelerator, run_dir, state, net):
        real_save(accelerator, run_dir, state, net)
        if state.epoch == 1 and state.epoch_step == 2:
            raise RuntimeError("simulated crash right after a mid-epoch save")

    monkeypatch.setattr(train_module, "save_train_state", save_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(quick_config(synthetic_shards, tmp_path / "cut", *extra))
    monkeypatch.setattr(train_module, "save_train_state", real_save)
    saved = json.loads((tmp_path / "cut" / "state" / "train_state.json").read_text())
    assert (saved["epoch"], saved["epoch_step"]) == (1, 2)

    resumed = train(quick_config(synthetic_shards, tmp_path / "cut", "run.resume=true", *extra))
    keys = ("epoch", "step", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "valid_track_acc")
    assert [{k: r[k] for k in keys} for r in resumed["history"]] == [{k: r[k] for k in keys} for r in full["history"]]
    for name in ("last.pt", "best.pt"):  # with the recipe: the EMA weights
        sa = torch.load(full_dir / name, weights_only=False)["model_state"]
        sb = torch.load(tmp_path / "cut" / name, weights_only=False)["model_state"]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    if recipe:
        assert [r["step"] for r in full["history"]] == [4, 8, 10]  # max_steps, not epochs x steps
        assert full["history"][-1]["lr"] == pytest.approx(1e-4)  # the cosine ends at min_lr
        assert full["weights"] == "ema"
