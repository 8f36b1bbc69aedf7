"""Zero-shot tagging: ``classify musicnn:MSD_musicnn`` writes multi-label tag lines whose scores are the mean of
the windows' sigmoid scores of the converted pretrained model (the real musicnn 0.1.0 weights), ``--tags genre``
keeps the genre tags, and resume is keyed by the resolved checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.checkpoint import load_model
from engine.classify import CheckpointInputError, classify, read_records
from engine.pretrained import resolve_checkpoint
from engine.pretrained.musicnn import GENRE_TAGS
from shards.audio import load_audio
from shards.format import to_pcm16
from shards.windows import fit_length, window_starts
from shards.writer import sha256_file

SPEC = "musicnn:MSD_musicnn"
FILE_SR = 22050  # the files' rate: classify resamples to the model's 16 kHz while decoding


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three clips: shorter than one 2.98-s window, two windows, three windows; plus one file that is not audio."""
    root = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(0)
    for i, seconds in enumerate((2.0, 6.0, 8.5)):
        t = np.arange(int(seconds * FILE_SR)) / FILE_SR
        beat = (np.sin(2 * np.pi * 2 * t) > 0.95).astype(np.float64) * rng.standard_normal(len(t))
        x = 0.3 * np.sin(2 * np.pi * (110 * (i + 1)) * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t)) + 0.3 * beat
        sf.write(root / f"clip{i}.wav", x.astype(np.float32), FILE_SR)
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return root


def direct_scores(path: Path) -> np.ndarray:
    """Reference: the converted model run eagerly on the file's 16-kHz windows; mean of the sigmoid scores."""
    model, info = load_model(SPEC)
    seg = info["segment_samples"]
    wave, _ = load_audio(path, info["sample_rate"])
    pcm = to_pcm16(fit_length(wave, max(len(wave), seg), "loop"))  # a short clip looped, as classify fills it
    x = torch.from_numpy(np.stack([pcm[s : s + seg] for s in window_starts(len(wave), seg)]))
    with torch.no_grad():
        return torch.sigmoid(model(x)).mean(0).double().numpy()


@pytest.fixture(scope="module")
def all_tags(pretrained_cache: Path, music: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out") / "tags.jsonl"
    summary = classify(SPEC, [music], out, top_k=50, num_workers=0, progress=False)
    return out, summary


def test_tag_lines_hold_all_50_sigmoid_means_of_the_pretrained_model(all_tags, music: Path) -> None:
    out, summary = all_tags
    labels = load_model(SPEC)[1]["labels"]
    recs = {Path(r["path"]).name: r for r in read_records(out, "jsonl")}
    assert sorted(recs) == ["broken.wav", "clip0.wav", "clip1.wav", "clip2.wav"]
    assert all(r["kind"] == "tags" for r in recs.values())  # error lines too
    assert recs["broken.wav"]["status"] == "error"
    assert [recs[f"clip{i}.wav"]["windows"] for i in range(3)] == [1, 2, 3]
    for i in range(3):
        rec = recs[f"clip{i}.wav"]
        top = rec["top"]
        assert sorted(t["label"] for t in top) == sorted(labels)
        probs = [t["prob"] for t in top]
        assert probs == sorted(probs, reverse=True) and all(0 < p < 1 for p in probs)
        assert abs(sum(probs) - 1) > 0.1  # independent sigmoids, not a softmax
        want = dict(zip(labels, direct_scores(music / f"clip{i}.wav")))
        got = {t["label"]: t["prob"] for t in top}
        np.testing.assert_allclose([got[k] for k in labels], [want[k] for k in labels], atol=2e-6, rtol=0)
    run = json.loads(Path(str(out) + ".run.json").read_text())
    assert run["kind"] == "tags" and run["tags"] is None
    assert run["model_sha256"] == sha256_file(resolve_checkpoint(SPEC))  # the converted file, not the name
    assert summary["kind"] == "tags" and summary["ok"] == 3 and summary["error"] == 1


def test_tags_genre_keeps_the_genre_tags_with_the_same_scores(all_tags, music: Path, tmp_path: Path) -> None:
    full = {Path(r["path"]).name: r for r in read_records(all_tags[0], "jsonl")}
    out = tmp_path / "genres.jsonl"
    classify(SPEC, [music], out, top_k=50, tags="genre", num_workers=0, progress=False)
    genres = set(GENRE_TAGS["MSD"])
    assert len(genres) == 30
    for rec in read_records(out, "jsonl"):
        if rec["status"] != "ok":
            continue
        assert {t["label"] for t in rec["top"]} == genres  # top-k 50 is capped at the group's 30
        want = {t["label"]: t["prob"] for t in full[Path(rec["path"]).name]["top"] if t["label"] in genres}
        assert [t["label"] for t in rec["top"]] == sorted(want, key=lambda k: -want[k])
        assert {t["label"]: t["prob"] for t in rec["top"]} == pytest.approx(want, abs=1e-7)
    # default top-k: the three best genre tags
    out3 = tmp_path / "top3.jsonl"
    classify(SPEC, [music / "clip2.wav"], out3, tags="genre", num_workers=0, progress=False)
    (rec,) = read_records(out3, "jsonl")
    assert [t["label"] for t in rec["top"]] == [t["label"] for t in full["clip2.wav"]["top"] if t["label"] in genres][:3]


def test_resume_with_another_tag_group_is_refused_and_tags_need_a_tag_model(
    all_tags, music: Path, tmp_path: Path, make_tiny_checkpoint
) -> None:
    out = all_tags[0]
    with pytest.raises(ValueError, match="tags='genre'|tags=None"):
        classify(SPEC, [music], out, top_k=50, tags="genre", num_workers=0, progress=False)
    again = classify(SPEC, [music], out, top_k=50, num_workers=0, progress=False)  # same settings: all skipped
    assert again["new"] == 0 and again["skipped"] == 4
    tiny = make_tiny_checkpoint(tmp_path / "tiny.pt", ["a", "b", "c"], 8000, 8000)
    with pytest.raises(CheckpointInputError, match="not a multi-label tag model"):
        classify(tiny, [music], tmp_path / "x.jsonl", tags="genre", num_workers=0, progress=False)
    with pytest.raises(CheckpointInputError, match="no tag group 'mood'"):
        classify(SPEC, [music], tmp_path / "y.jsonl", tags="mood", num_workers=0, progress=False)
