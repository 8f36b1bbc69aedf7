"""Checkpoints: atomic save, safe load, rebuilding a model from the file alone, transfer learning."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import init_from, load_checkpoint, load_model
from engine.checkpoint_format import FORMAT_VERSION, CheckpointError, save_checkpoint
from engine.config import ConfigError, from_dict, to_dict
from engine.models import ModelConfig, build_model

sys.path.insert(0, str(Path(__file__).parent))
from test_models import SMALL, SR, small_config, synthetic_clips  # noqa: E402

LABELS = ["blues", "classical", "metal"]


# tiny models on a shared 2-core machine: intra-op threads cost more than they give
pytestmark = pytest.mark.usefixtures("one_thread")


def trained_model(arch: str, labels: list[str] = LABELS, seed: int = 0, **params):
    """A model whose weights and BatchNorm statistics moved away from their initial values."""
    torch.manual_seed(seed)
    cfg = small_config(arch, augment={"gain_p": 1.0, "mixup_p": 0.5}, **params)
    model = build_model(cfg, len(labels), SR, SR)
    wave, y = synthetic_clips(2, 1.0, seed=seed)
    y = y % len(labels)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(3):
        logits, mixed = model(wave, torch.nn.functional.one_hot(y, len(labels)).float())
        loss = -(mixed * logits.log_softmax(-1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def save(path: Path, model, labels=LABELS, **kw) -> Path:
    net = getattr(model, "module", model)
    config = {"model": to_dict(net.cfg), "optim": {"lr": 0.05}, "data": {"shards": "/somewhere"}}
    args = dict(labels=labels, sample_rate=SR, segment_samples=SR, epoch=2, metrics={"valid_acc": 0.5})
    args.update(kw)
    return save_checkpoint(path, model=model, config=config, **args)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_checkpoint_round_trip_rebuilds_identical_logits(tmp_path: Path, arch: str) -> None:
    model = trained_model(arch)
    path = save(tmp_path / "run" / "best.pt", model)
    loaded, ckpt = load_model(path)
    assert not loaded.training
    assert (ckpt["labels"], ckpt["sample_rate"], ckpt["segment_samples"], ckpt["epoch"]) == (
        LABELS,
        SR,
        SR,
        2,
    )
    assert ckpt["arch"] == arch and ckpt["format_version"] == FORMAT_VERSION
    assert loaded.cfg == model.cfg
    wave = (torch.randn(2, 2 * SR) * 2000).to(torch.int16)
    with torch.no_grad():
        assert torch.equal(loaded(wave), model(wave))
    # every tensor was written on CPU and detached
    assert all(t.device.type == "cpu" and not t.requires_grad for t in ckpt["model_state"].values())


def test_save_is_atomic_and_replaces_the_previous_file(tmp_path: Path) -> None:
    model = trained_model("cnn")
    path = save(tmp_path / "last.pt", model, epoch=1)
    save(path, model, epoch=5)
    assert load_checkpoint(path)["epoch"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_save_unwraps_data_parallel_and_stores_plain_metrics(tmp_path: Path) -> None:
    model = trained_model("cnn")
    metrics = {
        "valid_acc": np.float32(0.75),
        "confusion": np.eye(2, dtype=np.int64),
        "loss": torch.tensor(0.5),
    }
    path = save(tmp_path / "m.pt", torch.nn.DataParallel(model), metrics=metrics, extra={"note": Path("/x")})
    ckpt = load_checkpoint(path)  # weights_only=True: would fail on numpy objects
    assert all(not k.startswith("module.") for k in ckpt["model_state"])
    assert ckpt["metrics"] == {"valid_acc": 0.75, "confusion": [[1, 0], [0, 1]], "loss": 0.5}
    assert ckpt["extra"] == {"note": "/x"}
    assert load_model(path)[0].num_classes == 3


def test_save_rejects_labels_that_do_not_match_the_model(tmp_path: Path) -> None:
    model = trained_model("cnn")
    with pytest.raises(CheckpointError, match="3 classes but 2 labels"):
        save(tmp_path / "x.pt", model, labels=["a", "b"])
    with pytest.raises(CheckpointError, match="ModelConfig dict"):
        save_checkpoint(tmp_path / "y.pt", model=model, config={}, labels=LABELS, sample_rate=SR,
                        segment_samples=SR, epoch=0, metrics={})  # fmt: skip


def test_missing_or_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    raw = tmp_path / "raw.pt"
    torch.save(trained_model("cnn").state_dict(), raw)  # a bare state_dict
    with pytest.raises(CheckpointError, match="not a genre-engine checkpoint"):
        load_model(raw)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"not a readable genre-engine checkpoint \(not a torch.save archive\)"):
        load_checkpoint(text)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x07\x12\x07pytorch")  # what an ONNX protobuf starts with
    with pytest.raises(CheckpointError, match="ONNX exports run in onnxruntime"):
        load_checkpoint(onnx_file)
    future = tmp_path / "future.pt"
    torch.save({"format": "genre-engine", "format_version": FORMAT_VERSION + 1}, future)
    with pytest.raises(CheckpointError, match="reads up to"):
        load_checkpoint(future)


def test_init_from_with_a_new_label_set_replaces_the_head_and_keeps_the_rest(tmp_path: Path) -> None:
    source = trained_model("crnn")
    path = save(tmp_path / "src.pt", source)
    torch.manual_seed(1)
    target = build_model(small_config("crnn"), 5, SR, SR)
    fresh_head = target.backbone.classifier.weight.detach().clone()
    report = init_from(target, path)
    assert report["reinitialised"] == ["backbone.classifier.weight", "backbone.classifier.bias"]
    src_state, dst_state = source.state_dict(), target.state_dict()
    body = [k for k in dst_state if not k.startswith("backbone.classifier.")]
    assert body and sorted(body) == sorted(report["loaded"])
    assert all(torch.equal(src_state[k], dst_state[k]) for k in body)  # includes BN running stats
    assert target.backbone.classifier.weight.shape == (5, 2 * 16)
    assert not torch.equal(target.backbone.classifier.weight, fresh_head)  # re-initialised, not left as is
    assert target.backbone.classifier.weight.abs().max() < 1.0


def test_init_from_with_the_same_labels_copies_the_head_and_freezes_prefixes(tmp_path: Path) -> None:
    source = trained_model("cnn")
    path = save(tmp_path / "src.pt", source)
    target = build_model(small_config("cnn"), 3, SR, SR)
    report = init_from(target, path, freeze=["backbone.blocks.0", "backbone.blocks.1"])
    assert report["reinitialised"] == []
    assert torch.equal(target.backbone.classifier.weight, source.backbone.classifier.weight)
    frozen = {n for n, p in target.named_parameters() if not p.requires_grad}
    assert frozen == set(report["frozen"]) and len(frozen) == 6  # conv weight + BN weight/bias, 2 blocks
    assert all(n.startswith(("backbone.blocks.0.", "backbone.blocks.1.")) for n in frozen)
    with pytest.raises(ConfigError, match="no parameter name starts with 'backbone.stem'"):
        init_from(build_model(small_config("cnn"), 3, SR, SR), path, freeze=["backbone.stem"])


def test_init_from_another_architecture_names_both(tmp_path: Path) -> None:
    path = save(tmp_path / "cnn.pt", trained_model("cnn"))
    target = build_model(small_config("resnet"), 3, SR, SR)
    with pytest.raises(CheckpointError, match=r"'resnet' model .* holds a 'cnn' model"):
        init_from(target, path)


def test_init_from_with_different_params_lists_the_misfits(tmp_path: Path) -> None:
    path = save(tmp_path / "cnn.pt", trained_model("cnn"))
    target = build_model(from_dict(ModelConfig, {**SMALL["cnn"], "params": {"channels": [8, 32]}}), 3, SR, SR)
    with pytest.raises(CheckpointError, match=r"do not fit.*backbone\.blocks\.1\.0\.weight"):
        init_from(target, path)
