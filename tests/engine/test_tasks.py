"""engine.tasks: targets, losses, probabilities, selection and checkpoint facts of each task, by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.config import ConfigError
from engine.losses import multilabel_bce, pos_weight_tensor, soft_cross_entropy
from engine.tasks import TASKS, checkpoint_task, evaluation_task, get_task
from engine.train.config import OptimConfig
from kernels.augment import Mixup
from shards.format import manifest_task

LOGITS = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
TARGETS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def _hand_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: list[float] | None = None) -> float:
    """Mean over windows of the mean over tags of -[w y log s + (1 - y) log(1 - s)], in Python floats."""
    total = 0.0
    for row, trow in zip(logits.tolist(), targets.tolist()):
        terms = []
        for j, (x, y) in enumerate(zip(row, trow)):
            s = 1 / (1 + math.exp(-x))
            w = pos_weight[j] if pos_weight else 1.0
            terms.append(-(w * y * math.log(s) + (1 - y) * math.log(1 - s)))
        total += sum(terms) / len(terms)
    return total / len(logits)


def test_the_registry_names_both_tasks_and_a_manifest_without_task_is_single_label():
    assert TASKS.names() == ["multilabel", "singlelabel"]
    assert manifest_task({"labels": ["a"]}) == "singlelabel"
    assert manifest_task({"task": "multilabel"}) == "multilabel"
    with pytest.raises(ValueError, match="regression"):
        manifest_task({"task": "regression"})


def test_multi_label_targets_are_the_batch_multi_hot_and_single_label_targets_one_hot():
    ml, sl = get_task("multilabel"), get_task("singlelabel")
    assert torch.equal(ml.targets({"targets": TARGETS}, 3, torch.device("cpu")), TARGETS)
    one_hot = sl.targets({"label": torch.tensor([2, 0])}, 3, torch.device("cpu"))
    assert torch.equal(one_hot, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="3 tags"):
        ml.targets({"targets": TARGETS[:, :2]}, 3, torch.device("cpu"))


def test_binary_cross_entropy_on_a_known_batch_equals_the_hand_computation():
    task = get_task("multilabel")
    assert float(task.loss(LOGITS, TARGETS, 0.0, None)) == pytest.approx(_hand_bce(LOGITS, TARGETS), rel=1e-6)
    per_window, w = task.window_loss(LOGITS, TARGETS, None)
    assert per_window.tolist() == pytest.approx([_hand_bce(LOGITS[i : i + 1], TARGETS[i : i + 1]) for i in range(2)])
    assert w.tolist() == [1.0, 1.0]
    # smoothing pulls every target towards 1/2
    smoothed = TARGETS * 0.8 + 0.1
    assert float(task.loss(LOGITS, TARGETS, 0.2, None)) == pytest.approx(float(multilabel_bce(LOGITS, smoothed).mean()))


def test_balanced_pos_weight_is_negatives_over_positives_and_weighs_the_positive_term():
    manifest = {"splits": {"train": {"tracks": 10, "per_label": {"a": 2, "b": 5, "c": 0}}}}
    pw = pos_weight_tensor(manifest, "train", ["a", "b", "c"])
    assert pw.tolist() == [4.0, 1.0, 1.0]  # a never-positive tag keeps 1
    task = get_task("multilabel")
    weight = task.loss_weight(manifest, "train", ["a", "b", "c"], OptimConfig(pos_weight="balanced"))
    assert torch.equal(weight, pw)
    assert task.loss_weight(manifest, "train", ["a", "b", "c"], OptimConfig()) is None
    got = float(task.loss(LOGITS, TARGETS, 0.0, weight))
    assert got == pytest.approx(_hand_bce(LOGITS, TARGETS, pw.tolist()), rel=1e-6)
    with pytest.raises(ConfigError, match="pos_weight"):
        task.loss_weight(manifest, "train", ["a"], OptimConfig(class_weights=True))
    with pytest.raises(ConfigError, match="class_weights"):
        get_task("singlelabel").loss_weight(manifest, "train", ["a"], OptimConfig(pos_weight="balanced"))


def test_single_label_task_gives_exactly_the_soft_cross_entropy_and_the_evaluation_cross_entropy():
    task = get_task("singlelabel")
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 3, 1, 1, 2, 0])
    targets = task.targets({"label": y}, 4, torch.device("cpu"))
    weight = torch.tensor([0.5, 1.0, 2.0, 0.5])
    for smoothing, w in ((0.0, None), (0.1, None), (0.0, weight)):
        assert torch.equal(task.loss(logits, targets, smoothing, w), soft_cross_entropy(logits, targets, smoothing, w))
    assert torch.allclose(task.loss(logits, targets, 0.1, None), F.cross_entropy(logits, y, label_smoothing=0.1))
    loss, w = task.window_loss(logits, y, weight)
    assert torch.equal(loss, F.cross_entropy(logits, y, weight=weight, reduction="none"))
    assert float((loss * 1).sum() / w.sum()) == pytest.approx(float(F.cross_entropy(logits, y, weight=weight)))
    assert torch.equal(task.probs(logits), torch.softmax(logits, dim=1))
    assert int(task.hits(logits, targets)) == int((logits.argmax(1) == y).sum())


def test_mixup_mixes_multi_hot_targets_into_convex_combinations():
    mix = Mixup(alpha=0.4, p=1.0, seed=0).train()
    x = torch.randn(4, 100)
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    _, mixed = mix(x, targets)
    assert mixed.shape == targets.shape and bool(((mixed >= 0) & (mixed <= 1)).all())
    assert not torch.equal(mixed, targets)


def test_multi_label_probabilities_are_sigmoids_and_hits_count_tag_decisions():
    task = get_task("multilabel")
    assert torch.equal(task.probs(LOGITS), torch.sigmoid(LOGITS))
    # a tag is predicted at sigmoid >= 0.5 (logit >= 0): row 0 (T,F,T) vs (1,0,1) -> 3/3; row 1 (T,T,F) vs (0,1,0) -> 2/3
    assert float(task.hits(LOGITS, TARGETS)) == pytest.approx(5 / 3)


def test_selection_defaults_loss_for_genres_map_for_tags_and_refuses_other_tasks_figures():
    sl, ml = get_task("singlelabel"), get_task("multilabel")
    assert sl.selection("auto").key == "valid_loss" and ml.selection("auto").key == "valid_map"
    assert sl.selection("accuracy").key == "valid_track_acc"
    best = ml.selection("map")
    assert best.value({"valid_map": 0.7}) == -0.7 and best.value({"valid_map": float("nan")}) == math.inf
    with pytest.raises(ConfigError, match="map"):
        sl.selection("map")
    with pytest.raises(ConfigError, match="accuracy"):
        ml.selection("accuracy")


def test_checkpoint_task_reads_extra_and_the_musicnn_multi_label_flag():
    assert checkpoint_task({"extra": {"task": "multilabel"}}) == "multilabel"
    assert checkpoint_task({"extra": {"multi_label": True}}) == "multilabel"
    assert checkpoint_task({"extra": {}}) == checkpoint_task({}) == "singlelabel"
    assert get_task("multilabel").checkpoint_extra() == {"task": "multilabel", "multi_label": True, "label_kind": "tags"}
    assert get_task("singlelabel").checkpoint_extra() == {"task": "singlelabel"}
    with pytest.raises(ValueError, match="single-label model"):
        evaluation_task({"task": "multilabel"}, {"extra": {}}, "c.pt", "dir")
    assert evaluation_task({}, {"extra": {"multi_label": True}}, "c.pt", "dir").name == "singlelabel"


def test_multi_label_evaluation_targets_follow_the_tag_map_into_model_columns():
    task = get_task("multilabel")
    batch = {"targets": torch.tensor([[1.0, 0.0, 1.0]]), "valid": torch.tensor([True])}
    to_model = torch.tensor([1, -1, 0])  # shard tag 0 -> model 1, shard tag 1 unmapped, shard tag 2 -> model 0
    y, ok = task.eval_targets(batch, torch.device("cpu"), to_model, 2)
    assert y.tolist() == [[1.0, 1.0]] and ok.tolist() == [True]
