"""Export: torch.export (.pt2), ONNX and TorchScript files equal the eager model; classify accepts each of them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.checkpoint import load_model
from engine.classify import CheckpointInputError, classify, is_torchscript_file, model_file_kind, read_records
from engine.export import ExportError, export_model, main

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


# ------------------------------------------------------------------------------------- torch.export (.pt2)

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None
REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh `python -I` from another folder: the repo is off sys.path and every module of genre-engine
# (and nnAudio, the STFT library a checkpoint may use) refuses to import, as on a machine with only PyTorch.
_BLOCKED_RUNNER = """
import importlib.abc, os, sys
BLOCK = {"engine", "kernels", "shards", "registry", "tools", "nnAudio"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if os.path.realpath(p or ".") != sys.argv[4]]
import torch
extra = {"genre_meta.json": ""}
program = torch.export.load(sys.argv[1], extra_files=extra)
model = program.module()
with torch.no_grad():
    probs = [model(x) for x in torch.load(sys.argv[2])]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)
torch.save({"probs": probs, "meta": extra["genre_meta.json"], "loaded": loaded}, sys.argv[3])
"""


def test_torch_export_program_equals_eager_and_loads_with_plain_pytorch(tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "model.pt2"
    res = export_model(ckpt, "export", out)
    assert res["verified"] and res["max_abs_diff"] <= 1e-4 and res["exporter"] == "torch.export"
    assert model_file_kind(out) == "export" and not is_torchscript_file(out)
    batches = [waves(1, seed=3), waves(5, seed=4)]  # the batch dimension is dynamic
    batches[1][2] = 0.0  # silence
    torch.save(batches, tmp_path / "x.pt")
    run = subprocess.run(
        [sys.executable, "-I", "-c", _BLOCKED_RUNNER, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt"), str(REPO)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(tmp_path / "y.pt")
    assert got["loaded"] == []  # nothing of genre-engine was imported (or importable) to run it
    meta = json.loads(got["meta"])
    assert meta["labels"] == LABELS and meta["sample_rate"] == SR and meta["window_samples"] == SEG
    for x, y in zip(batches, got["probs"]):
        ref = eager(ckpt, x)
        assert y.shape == (x.shape[0], len(LABELS))
        assert (y - ref).abs().max().item() < 1e-5


def test_torch_export_refuses_a_front_end_it_cannot_trace_and_leaves_no_file(tmp_path: Path) -> None:
    # chroma with per-clip tuning estimation takes a median over a data-dependent number of peaks:
    # torch.export cannot trace it (nor can torch.jit.trace or either ONNX exporter)
    from engine.checkpoint_format import save_checkpoint
    from engine.config import from_dict, to_dict
    from engine.models import ModelConfig, build_model

    cfg = from_dict(ModelConfig, {"arch": "cnn", "params": {"channels": [4], "hidden": 8},
                                  "features": {"features": ["chroma"], "n_fft": 256, "hop_length": 128,
                                               "estimate_tuning": True}})  # fmt: skip
    model = build_model(cfg, len(LABELS), SR, SEG)
    path = save_checkpoint(tmp_path / "tuning.pt", model=model, config={"model": to_dict(cfg)}, labels=LABELS,
                           sample_rate=SR, segment_samples=SEG, epoch=0, metrics={})  # fmt: skip
    with pytest.raises(ExportError, match="torch.export cannot trace this model"):
        export_model(path, "export", tmp_path / "m.pt2")
    assert list(tmp_path.glob("m.pt2*")) == [] and list(tmp_path.glob(".m.pt2*")) == []


@pytest.mark.skipif(not (HAS_ORT and HAS_ONNXSCRIPT), reason="onnxruntime and onnxscript not installed")
def test_onnx_export_uses_the_torch_export_based_exporter_with_torch_stft(tmp_path: Path, ckpt: Path) -> None:
    import onnx

    res = export_model(ckpt, "onnx", tmp_path / "m.onnx")
    assert res["exporter"].startswith("torch.onnx dynamo") and res["max_abs_diff"] <= 1e-4
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "STFT" in ops  # torch.stft itself, not the conv STFT the legacy exporter needs


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_onnx_export_falls_back_to_the_legacy_exporter_without_onnxscript(tmp_path: Path, ckpt: Path) -> None:
    # a fresh process in which onnxscript (the dynamo exporter's translator) is not importable
    script = (
        "import importlib.abc, json, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('onnxscript', 'onnx_ir'):\n"
        "            raise ImportError(name + ' is not installed here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from engine.export import export_model\n"
        "res = export_model(sys.argv[1], 'onnx', sys.argv[2])\n"
        "print(json.dumps({k: res[k] for k in ('exporter', 'max_abs_diff', 'verified')}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", script, str(ckpt), str(tmp_path / "m.onnx")], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res["exporter"].startswith("torch.onnx legacy") and res["verified"] and res["max_abs_diff"] <= 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = waves(3, seed=11)
    (got,) = sess.run(None, {"wave": x.numpy()})
    assert np.abs(got - eager(ckpt, x).numpy()).max() < 1e-4


@pytest.mark.parametrize("fmt", ["export", pytest.param("onnx", marks=pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed"))])
def test_classify_accepts_the_export_and_onnx_files(tmp_path: Path, ckpt: Path, fmt: str) -> None:
    model_file = tmp_path / ("model.pt2" if fmt == "export" else "model.onnx")
    export_model(ckpt, fmt, model_file)
    assert model_file_kind(model_file) == fmt
    renamed = tmp_path / "model.bin"  # an ONNX protobuf is recognised without its .onnx name too
    renamed.write_bytes(model_file.read_bytes())
    assert model_file_kind(renamed) == fmt
    d = tmp_path / "in"
    d.mkdir()
    sf.write(d / "a.flac", tone(3.0, 22050, seed=1), 22050)
    sf.write(d / "b.wav", tone(0.4, SR, seed=2), SR)
    (d / "c.wav").write_bytes(b"junk")
    classify(ckpt, [d], tmp_path / "ckpt.jsonl", num_workers=0, timeline=True, progress=False)
    s = classify(model_file, [d], tmp_path / "exp.jsonl", num_workers=0, timeline=True, progress=False)
    assert s["files"] == 3 and s["ok"] == 2 and s["precision"] == "fp32"
    a = {r["path"]: r for r in read_records(tmp_path / "ckpt.jsonl", "jsonl")}
    b = {r["path"]: r for r in read_records(tmp_path / "exp.jsonl", "jsonl")}
    assert a.keys() == b.keys()
    for path, rec in a.items():
        assert b[path]["status"] == rec["status"] and b[path].get("windows") == rec.get("windows")
        for ta, tb in zip(rec.get("top", []), b[path].get("top", [])):
            assert ta["label"] == tb["label"] and abs(ta["prob"] - tb["prob"]) < 1e-5
        assert [w["label"] for w in rec.get("timeline", [])] == [w["label"] for w in b[path].get("timeline", [])]


def test_model_file_kinds_are_told_apart_by_content(tmp_path: Path, ckpt: Path) -> None:
    ts = tmp_path / "model.bin"  # names do not decide for zip archives
    export_model(ckpt, "torchscript", ts)
    assert model_file_kind(ckpt) == "checkpoint" and model_file_kind(ts) == "torchscript"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    assert model_file_kind(junk) == "checkpoint"  # load_model then says what is wrong with it


def test_a_multi_label_tag_model_exports_per_tag_sigmoids_not_a_softmax(tmp_path: Path, ckpt: Path) -> None:
    # the tiny CNN marked as a tag model the way converted musicnn checkpoints are (extra.multi_label)
    tagged = torch.load(ckpt, weights_only=True)
    tagged["extra"] = {"multi_label": True, "label_kind": "tags"}
    torch.save(tagged, tmp_path / "tags.pt")
    out = tmp_path / "tags.pt2"
    res = export_model(tmp_path / "tags.pt", "export", out)
    assert res["verified"] and res["max_abs_diff"] <= 1e-4
    program = torch.export.load(str(out))
    x = waves(3, seed=7)
    model, _ = load_model(tmp_path / "tags.pt", "cpu")
    with torch.no_grad():
        got, ref = program.module()(x), torch.sigmoid(model(x))
    assert (got - ref).abs().max().item() < 1e-5
    assert not torch.allclose(got.sum(-1), torch.ones(3), atol=1e-3)  # not a distribution over labels
    with zipfile.ZipFile(out) as zf:
        meta = json.loads(next(zf.read(n) for n in zf.namelist() if n.endswith("genre_meta.json")))
    assert meta["extra"]["multi_label"] is True and "sigmoid" in meta["output"]


def test_the_export_window_defaults_to_the_checkpoints_evaluation_window(tmp_path: Path, ckpt: Path) -> None:
    longer = torch.load(ckpt, weights_only=True)
    longer["window_samples"] = 2 * SEG  # validated on windows twice the training crop
    torch.save(longer, tmp_path / "long.pt")
    res = export_model(tmp_path / "long.pt", "export", tmp_path / "long.pt2")
    assert res["window_samples"] == 2 * SEG and res["segment_samples"] == SEG
