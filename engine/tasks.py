"""What a run learns, by name: ``singlelabel`` (one genre per track) or ``multilabel`` (a set of tags per track).

A shard set says which in its manifest (``"task"``; absent: single-label, every set made before tags), and a
checkpoint records it (``extra["task"]``; ``extra["multi_label"]`` for tag models). Everything that differs
between the two lives in one :class:`Task` looked up in :data:`TASKS`, so training, validation, evaluation and
cross-validation never branch on the kind themselves:

=========================  =========================================  ===============================================
                           ``singlelabel``                            ``multilabel``
=========================  =========================================  ===============================================
batch -> targets [B, K]    one-hot of ``batch["label"]``              ``batch["targets"]`` (multi-hot float)
training loss              soft-target cross-entropy (mixup,          binary cross-entropy with logits, mean over
                           smoothing, ``optim.class_weights``)        tags (``optim.pos_weight: balanced``)
probabilities              softmax                                    sigmoid per tag
windows -> tracks          :data:`engine.metrics.TRACK_AGGREGATES`    mean of the window sigmoids
metrics                    :mod:`engine.metrics` (accuracy, F1)       :mod:`engine.tag_metrics` (ROC-AUC, mAP, F1)
model selection            ``loss`` (default), ``accuracy``, ``f1``   ``map`` (default), ``roc_auc``, ``f1``, ``loss``
checkpoint ``extra``       ``task``                                   ``task``, ``multi_label``, ``label_kind``,
                                                                      ``thresholds`` (per tag, chosen on validation)
=========================  =========================================  ===============================================

Both produce targets ``[B, K]`` in the training step, so mixup (:class:`kernels.augment.Mixup`) mixes either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import ConfigError
from engine.losses import class_weight_tensor, multilabel_bce, pos_weight_tensor, soft_cross_entropy
from engine.metrics import TRACK_AGGREGATES, aggregate_tracks, track_and_segment_metrics
from engine.tag_metrics import choose_thresholds, pool_by_track, window_tag_metrics
from registry import Registry
from shards.format import manifest_task

__all__ = [
    "TASKS", "MultiLabel", "Selection", "SingleLabel", "Task", "checkpoint_task", "evaluation_task", "get_task",
]  # fmt: skip

TASKS: Registry[type[Task]] = Registry("task")


def checkpoint_task(ckpt: dict[str, Any]) -> str:
    """The task a checkpoint was trained for: ``extra["task"]``, else ``"multilabel"`` for a tag model
    (``extra["multi_label"]``: the converted musicnn models), else ``"singlelabel"`` (checkpoints before tasks)."""
    extra = ckpt.get("extra") if isinstance(ckpt.get("extra"), dict) else {}
    if extra.get("task"):
        return str(extra["task"])
    return "multilabel" if extra.get("multi_label") else "singlelabel"


def evaluation_task(manifest: dict[str, Any], ckpt: dict[str, Any], checkpoint: Any, shards: Any) -> Task:
    """The task an evaluation of checkpoint ``ckpt`` on the shard set of ``manifest`` scores: the shard set's.
    A multi-label set needs a tag model (ValueError otherwise); a single-label set is scored as genres by either
    kind of model (a tag model's scores then go through the softmax, as before tasks)."""
    name = manifest_task(manifest)
    if get_task(name).multi_label and not get_task(checkpoint_task(ckpt)).multi_label:
        raise ValueError(
            f"shard set {shards} is multi-label (tags) but checkpoint {checkpoint} is a single-label model "
            "(softmax over classes): evaluate it on single-label shards, or train a tag model on this set"
        )
    return get_task(name)


def get_task(name: str) -> Task:
    """The :class:`Task` registered as ``name`` (KeyError listing the names otherwise)."""
    return TASKS.get(name)()


@dataclass(frozen=True)
class Selection:
    """How the best epoch is chosen (``eval.select_metric``): a key of the epoch's history row and its direction."""

    name: str  # the config value: "loss", "accuracy", "map", ...
    key: str  # history row key, e.g. "valid_map"
    maximise: bool
    label: str  # what the early-stop message calls it

    def value(self, row: dict[str, Any]) -> float:
        """The row's figure as a number to minimise (minus the metric when higher is better; NaN -> inf)."""
        v = float(row[self.key])
        if math.isnan(v):
            return math.inf
        return -v if self.maximise else v


class Task:
    """The behaviour of one task; subclasses registered in :data:`TASKS`."""

    name: ClassVar[str]
    multi_label: ClassVar[bool]
    selections: ClassVar[dict[str, Selection]]
    default_selection: ClassVar[str]

    def selection(self, name: str) -> Selection:
        """``eval.select_metric`` (``"auto"``: this task's default) -> its :class:`Selection`; ConfigError when
        this task has no such figure."""
        name = self.default_selection if name == "auto" else name
        if name not in self.selections:
            raise ConfigError(
                f"eval.select_metric={name!r} is not a {self.name} figure; use one of "
                f"{['auto', *self.selections]}"
            )
        return self.selections[name]

    def loss_weight(self, manifest: dict[str, Any], split: str, labels: list[str], optim: Any) -> Tensor | None:
        """The loss's per-class (per-tag) weights ``[K]`` from ``split``'s counts as ``optim`` asks; None: plain."""
        raise NotImplementedError

    def targets(self, batch: dict[str, Tensor], num_classes: int, device: torch.device) -> Tensor:
        """A training batch's targets, float ``[B, K]`` on ``device``."""
        raise NotImplementedError

    def loss(self, logits: Tensor, targets: Tensor, smoothing: float, weight: Tensor | None) -> Tensor:
        """The training loss of logits ``[B, K]`` against (mixed) targets ``[B, K]``: a scalar, mean over the batch."""
        raise NotImplementedError

    def hits(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Correct predictions of a training batch (unmixed targets), summed: what ``train_acc`` divides by clips."""
        raise NotImplementedError

    def eval_targets(
        self, batch: dict[str, Tensor], device: torch.device, to_model: Tensor | None, num_classes: int
    ) -> tuple[Tensor, Tensor]:
        """An evaluation batch's targets in model classes (what the accumulator stores) and ``ok`` ``[B]`` bool
        (padding, or a window of no model class, is False); ``to_model`` ``[C]``: shard class -> model class."""
        raise NotImplementedError

    def window_loss(self, logits: Tensor, targets: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
        """Evaluation loss of each window ``[B]`` and its weight in the mean ``[B]``."""
        raise NotImplementedError

    def probs(self, logits: Tensor) -> Tensor:
        """Logits ``[B, K]`` -> probabilities ``[B, K]``."""
        raise NotImplementedError

    def track_probs(self, probs: Tensor, tracks: Tensor, aggregate: str) -> tuple[Tensor, Tensor]:
        """Windows -> tracks: ``(track_ids [N] sorted, track_probs [N, K])`` of window ``probs`` ``[W, K]``."""
        raise NotImplementedError

    def metrics(
        self, probs: Tensor, targets: Tensor, tracks: Tensor, names: list[str], aggregate: str,
        thresholds: list[float] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Segment and track metrics of the gathered windows (``probs`` ``[W, K]``, targets, ``tracks`` ``[W]``)."""
        raise NotImplementedError

    def validation(
        self, probs: Tensor, targets: Tensor, tracks: Tensor, names: list[str], aggregate: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """An epoch's validation figures (``valid_*``, after ``valid_loss``) and what the epoch's checkpoints
        carry in ``extra`` beyond ``task`` (multi-label: the per-tag thresholds chosen on these tracks)."""
        raise NotImplementedError

    def log_figures(self, row: dict[str, Any]) -> str:
        """The validation figures of an epoch's log line (after the loss)."""
        raise NotImplementedError

    def checkpoint_extra(self) -> dict[str, Any]:
        """What every checkpoint of this task carries in ``extra``."""
        return {"task": self.name}


@TASKS.register("singlelabel")
class SingleLabel(Task):
    """One class per track: softmax cross-entropy with soft targets; accuracy and F1 (:mod:`engine.metrics`)."""

    name = "singlelabel"
    multi_label = False
    selections = {
        "loss": Selection("loss", "valid_loss", False, "validation-loss"),
        "accuracy": Selection("accuracy", "valid_track_acc", True, "validation track-accuracy"),
        "f1": Selection("f1", "valid_track_f1", True, "validation track-F1"),
    }
    default_selection = "loss"  # what selected the best epoch before tasks existed

    def loss_weight(self, manifest: dict[str, Any], split: str, labels: list[str], optim: Any) -> Tensor | None:
        if optim.pos_weight != "none":
            raise ConfigError("optim.pos_weight weighs tags of a multi-label set; use optim.class_weights here")
        return class_weight_tensor(manifest, split, labels) if optim.class_weights else None

    def targets(self, batch: dict[str, Tensor], num_classes: int, device: torch.device) -> Tensor:
        y = batch["label"].to(device, non_blocking=True)
        return F.one_hot(y, num_classes).float()

    def loss(self, logits: Tensor, targets: Tensor, smoothing: float, weight: Tensor | None) -> Tensor:
        return soft_cross_entropy(logits, targets, smoothing, weight)

    def hits(self, logits: Tensor, targets: Tensor) -> Tensor:
        return (logits.detach().argmax(1) == targets.argmax(1)).sum()

    def eval_targets(
        self, batch: dict[str, Tensor], device: torch.device, to_model: Tensor | None, num_classes: int
    ) -> tuple[Tensor, Tensor]:
        y = batch["label"].to(device, non_blocking=True)  # (B,)
        ok = batch["valid"].to(device, non_blocking=True)  # (B,) False: padding rows
        if to_model is not None:
            y = to_model[y.clamp_min(0)]  # (B,) model class or -1
            ok = ok & (y >= 0)
            y = y.clamp_min(0)
        return y, ok

    def window_loss(self, logits: Tensor, targets: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
        loss = F.cross_entropy(logits, targets, weight=weight, reduction="none")  # (B,)
        # a weighted mean divides by sum of w[y], as F.cross_entropy does
        return loss, weight[targets] if weight is not None else torch.ones_like(loss)

    def probs(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits, dim=1)

    def track_probs(self, probs: Tensor, tracks: Tensor, aggregate: str) -> tuple[Tensor, Tensor]:
        ids, pooled, _ = aggregate_tracks(probs, tracks, aggregate=aggregate)
        return ids, pooled

    def metrics(
        self, probs: Tensor, targets: Tensor, tracks: Tensor, names: list[str], aggregate: str,
        thresholds: list[float] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return track_and_segment_metrics(probs, targets, tracks, None, names, aggregate)

    def validation(
        self, probs: Tensor, targets: Tensor, tracks: Tensor, names: list[str], aggregate: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        m = self.metrics(probs, targets, tracks, names, aggregate)
        row = {
            "valid_acc": m["segment"]["accuracy"],
            "valid_f1": m["segment"]["macro_f1"],
            "valid_track_acc": m["track"]["accuracy"],
            "valid_track_f1": m["track"]["macro_f1"],
            **{f"valid_track_acc_{a}": m[f"track_{a}"]["accuracy"] for a in TRACK_AGGREGATES},
            "valid_windows": int(m["segment"]["n"]),
            "valid_tracks": int(m["track"]["n"]),
        }
        return row, {}

    def log_figures(self, row: dict[str, Any]) -> str:
        return f"acc {row['valid_acc']:.3f} track acc {row['valid_track_acc']:.3f} f1 {row['valid_track_f1']:.3f}"


@TASKS.register("multilabel")
class MultiLabel(Task):
    """A set of tags per track: binary cross-entropy per tag; ROC-AUC, mAP, F1 (:mod:`engine.tag_metrics`)."""

    name = "multilabel"
    multi_label = True
    selections = {
        "map": Selection("map", "valid_map", True, "validation track-mAP"),
        "roc_auc": Selection("roc_auc", "valid_roc_auc", True, "validation track-ROC-AUC"),
        "f1": Selection("f1", "valid_f1", True, "validation track-F1"),
        "loss": Selection("loss", "valid_loss", False, "validation-loss"),
    }
    default_selection = "map"

    def loss_weight(self, manifest: dict[str, Any], split: str, labels: list[str], optim: Any) -> Tensor | None:
        if optim.class_weights:
            raise ConfigError("optim.class_weights weighs classes of a single-label set; for tags use optim.pos_weight=balanced")
        return pos_weight_tensor(manifest, split, labels) if optim.pos_weight == "balanced" else None

    def targets(self, batch: dict[str, Tensor], num_classes: int, device: torch.device) -> Tensor:
        t = batch["targets"].to(device, non_blocking=True).float()  # (B, K) multi-hot
        if t.shape[1:] != (num_classes,):
            raise ValueError(f"batch targets are {tuple(t.shape)}, the model has {num_classes} tags")
        return t

    def loss(self, logits: Tensor, targets: Tensor, smoothing: float, weight: Tensor | None) -> Tensor:
        return multilabel_bce(logits, targets, smoothing, weight).mean()

    def hits(self, logits: Tensor, targets: Tensor) -> Tensor:
        # per-tag decisions at 0.5 that match, as a fraction of the tags: train_acc is the tag accuracy
        right = ((logits.detach() >= 0) == (targets >= 0.5)).float()
        return right.mean(dim=1).sum()

    def eval_targets(
        self, batch: dict[str, Tensor], device: torch.device, to_model: Tensor | None, num_classes: int
    ) -> tuple[Tensor, Tensor]:
        t = batch["targets"].to(device, non_blocking=True).float()  # (B, C) shard tags
        ok = batch["valid"].to(device, non_blocking=True)
        if to_model is not None:  # shard tag columns -> model tag columns; unmapped shard tags dropped
            mapped = to_model >= 0
            out = torch.zeros(t.shape[0], num_classes, device=device)
            out[:, to_model[mapped]] = t[:, mapped]
            t = out
        return t, ok

    def window_loss(self, logits: Tensor, targets: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
        loss = multilabel_bce(logits, targets, 0.0, weight)
        return loss, torch.ones_like(loss)

    def probs(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits.float())

    def track_probs(self, probs: Tensor, tracks: Tensor, aggregate: str) -> tuple[Tensor, Tensor]:
        ids, pooled, _ = pool_by_track(probs, tracks)  # the mean of the window sigmoids
        return ids, pooled

    def metrics(
        self, probs: Tensor, targets: Tensor, tracks: Tensor, names: list[str], aggregate: str,
        thresholds: list[float] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return window_tag_metrics(probs, targets, tracks, names, thresholds)

    def validation(
        self, probs: Tensor, targets: Tensor, tracks: Tensor, names: list[str], aggregate: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        k = len(names)
        _, track_probs, track_targets = pool_by_track(probs.reshape(-1, k), tracks.reshape(-1), targets.reshape(-1, k))
        thresholds = choose_thresholds(track_probs, track_targets)
        m = self.metrics(probs, targets, tracks, names, aggregate, thresholds)
        row = {
            "valid_map": m["track"]["map"],
            "valid_roc_auc": m["track"]["roc_auc"],
            "valid_f1": m["track"]["f1_macro"],
            "valid_segment_map": m["segment"]["map"],
            "valid_segment_roc_auc": m["segment"]["roc_auc"],
            "valid_windows": int(m["segment"]["n"]),
            "valid_tracks": int(m["track"]["n"]),
        }
        return row, {"thresholds": thresholds}

    def log_figures(self, row: dict[str, Any]) -> str:
        return f"track mAP {row['valid_map']:.3f} ROC-AUC {row['valid_roc_auc']:.3f} F1@0.5 {row['valid_f1']:.3f}"

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"task": self.name, "multi_label": True, "label_kind": "tags"}

