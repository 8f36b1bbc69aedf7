"""engine.report and engine.evaluate end to end: a real tar shard set, a real checkpoint, real subprocesses."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import load_model
from engine.checkpoint_format import save_checkpoint
from engine.config import from_dict, to_dict
from engine.evaluate import evaluate_checkpoint, main
from engine.label_map import resolve_label_map
from engine.metrics import classification_metrics
from engine.models import ModelConfig, build_model
from engine.report import write_evaluation
from shards import format as fmt

SR = 8000
SEGMENT = SR // 2  # 0.5-s windows
LABELS = ["blues", "hiphop", "rock"]
REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = {
    "arch": "cnn",
    "params": {"channels": [4, 8], "hidden": 8},
    "features": {"n_fft": 256, "hop_length": 128, "n_mels": 32},
    "augment": {"enabled": False},
}


# ------------------------------------------------------------------------------------------ fixtures


def make_shard_set(
    root: Path,
    labels: list[str],
    tracks_per_label: int = 3,
    sample_rate: int = SR,
    per_shard: int = 4,
    folds: int = 0,
) -> Path:
    """A test split of ``len(labels) * tracks_per_label`` tracks of 0.3-1.6 s (1-4 windows, one shorter
    than a window) in tar shards of ``per_shard`` tracks, with manifest.json; with ``folds``, track ``j``
    of each label is in fold ``j % folds``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for li, label in enumerate(labels):
        for j in range(tracks_per_label):
            seconds = [0.3, 0.9, 1.6][j % 3]
            t = np.arange(int(seconds * sample_rate)) / sample_rate
            wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * li + 20 * j) * t) + 0.05 * rng.standard_normal(
                t.size
            )
            key = f"{label}_{j:03d}"
            meta = {
                "key": key,
                "label": label,
                "label_index": li,
                "path": f"{label}/{label}.{j:05d}.wav",
                "orig_sample_rate": 22050,
                "channels": 1,
                "duration": t.size / sample_rate,
                "num_samples": int(t.size),
                "track_id": None,
                "artist": None,
                "split": "test",
                "fold": j % folds if folds else -1,
            }
            samples.append((key, fmt.encode_pcm(wave), meta))
    order = np.random.default_rng(1).permutation(len(samples))  # labels interleaved across shards
    samples = [samples[i] for i in order]
    entries = []
    for s in range(0, len(samples), per_shard):
        name = fmt.shard_name("test", s // per_shard)
        chunk = samples[s : s + per_shard]
        with tarfile.open(root / name, "w") as tar:
            for key, pcm, meta in chunk:
                for ext, data in ((fmt.PCM_EXT, pcm), (fmt.META_EXT, fmt.encode_meta(meta))):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        entries.append(
            {"name": name, "samples": len(chunk), "bytes": (root / name).stat().st_size, "sha256": ""}
        )
    per_label = {lab: sum(1 for _, _, m in samples if m["label"] == lab) for lab in labels}
    manifest = {
        "format_version": fmt.FORMAT_VERSION,
        "kind": "audio",
        "sample_rate": sample_rate,
        "labels": labels,
        "splits": {
            "test": {"tracks": len(samples), "seconds": 0.0, "per_label": per_label, "shards": entries}
        },
        "skipped": [],
        "source": "synthetic test",
        "layout": "test",
        "command": "",
        "folds": folds,
    }
    (root / fmt.MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


def make_checkpoint(
    path: Path,
    labels: list[str],
    sample_rate: int = SR,
    seed: int = 0,
    window_samples: int | None = None,
    config: dict | None = None,
) -> Path:
    torch.manual_seed(seed)
    cfg = from_dict(ModelConfig, TINY_MODEL)
    model = build_model(cfg, len(labels), sample_rate, SEGMENT)
    return save_checkpoint(
        path,
        model=model,
        config={"model": to_dict(cfg), **(config or {})},
        labels=labels,
        sample_rate=sample_rate,
        segment_samples=SEGMENT,
        epoch=0,
        metrics={},
        window_samples=window_samples,
    )


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return make_shard_set(tmp_path_factory.mktemp("shards"), LABELS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", LABELS)


def reference_track_predictions(
    ckpt: Path, shard_dir: Path, model_labels: list[str], segment: int = SEGMENT, logprob: bool = False
) -> dict[str, tuple[int, list]]:
    """Independent computation: read every track from the tars, cut windows of ``segment`` samples (0.5 s; a
    tail of at least half a window gets one end-aligned window, a shorter track one window, looped from its start as training fills a short crop), run
    the model, average window probabilities (``logprob``: log-probabilities, renormalised) -> {key: (true
    label index, track probs)}."""
    model, _ = load_model(ckpt, "cpu")
    out = {}
    for tar_path in sorted(shard_dir.glob("test-*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            if not name.endswith(".json"):
                continue
            meta = fmt.decode_meta(data)
            pcm = fmt.decode_pcm(members[f"{meta['key']}.pcm"])
            starts = list(range(0, pcm.size - segment + 1, segment)) or [0]
            if pcm.size > segment and (pcm.size - segment) - starts[-1] >= segment // 2:
                starts.append(pcm.size - segment)
            if pcm.size < segment:
                pcm = np.resize(pcm, segment)  # repeats the track
            windows = np.stack([pcm[start : start + segment] for start in starts])
            with torch.inference_mode():
                probs = torch.softmax(model(torch.from_numpy(windows)).float(), dim=1)
            if logprob:
                probs = torch.softmax(probs.double().log().mean(0), dim=0)
            else:
                probs = probs.mean(0)
            out[meta["key"]] = (model_labels.index(meta["label"]), probs.tolist())
    return out


# ------------------------------------------------------------------------------------------ report


def test_write_evaluation_files_exist_and_parse(tmp_path):
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5]])
    labels = torch.tensor([0, 1, 2, 2])
    metrics = {
        "segment": classification_metrics(probs, labels, LABELS),
        "track": classification_metrics(probs, labels, LABELS),
        "track_vote": {"accuracy": 0.75, "n": 4},
        "unmapped_classes": {"pop": 2},
        "model_classes_absent": [],
    }
    preds = [
        {"key": f"k{i}", "path": f"dir/k{i}.wav", "true_label": LABELS[int(t)],
         "predicted_label": LABELS[int(p.argmax())], "probs": p.tolist()}
        for i, (p, t) in enumerate(zip(probs, labels))
    ]  # fmt: skip
    paths = write_evaluation(tmp_path / "eval", metrics, preds, LABELS)
    assert json.loads(paths["metrics"].read_text())["track"]["accuracy"] == pytest.approx(0.75)
    with open(paths["predictions"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert [r["correct"] for r in rows] == ["1", "1", "0", "1"]
    assert [r["top2_correct"] for r in rows] == ["1", "1", "1", "1"]
    assert rows[2]["predicted_label"] == "blues" and float(rows[2]["p_rock"]) == pytest.approx(0.4)
    assert paths["confusion_matrix"].stat().st_size > 1000
    report = paths["report"].read_text()
    for header in (
        "| metric | segment (per window) | track (mean of windows) |",
        "| class | tracks | precision | recall | F1 | windows | segment F1 |",
        "| true \\ predicted | blues | hiphop | rock |",
    ):
        assert header in report
    assert "| accuracy | 75.00% | 75.00% |" in report
    assert "unmapped classes: pop (2) (2 tracks not evaluated)" in report
    assert "## Misclassified tracks (1 of 4)" in report and "dir/k2.wav" in report


# ------------------------------------------------------------------------------------------ label maps


def test_resolve_label_map_automatic_case_and_punctuation_match():
    index, mapping = resolve_label_map(["hiphop", "Rock", "polka"], ["Hip-Hop", "rock", "jazz"])
    assert index == [0, 1, -1]
    assert mapping == {"hiphop": "Hip-Hop", "Rock": "rock"}


def test_resolve_label_map_explicit_entries_and_typos():
    index, _ = resolve_label_map(["hiphop", "rock"], ["rap", "rock"], {"hiphop": "rap", "rock": None})
    assert index == [0, -1]
    with pytest.raises(ValueError, match="not model labels"):
        resolve_label_map(["hiphop"], ["rap"], {"hiphop": "Rap!"})
    with pytest.raises(ValueError, match="shard label"):
        resolve_label_map(["hiphop"], ["rap"], {"hip-hop": "rap"})


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_counts_every_track_and_matches_manual_computation(shard_set, checkpoint, tmp_path):
    out = tmp_path / "eval"
    m = evaluate_checkpoint(checkpoint, shard_set, "test", out, batch_size=5, num_workers=0, progress=False)
    ref = reference_track_predictions(checkpoint, shard_set, LABELS)
    assert m["track"]["n"] == len(ref) == 9 == m["tracks_expected"]
    assert m["world_size"] == 1 and m["tracks_missing"] == []
    # 0.3 s -> 1 window, 0.9 s -> 2 (0.4-s tail: end-aligned), 1.6 s -> 3 (0.1-s tail left out): 6 per label
    assert m["segment"]["n"] == m["windows"] == 18
    manual_acc = sum(int(np.argmax(p)) == t for t, p in ref.values()) / len(ref)
    assert m["track"]["accuracy"] == pytest.approx(manual_acc)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    for row in rows:
        t, probs = ref[row["key"]]
        assert row["true_label"] == LABELS[t]
        assert [float(row[f"p_{n}"]) for n in LABELS] == pytest.approx(probs, abs=1e-5)
        assert row["path"].startswith(row["true_label"] + "/")
    assert json.loads((out / "metrics.json").read_text())["track"]["n"] == 9
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert "| class | tracks |" in (out / "report.md").read_text()


def test_evaluate_uses_the_checkpoints_window_and_track_aggregate(shard_set, tmp_path):
    """A checkpoint of 0.5-s crops that validated on 1-s windows with the mean of log-probabilities: evaluate
    scores 1-s windows (0.3 s and 0.9 s -> one looped window, 1.6 s -> 0 and end-aligned 0.6 s) and ranks
    tracks by the renormalised geometric mean, as an independent computation does; both flags override."""
    ckpt = make_checkpoint(tmp_path / "long.pt", LABELS, window_samples=SR,
                           config={"eval": {"track_aggregate": "mean_logprob"}})  # fmt: skip
    out = tmp_path / "eval"
    m = evaluate_checkpoint(ckpt, shard_set, "test", out, batch_size=4, num_workers=0, progress=False)
    assert (
        m["segment_samples"] == SR and m["train_segment_samples"] == SEGMENT and m["segment_seconds"] == 1.0
    )
    assert m["windows"] == 3 * (1 + 1 + 2) and m["track_aggregate"] == "mean_logprob"
    ref = reference_track_predictions(ckpt, shard_set, LABELS, segment=SR, logprob=True)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert [float(row[f"p_{n}"]) for n in LABELS] == pytest.approx(ref[row["key"]][1], abs=1e-5)
    assert m["track"]["accuracy"] == m["track_mean_logprob"]["accuracy"]
    ref_prob = reference_track_predictions(ckpt, shard_set, LABELS, segment=SR)
    acc = sum(int(np.argmax(p)) == t for t, p in ref_prob.values()) / len(ref_prob)
    assert m["track_mean_prob"]["accuracy"] == pytest.approx(acc)
    # --segment-seconds / --track-aggregate override what the checkpoint says
    short = evaluate_checkpoint(ckpt, shard_set, "test", segment_seconds=0.5, track_aggregate="mean_prob",
                                num_workers=0, progress=False)  # fmt: skip
    assert short["windows"] == 18 and short["track_aggregate"] == "mean_prob"
    with pytest.raises(ValueError, match="track_aggregate must be one of"):
        evaluate_checkpoint(ckpt, shard_set, "test", track_aggregate="max", num_workers=0, progress=False)


def test_evaluate_with_label_map_reports_unmapped_class(tmp_path, checkpoint):
    # shards name the classes differently and have a class the model lacks; the model's "rock" is absent
    shards = make_shard_set(tmp_path / "other", ["Blues", "Hip-Hop", "polka"], tracks_per_label=2)
    label_map = tmp_path / "map.yaml"
    label_map.write_text("Hip-Hop: hiphop\n")  # Blues matches automatically; polka has no counterpart
    out = tmp_path / "eval"
    m = evaluate_checkpoint(
        checkpoint, shards, "test", out, label_map=label_map, num_workers=0, progress=False
    )
    assert m["label_map"] == {"Blues": "blues", "Hip-Hop": "hiphop"}
    assert m["unmapped_classes"] == {"polka": 2}
    assert m["model_classes_absent"] == ["rock"]
    assert m["track"]["n"] == 4 == m["tracks_expected"]
    assert m["track"]["per_class"]["rock"]["support"] == 0
    assert m["track"]["classes_evaluated"] == ["blues", "hiphop"]
    report = (out / "report.md").read_text()
    assert "unmapped classes: polka (2) (2 tracks not evaluated)" in report
    assert "model classes absent from the shards: rock" in report
    assert json.loads((out / "metrics.json").read_text())["unmapped_classes"] == {"polka": 2}


def test_hop_fold_and_bf16_options(tmp_path, checkpoint):
    shards = make_shard_set(tmp_path / "folded", LABELS, tracks_per_label=3, folds=2)
    full = evaluate_checkpoint(checkpoint, shards, num_workers=0, progress=False)
    # hop 0.25 s over 0.5-s windows: 0.3 s -> 1 window, 0.9 s -> 3 (0, 0.25, end-aligned 0.4), 1.6 s -> 5
    hop = evaluate_checkpoint(checkpoint, shards, hop_seconds=0.25, num_workers=0, progress=False)
    assert hop["windows"] == 3 * (1 + 3 + 5) and hop["hop_seconds"] == 0.25
    assert hop["track"]["n"] == full["track"]["n"] == 9
    # fold 1 holds track j=1 (0.9 s, 2 windows) of each label
    fold = evaluate_checkpoint(checkpoint, shards, fold=1, num_workers=0, progress=False)
    assert fold["track"]["n"] == fold["tracks_expected"] == 3 and fold["windows"] == 6
    assert fold["fold"] == 1
    with pytest.raises(ValueError, match="fold 2 does not exist: shard set .* has 2 folds"):
        evaluate_checkpoint(checkpoint, shards, fold=2, num_workers=0, progress=False)
    # bf16 autocast runs on CPU and evaluates the same tracks
    bf16 = evaluate_checkpoint(checkpoint, shards, precision="bf16", num_workers=0, progress=False)
    assert bf16["track"]["n"] == 9 and bf16["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        evaluate_checkpoint(checkpoint, shards, precision="fp8", num_workers=0, progress=False)


def test_unreadable_track_is_reported_not_silently_dropped(tmp_path, checkpoint):
    shards = make_shard_set(tmp_path / "bad", LABELS)
    tar_path = shards / fmt.shard_name("test", 0)
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    broken = next(name for name, _ in members if name.endswith(".json"))
    with tarfile.open(tar_path, "w") as tar:
        for name, data in members:
            data = b"{not json" if name == broken else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "eval"
    m = evaluate_checkpoint(checkpoint, shards, out=out, num_workers=0, progress=False)
    assert m["track"]["n"] == 8 and m["tracks_unreadable"] == 1
    assert "1 tracks listed in the manifest could not be read" in (out / "report.md").read_text()


def test_sample_rate_mismatch_is_a_clear_error(tmp_path, shard_set):
    ckpt = make_checkpoint(tmp_path / "m16k.pt", LABELS, sample_rate=16000)
    with pytest.raises(ValueError, match="re-shard the source at 16000 Hz"):
        evaluate_checkpoint(ckpt, shard_set, num_workers=0, progress=False)
    assert main([str(ckpt), "--shards", str(shard_set), "--out", str(tmp_path / "e"), "--workers", "0"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_same_metrics_as_one(shard_set, checkpoint, tmp_path):
    common = [
        str(checkpoint),
        "--shards",
        str(shard_set),
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--no-progress",
    ]
    one = tmp_path / "one"
    assert main([*common, "--out", str(one)]) == 0
    two = tmp_path / "two"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))
    }
    env.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "engine.evaluate", *common, "--out", str(two),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    for level in ("segment", "track"):
        assert m2[level]["n"] == m1[level]["n"]
        assert m2[level]["confusion_matrix"] == m1[level]["confusion_matrix"]
        for key in ("accuracy", "top2_accuracy", "macro_f1", "weighted_f1"):
            assert m2[level][key] == pytest.approx(m1[level][key], abs=1e-12)
    assert m2["track_vote"] == m1["track_vote"]
    with open(one / "predictions.csv") as f1, open(two / "predictions.csv") as f2:
        r1, r2 = list(csv.DictReader(f1)), list(csv.DictReader(f2))
    assert [r["key"] for r in r1] == [r["key"] for r in r2]
    for a, b in zip(r1, r2):
        assert [float(a[f"p_{n}"]) for n in LABELS] == pytest.approx(
            [float(b[f"p_{n}"]) for n in LABELS], abs=1e-5
        )
