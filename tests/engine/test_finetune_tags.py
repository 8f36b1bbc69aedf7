"""Fine-tuning a pretrained tag model on a tag set: ``init_from`` with the model's labels starts each tag the
checkpoint also has (by name up to case and punctuation, or through a label map) from the pretrained output row
and bias (the real musicnn 0.1.0 ``MTT_musicnn`` weights), and each new tag from a fresh row; ``train
--init-from`` does so from ``run.init_label_map``; a genre set whose classes are tags carries those rows too."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engine.checkpoint import init_from, load_checkpoint
from engine.config import ConfigError, load_config
from engine.models import build_model
from engine.pretrained.musicnn import model_config
from engine.train import TrainConfig, train
from tests.engine.multilabel_shards import SR, make_multilabel_shards

SPEC = "musicnn:MTT_musicnn"
REPO = Path(__file__).resolve().parents[2]
#: the hand-made set's tags renamed: one a pretrained tag in another case, one an alias, one new
NAMES = {"low": "Guitar", "high": "keys", "noisy": "newtag"}
LABELS = ["Guitar", "keys", "newtag"]
SEGMENT = 47616  # 2.976 s at 16 kHz: the pretrained patch (the shards' 8 kHz is resampled inside the model)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained_head(pretrained_cache: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    ckpt = load_checkpoint(SPEC)
    state = ckpt["model_state"]
    return list(ckpt["labels"]), state["backbone.classifier.weight"], state["backbone.classifier.bias"]


@pytest.fixture
def alias_map(tmp_path: Path) -> Path:
    path = tmp_path / "aliases.yaml"
    path.write_text("keys: piano\n")
    return path


def fresh_head(seed: int, num_classes: int) -> torch.nn.Linear:
    """The head init_from re-initialises, drawn from the same seed: what a new tag's row starts from."""
    torch.manual_seed(seed)
    return torch.nn.Linear(200, num_classes)


def test_shared_tags_start_from_the_pretrained_rows_and_new_tags_from_fresh_ones(pretrained_head, alias_map) -> None:
    labels, weight, bias = pretrained_head
    model = build_model(model_config("MTT_musicnn"), 3, SR, SEGMENT)
    torch.manual_seed(7)
    report = init_from(model, SPEC, labels=LABELS, label_map=alias_map)
    head = model.backbone.classifier
    assert report["carried"] == {"Guitar": "guitar", "keys": "piano"}
    assert report["reinitialised"] == ["backbone.classifier.weight", "backbone.classifier.bias"]  # new-layer rate
    for row, tag in ((0, "guitar"), (1, "piano")):
        assert torch.equal(head.weight[row], weight[labels.index(tag)]) and head.bias[row] == bias[labels.index(tag)]
    fresh = fresh_head(7, 3)
    assert torch.equal(head.weight[2], fresh.weight[2]) and head.bias[2] == fresh.bias[2]
    assert not any(torch.equal(head.weight[2], w) for w in weight)


def test_without_the_alias_only_the_same_name_is_carried_and_null_starts_fresh(pretrained_head, tmp_path) -> None:
    model = build_model(model_config("MTT_musicnn"), 3, SR, SEGMENT)
    assert init_from(model, SPEC, labels=LABELS)["carried"] == {"Guitar": "guitar"}
    assert init_from(model, SPEC, labels=LABELS, label_map={"Guitar": None, "keys": "piano"})["carried"] == {
        "keys": "piano"
    }
    with pytest.raises(ConfigError, match="not model labels"):
        init_from(model, SPEC, labels=LABELS, label_map={"keys": "pianoo"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- keys\n")
    with pytest.raises(ConfigError, match="init label map"):
        init_from(model, SPEC, labels=LABELS, label_map=bad)


def test_a_genre_set_whose_classes_are_tags_carries_their_rows(pretrained_head) -> None:
    """Single-label (softmax) heads take the sigmoid tag rows too: a start from the tag's evidence."""
    labels, weight, _ = pretrained_head
    model = build_model(model_config("MTT_musicnn"), 3, 22050, SEGMENT)
    report = init_from(model, SPEC, labels=["classical", "Metal", "reggae"])
    assert report["carried"] == {"classical": "classical", "Metal": "metal"}
    assert torch.equal(model.backbone.classifier.weight[1], weight[labels.index("metal")])


def test_the_same_labels_in_another_order_are_permuted_and_the_same_labels_load_the_head(pretrained_head) -> None:
    labels, weight, bias = pretrained_head
    model = build_model(model_config("MTT_musicnn"), 50, SR, SEGMENT)
    shuffled = sorted(labels)
    report = init_from(model, SPEC, labels=shuffled)
    assert len(report["carried"]) == 50
    order = [labels.index(t) for t in shuffled]
    assert torch.equal(model.backbone.classifier.weight, weight[order])
    same = init_from(model, SPEC, labels=labels)
    assert same["reinitialised"] == [] and "backbone.classifier.weight" in same["loaded"]
    assert torch.equal(model.backbone.classifier.bias, bias)


def test_train_init_from_carries_the_rows_through_run_init_label_map(pretrained_head, alias_map, tmp_path, caplog):
    """One optimiser step with the head frozen for the whole run: the checkpoint's head is the initial one."""
    labels, weight, bias = pretrained_head
    shards = make_multilabel_shards(tmp_path / "shards", names=NAMES)
    cfg = load_config(TrainConfig, str(REPO / "configs" / "musicnn_finetune.yaml"), [
        f"data.shards={shards}", f"run.out_dir={tmp_path / 'run'}", f"run.init_from={SPEC}",
        f"run.init_label_map={alias_map}", "model.params.head_input=penultimate", "run.freeze=[backbone.classifier]",
        "data.segment_seconds=1.0", "data.batch_size=4", "data.eval_batch_size=8", "data.num_workers=0",
        "data.crops_per_track=1",
        "optim.epochs=1", "optim.max_steps_per_epoch=1", "optim.schedule=none", "run.progress=false",
        "run.tensorboard=false",
        "optim.cache_frozen_prefix=false", "optim.head_init=none",  # the recipe's cached prefix / probe head: not here
    ])  # fmt: skip
    with caplog.at_level(logging.INFO, logger="engine.checkpoint"):
        result = train(cfg)
    assert "2 of 3 labels carried over" in caplog.text
    head = torch.load(result["last_checkpoint"], weights_only=True)["model_state"]
    assert torch.equal(head["backbone.classifier.weight"][0], weight[labels.index("guitar")])
    assert torch.equal(head["backbone.classifier.weight"][1], weight[labels.index("piano")])
    assert head["backbone.classifier.bias"][1] == bias[labels.index("piano")]
    assert not any(torch.equal(head["backbone.classifier.weight"][2], w) for w in weight)


def test_init_label_map_needs_init_from() -> None:
    with pytest.raises(ConfigError, match="run.init_label_map needs run.init_from"):
        load_config(TrainConfig, None, ["data.shards=x", "run.init_label_map=m.yaml"])
