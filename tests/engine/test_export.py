"""Export: TorchScript and ONNX files equal the eager model; classify accepts the TorchScript file."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.checkpoint import load_model
from engine.classify import CheckpointInputError, classify, is_torchscript_file, read_records
from engine.export import export_model, main

SR = 8000  # model rate, Hz
SEG = 8000  # 1-s windows
LABELS = ["blues", "jazz", "metal", "pop"]




def tone(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, make_tiny_checkpoint) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", LABELS, SR, SEG, seed=1)


def eager(ckpt: Path, x: torch.Tensor) -> torch.Tensor:
    model, _ = load_model(ckpt, "cpu")
    with torch.no_grad():
        return torch.softmax(model(x), -1)


def waves(batch: int, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(SEG) / SR
    x = 0.3 * torch.sin(2 * torch.pi * torch.rand(batch, 1, generator=g) * 1000 * t)
    return (x + 0.05 * torch.randn(batch, SEG, generator=g)).float()


def test_torchscript_export_equals_eager_and_carries_its_metadata(tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "model.ts"
    res = export_model(ckpt, "torchscript", out)
    assert res["verified"] and res["max_abs_diff"] <= 1e-4
    assert is_torchscript_file(out) and not is_torchscript_file(ckpt)
    extra = {"genre_meta.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["genre_meta.json"])
    assert meta["labels"] == LABELS and meta["sample_rate"] == SR and meta["segment_samples"] == SEG
    x = waves(5)  # another batch size than the trace's
    with torch.no_grad():
        got = scripted(x)
    ref = eager(ckpt, x)
    assert got.shape == (5, len(LABELS))
    assert torch.allclose(got.sum(-1), torch.ones(5), atol=1e-5)
    assert (got - ref).abs().max().item() < 1e-5


def test_classify_accepts_the_torchscript_export(tmp_path: Path, ckpt: Path) -> None:
    ts = tmp_path / "model.ts"
    export_model(ckpt, "torchscript", ts)
    d = tmp_path / "in"
    d.mkdir()
    sf.write(d / "a.flac", tone(3.0, 22050, seed=1), 22050)
    sf.write(d / "b.wav", tone(0.4, SR, seed=2), SR)
    (d / "c.wav").write_bytes(b"junk")
    classify(ckpt, [d], tmp_path / "ckpt.jsonl", num_workers=0, progress=False)
    s = classify(ts, [d], tmp_path / "ts.jsonl", num_workers=0, progress=False)
    assert s["files"] == 3 and s["ok"] == 2
    a = {r["path"]: r for r in read_records(tmp_path / "ckpt.jsonl", "jsonl")}
    b = {r["path"]: r for r in read_records(tmp_path / "ts.jsonl", "jsonl")}
    assert a.keys() == b.keys()
    for path, rec in a.items():
        assert b[path]["status"] == rec["status"]
        for ta, tb in zip(rec.get("top", []), b[path].get("top", [])):
            assert ta["label"] == tb["label"] and abs(ta["prob"] - tb["prob"]) < 1e-5


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_onnx_export_equals_eager(tmp_path: Path, ckpt: Path) -> None:
    import onnx
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    res = export_model(ckpt, "onnx", out)
    assert res["verified"] and res["max_abs_diff"] <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["genre_meta"])["labels"] == LABELS
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = waves(3, seed=9)
    x[1] = 0.0  # silence
    (got,) = sess.run(None, {"wave": x.numpy()})
    ref = eager(ckpt, x).numpy()
    assert got.shape == (3, len(LABELS))
    assert np.abs(got - ref).max() < 1e-4


def test_export_cli_prints_the_verification(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.ts"
    assert main([str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max |p - p_eager| = " in text and f"at {SR} Hz" in text and "4 genres" in text
    assert zipfile.is_zipfile(out)
    assert main([str(tmp_path / "nope.pt"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_export_refuses_msd_feature_checkpoints(tmp_path: Path, ckpt: Path) -> None:
    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    data["config"]["model"]["features"]["features"] = ["precomputed"]
    torch.save(data, tmp_path / "msd.pt")
    with pytest.raises(CheckpointInputError, match="MSD"):
        export_model(tmp_path / "msd.pt", "torchscript", tmp_path / "m.ts")


def test_window_of_zero_samples_is_refused_not_replaced_by_the_default(tmp_path: Path, ckpt: Path) -> None:
    with pytest.raises(ValueError, match="window_samples must be >= 1, got 0"):
        export_model(ckpt, "torchscript", tmp_path / "m.ts", window_samples=0)
    assert not (tmp_path / "m.ts").exists()
