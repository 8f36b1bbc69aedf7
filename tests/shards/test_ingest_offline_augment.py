"""Offline time stretch / pitch shift at ingest (``make_shards.py --offline-augment``): the waveform
transform itself, the augmented copies of training tracks in real shards, and the CLI's refusals."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from shards.audio import load_audio
from shards.ingest import IngestConfig, IngestError, main, run_ingest
from shards.msd import write_msd_file
from shards.offline_augment import OfflineAugment, offline_time_stretch_pitch_shift

SR = 8000


def test_offline_stretch_and_shift_change_length_and_pitch():
    t = torch.arange(SR, dtype=torch.float32) / SR
    sine = 0.5 * torch.sin(2 * math.pi * 440.0 * t)
    assert torch.equal(offline_time_stretch_pitch_shift(sine, SR, 1.0, 0.0), sine)
    y = offline_time_stretch_pitch_shift(sine, SR, rate=1.25, semitones=12.0, n_fft=1024)
    assert y.shape == (round(SR / 1.25),)
    mid = y[1000:-1000]
    spec = torch.fft.rfft(mid * torch.hann_window(mid.numel()))
    peak_hz = spec.abs().argmax().item() * SR / mid.numel()
    assert abs(peak_hz - 880.0) < 10.0
    assert 0.4 < mid.abs().max() < 0.6  # level kept (a reflect-padded STFT loses half of it)
    y = offline_time_stretch_pitch_shift(sine[None].repeat(2, 1), SR, rate=0.8, semitones=-2.0)
    assert y.shape == (2, SR / 0.8)
    with pytest.raises(ValueError, match="rate"):
        offline_time_stretch_pitch_shift(sine, SR, rate=0.0)


def test_variants_parse_and_refuse_what_cannot_be_meant():
    assert OfflineAugment.parse("0.9:-2") == OfflineAugment(0.9, -2.0)
    assert OfflineAugment.parse("1.1") == OfflineAugment(1.1, 0.0)
    assert OfflineAugment.parse(" 1 : 3 ").to_dict() == {"rate": 1.0, "semitones": 3.0}
    for text, msg in [("fast", "expected RATE:SEMITONES"), ("1:2:3", "expected RATE:SEMITONES"),
                      ("0:2", "rate must be"), ("1:60", "within \\+-48"), ("1:0", "exact copy")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            OfflineAugment.parse(text)


def _tree(root: Path, clip_writer, n: int = 6) -> None:
    for label in ("a", "b"):
        for i in range(n):
            clip_writer(root / label / f"{label}{i}.wav", sample_rate=SR, seconds=1.0)


def _shard_bytes(out: Path, split: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob(f"{split}-*.tar"))}


def test_training_tracks_get_marked_augmented_copies_and_valid_test_stay_untouched(
    tmp_path, clip_writer, shard_set_reader
):
    src = tmp_path / "src"
    _tree(src, clip_writer)
    variants = (OfflineAugment(1.25, 0.0), OfflineAugment(1.0, 12.0))
    common = dict(source=src, sample_rate=SR, shard_size="5", progress=False)
    run_ingest(IngestConfig(out=tmp_path / "aug", offline_augment=variants, workers=2, **common))
    run_ingest(IngestConfig(out=tmp_path / "plain", workers=1, **common))
    got = shard_set_reader(tmp_path / "aug")
    plain = shard_set_reader(tmp_path / "plain")

    originals = {k: v for k, v in got["samples"].items() if "augment" not in v[1]}
    copies = {k: v for k, v in got["samples"].items() if "augment" in v[1]}
    # the originals are exactly the shard set made without augmentation, split for split
    assert {k: (m["split"], m["path"]) for k, (_, m) in originals.items()} == {
        k: (m["split"], m["path"]) for k, (_, m) in plain["samples"].items()
    }
    for k, (pcm, _) in originals.items():
        np.testing.assert_array_equal(pcm, plain["samples"][k][0])
    for split in ("valid", "test"):  # never augmented, not even reordered: the same bytes
        assert _shard_bytes(tmp_path / "aug", split) == _shard_bytes(tmp_path / "plain", split)

    train = sorted(k for k, (_, m) in originals.items() if m["split"] == "train")
    assert train and len(copies) == 2 * len(train)
    by_source: dict[str, list] = {}
    for key, (pcm, meta) in copies.items():
        by_source.setdefault(meta["augment_of"], []).append((key, pcm, meta))
    assert sorted(by_source) == train
    for source_key, group in by_source.items():
        src_meta = originals[source_key][1]
        assert sorted((m["augment"]["rate"], m["augment"]["semitones"]) for _, _, m in group) == [
            (1.0, 12.0), (1.25, 0.0)
        ]  # fmt: skip
        wave, _ = load_audio(src / src_meta["path"], SR)
        for key, pcm, meta in group:
            assert key.startswith(source_key + "_aug")
            for field in ("label", "label_index", "path", "track_id", "artist", "split", "fold"):
                assert meta[field] == src_meta[field]
            rate = meta["augment"]["rate"]
            assert meta["num_samples"] == len(pcm) == round(src_meta["num_samples"] / rate)
            assert meta["duration"] == pytest.approx(len(pcm) / SR)
            want = OfflineAugment(rate, meta["augment"]["semitones"]).apply(wave, SR)
            want_pcm = np.clip(np.rint(want.astype(np.float64) * 32768), -32768, 32767)
            assert np.abs(pcm.astype(np.float64) - want_pcm).max() <= 1  # the transform, to 1 LSB

    manifest = got["manifest"]
    assert manifest["splits"]["train"]["tracks"] == 3 * len(train)
    assert manifest["settings"]["offline_augment"] == [v.to_dict() for v in variants]
    assert "offline_augment" not in plain["manifest"]["settings"]


def test_cli_offline_augment_errors_are_clear(tmp_path, capsys, clip_writer):
    src = tmp_path / "src"
    _tree(src, clip_writer, n=3)

    def run(*args: object) -> tuple[int, str]:
        rc = main([str(src), "--out", str(tmp_path / "o"), "--sample-rate", str(SR), "--no-progress", *map(str, args)])
        return rc, capsys.readouterr().err

    rc, err = run("--offline-augment", "1:0")
    assert rc == 2 and "exact copy" in err
    rc, err = run("--offline-augment", "slow")
    assert rc == 2 and "expected RATE:SEMITONES" in err
    rc, err = run("--offline-augment", "0.9:0", "--folds", "3")
    assert rc == 2 and "cross-validation" in err
    rc, err = run("--offline-augment", "0.9:0", "--offline-augment", "0.9")
    assert rc == 2 and "twice" in err
    assert not (tmp_path / "o").exists()
    assert run("--offline-augment", "0.9:0", "--workers", "1")[0] == 0
    rc, err = run("--offline-augment", "0.8:0", "--workers", "1")  # a different augmentation is another set
    assert rc == 2 and "differs in: offline_augment" in err


def test_feature_layouts_cannot_be_stretched(tmp_path):
    src = tmp_path / "msd"
    rng = np.random.default_rng(0)
    tid = "TRAAAAA" + "0" * 11
    n = 8
    write_msd_file(src / "A" / "A" / "A" / f"{tid}.h5", rng.normal(size=(n, 12)), rng.uniform(size=(n, 12)),
                   rng.normal(-20, 3, n), np.arange(n) * 0.25, artist_id="AR1")  # fmt: skip
    labels = tmp_path / "labels.cls"
    labels.write_text(f"{tid}\tRock\n")
    cfg = IngestConfig(source=src, out=tmp_path / "o", layout="msd", labels=labels,
                       offline_augment=(OfflineAugment(0.9, 0.0),), progress=False)  # fmt: skip
    with pytest.raises(IngestError, match="--offline-augment stretches audio; layout 'msd' stores features"):
        run_ingest(cfg)
