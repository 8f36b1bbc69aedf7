"""``classify`` with a multi-label checkpoint: a line lists exactly the tags whose mean window sigmoid is at or above
the tag's threshold (the per-tag cuts the run stored, or ``--threshold`` for every tag), highest first; the CSV
has a ``tags`` column; the threshold is part of the run's identity; musicnn's tag models list theirs above 0.5;
genre lines keep their shape."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.checkpoint import load_model
from engine.classify import CheckpointInputError, classify, main, read_records
from engine.config import load_config
from engine.train import TrainConfig, train
from shards.audio import load_audio
from shards.format import to_pcm16
from shards.windows import fit_length, window_starts
from tests.engine.multilabel_shards import SR, TAGS, make_multilabel_shards
from tests.engine.test_multilabel_train import QUICK

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tag_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN trained 2 epochs on the hand-made tag set (low / high / noisy), with its stored thresholds."""
    root = tmp_path_factory.mktemp("ml")
    shards = make_multilabel_shards(root / "shards")
    cfg = load_config(TrainConfig, None, [f"data.shards={shards}", f"run.out_dir={root / 'run'}", *QUICK,
                                          "optim.epochs=2"])  # fmt: skip
    return Path(train(cfg)["best_checkpoint"])


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files at the set's 8 kHz with tag-like content: a low tone, a high tone + noise, all three, 0.6-2.5 s."""
    root = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(1)
    for name, seconds, parts in (("low", 1.0, "l"), ("high_noisy", 2.5, "hn"), ("all", 0.6, "lhn"), ("quiet", 1.7, "")):
        t = np.arange(int(seconds * SR)) / SR
        x = 0.01 * rng.standard_normal(t.size)
        x += 0.3 * np.sin(2 * np.pi * 220 * t) if "l" in parts else 0
        x += 0.3 * np.sin(2 * np.pi * 2500 * t) if "h" in parts else 0
        x += 0.2 * rng.standard_normal(t.size) if "n" in parts else 0
        sf.write(root / f"{name}.wav", x.astype(np.float32), SR)
    return root


def mean_scores(checkpoint: str | Path, path: Path) -> tuple[list[str], np.ndarray]:
    """By hand: the model on the file's windows (a short file looped, as classify fills it), the mean of the
    windows' sigmoid scores per tag, float64 ``[K]``."""
    model, info = load_model(checkpoint)
    seg = info["segment_samples"]
    wave, _ = load_audio(path, info["sample_rate"])
    pcm = to_pcm16(fit_length(wave, max(len(wave), seg), "loop"))
    x = torch.from_numpy(np.stack([pcm[s : s + seg] for s in window_starts(len(wave), seg)]))
    with torch.no_grad():
        return list(info["labels"]), torch.sigmoid(model(x)).double().mean(0).numpy()


def expected_tags(labels: list[str], scores: np.ndarray, cuts: np.ndarray) -> list[str]:
    return [labels[i] for i in sorted(np.flatnonzero(scores >= cuts), key=lambda i: -scores[i])]


def lines(out: Path, fmt: str = "jsonl") -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in read_records(out, fmt)}


def test_lines_list_the_tags_at_or_above_the_stored_thresholds(tag_checkpoint: Path, music: Path, tmp_path: Path) -> None:
    cuts = np.array(torch.load(tag_checkpoint, weights_only=True)["extra"]["thresholds"])
    assert cuts.shape == (3,) and not np.allclose(cuts, 0.5)  # the run's own per-tag cuts
    out = tmp_path / "tags.jsonl"
    summary = classify(tag_checkpoint, [music], out, num_workers=0, progress=False)
    recs = lines(out)
    assert sorted(recs) == ["all.wav", "high_noisy.wav", "low.wav", "quiet.wav"]
    listed = 0
    for name, rec in recs.items():
        labels, scores = mean_scores(tag_checkpoint, music / name)
        assert labels == TAGS and rec["kind"] == "tags" and rec["status"] == "ok"
        want = expected_tags(labels, scores, cuts)
        assert [t["label"] for t in rec["tags"]] == want, (name, scores, cuts)
        assert [t["score"] for t in rec["tags"]] == pytest.approx([scores[labels.index(t)] for t in want], abs=1e-6)
        assert [k for k in rec if k != "notes"] == ["path", "status", "reason", "duration", "kind", "top", "tags", "windows"]
        assert len(rec["top"]) == 3  # the top-k scores stay, tags above their cut or not
        listed += len(want)
    assert listed > 0
    assert sum(summary["tag_counts"].values()) == listed
    run = json.loads(Path(f"{out}.run.json").read_text())
    assert run["threshold"] is None and run["tag_list"] is True and run["kind"] == "tags"


def test_threshold_overrides_every_tag_and_a_resume_with_another_is_refused(
    tag_checkpoint: Path, music: Path, tmp_path: Path
) -> None:
    out = tmp_path / "t.jsonl"
    classify(tag_checkpoint, [music], out, threshold=0.5, num_workers=0, progress=False)
    for name, rec in lines(out).items():
        labels, scores = mean_scores(tag_checkpoint, music / name)
        assert [t["label"] for t in rec["tags"]] == expected_tags(labels, scores, np.full(3, 0.5))
    everything = tmp_path / "zero.jsonl"
    classify(tag_checkpoint, [music], everything, threshold=0.0, num_workers=0, progress=False)
    assert all(len(r["tags"]) == 3 for r in lines(everything).values())
    assert json.loads(Path(f"{out}.run.json").read_text())["threshold"] == 0.5
    with pytest.raises(ValueError, match="threshold=0.5"):
        classify(tag_checkpoint, [music], out, threshold=0.3, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="threshold=0.5"):  # the model's own cuts are another threshold too
        classify(tag_checkpoint, [music], out, num_workers=0, progress=False)
    again = classify(tag_checkpoint, [music], out, threshold=0.5, num_workers=0, progress=False)
    assert again["new"] == 0 and again["skipped"] == 4


def test_csv_has_a_tags_column_joined_by_semicolons(tag_checkpoint: Path, music: Path, tmp_path: Path) -> None:
    classify(tag_checkpoint, [music], tmp_path / "r.jsonl", threshold=0.2, num_workers=0, progress=False)
    classify(tag_checkpoint, [music], tmp_path / "r.csv", threshold=0.2, top_k=2, num_workers=0, progress=False)
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "status", "reason", "duration", "label_1", "prob_1", "label_2", "prob_2", "tags",
                       "windows", "note"]  # fmt: skip
    jsonl = lines(tmp_path / "r.jsonl")
    by_name = {Path(r[0]).name: dict(zip(rows[0], r)) for r in rows[1:]}
    assert any(";" in r["tags"] for r in by_name.values())
    for name, row in by_name.items():
        assert row["tags"] == ";".join(t["label"] for t in jsonl[name]["tags"])
    for name, rec in lines(tmp_path / "r.csv", "csv").items():  # read back: the names
        assert [t["label"] for t in rec["tags"]] == [t["label"] for t in jsonl[name]["tags"]]


def test_a_tag_csv_from_before_the_tags_column_is_refused_a_jsonl_resumes(
    tag_checkpoint: Path, music: Path, tmp_path: Path
) -> None:
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"old.{fmt}"
        classify(tag_checkpoint, [music / "low.wav"], out, num_workers=0, progress=False)
        side = Path(f"{out}.run.json")
        old = {k: v for k, v in json.loads(side.read_text()).items() if k not in ("threshold", "tag_list")}
        side.write_text(json.dumps(old))  # the sidecar of a classify from before this change
        if fmt == "csv":
            with pytest.raises(ValueError, match="older classify, whose CSV has no tags column"):
                classify(tag_checkpoint, [music], out, num_workers=0, progress=False)
        else:
            assert classify(tag_checkpoint, [music], out, num_workers=0, progress=False)["new"] == 3


def test_genre_lines_keep_their_shape_and_threshold_needs_a_tag_model(
    music: Path, tmp_path: Path, make_tiny_checkpoint, refused, capsys: pytest.CaptureFixture[str]
) -> None:
    genre = make_tiny_checkpoint(tmp_path / "genre.pt", ["a", "b", "c"], SR, SR)
    classify(genre, [music / "low.wav"], tmp_path / "g.jsonl", num_workers=0, progress=False)
    (rec,) = read_records(tmp_path / "g.jsonl", "jsonl")
    assert list(rec) == ["path", "status", "reason", "duration", "top", "windows"]
    classify(genre, [music / "low.wav"], tmp_path / "g.csv", num_workers=0, progress=False)
    assert "tags" not in (tmp_path / "g.csv").read_text().splitlines()[0].split(",")
    with pytest.raises(CheckpointInputError, match="not a multi-label tag model"):
        classify(genre, [music], tmp_path / "x.jsonl", threshold=0.5, num_workers=0, progress=False)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        classify(genre, [music], tmp_path / "y.jsonl", threshold=1.5, num_workers=0, progress=False)
    err = refused(main, [genre, music, "--out", tmp_path / "z.jsonl", "--threshold", "1.5"], capsys)
    assert "--threshold" in err and "in [0, 1]" in err


def test_musicnn_tag_model_lists_the_tags_above_one_half(pretrained_cache: Path, music: Path, tmp_path: Path) -> None:
    spec = "musicnn:MTT_musicnn"
    out = tmp_path / "mtt.jsonl"
    classify(spec, [music / "high_noisy.wav"], out, top_k=50, num_workers=0, progress=False)
    (rec,) = read_records(out, "jsonl")
    scores = {t["label"]: t["prob"] for t in rec["top"]}
    assert rec["kind"] == "tags" and len(scores) == 50
    assert [t["label"] for t in rec["tags"]] == [k for k, p in scores.items() if p >= 0.5]  # top is best first
    assert all(t["score"] == scores[t["label"]] for t in rec["tags"])
    low = tmp_path / "low.jsonl"
    classify(spec, [music / "high_noisy.wav"], low, top_k=50, threshold=0.05, num_workers=0, progress=False)
    (rec,) = read_records(low, "jsonl")
    assert [t["label"] for t in rec["tags"]] == [k for k, p in scores.items() if p >= 0.05]
    assert len(rec["tags"]) > 0
