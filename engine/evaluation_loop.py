"""The one evaluation loop: a model over an evaluation stream -> every window's probabilities, gathered once.

The batches of an evaluation :class:`shards.window_stream.WindowStream` are windows of many tracks packed by the
window rule (:mod:`shards.windows`), each row with its track; they are scored by the forward pass every job
shares (:func:`engine.scoring.forward`). Validation during training (:mod:`engine.train`) and
``python -m engine evaluate`` both call
:func:`evaluate_stream`, so the figures training logs for a checkpoint are the figures ``evaluate`` reports
for it on the same split: the same windows (the reader's evaluation batches), the same forward pass, the
same gathering across processes (:class:`engine.metrics.Accumulator`; the loss sums with
``Accelerator.reduce``) and the same metrics (:meth:`WindowResults.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.distributed import AUTOCAST_DTYPES, check_precision
from engine.metrics import Accumulator
from engine.models.inputs import model_input
from engine.scoring import forward
from engine.tasks import get_task

__all__ = ["WindowResults", "evaluate_stream"]


@dataclass
class WindowResults:
    """The valid windows of every process, de-duplicated, sorted by (track, arrival); identical on every rank."""

    probs: Tensor  # (W, K) softmax of the model's logits (multi-label: sigmoid per tag)
    labels: Tensor  # (W,) true class (model class index); multi-label: (W, K) 0/1 tag targets
    tracks: Tensor  # (W,) track index into the stream's track_keys()
    loss: float  # mean cross-entropy of the windows (with class weights: weighted mean, sum / sum of w[y])
    task: str = "singlelabel"  # engine.tasks.TASKS name

    def metrics(
        self, label_names: list[str], aggregate: str = "mean_prob", thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Segment and track metrics of the task (:meth:`engine.tasks.Task.metrics`; single-label:
        :func:`engine.metrics.track_and_segment_metrics`); ``aggregate``: how the windows of a track make the
        headline track figures (both aggregates are always reported); ``thresholds``: per-tag thresholds
        (multi-label) of the tuned F1 figures."""
        return get_task(self.task).metrics(self.probs, self.labels, self.tracks, label_names, aggregate, thresholds)


@torch.no_grad()
def evaluate_stream(
    model: torch.nn.Module,
    loader: Iterable[dict[str, Tensor]],
    accelerator: Any,
    num_classes: int,
    *,
    precision: str = "fp32",
    label_index: Tensor | None = None,
    weight: Tensor | None = None,
    progress: str | None = None,
    task: str = "singlelabel",
) -> WindowResults:
    """Run ``model`` (put in eval mode) over the evaluation batches of ``loader`` on every process; gather.

    Args:
        model: a waveform/feature batch -> logits ``(B, K)`` module (unwrapped from DDP).
        loader: batches of an evaluation :class:`shards.window_stream.WindowStream` (``"wave"`` or ``"feats"``,
            ``"label"``, ``"track"``, ``"valid"``), this process's share.
        accelerator: the job's ``accelerate.Accelerator`` (device, process group).
        num_classes: K.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of the forward pass
            (:data:`engine.distributed.PRECISIONS`; the old ``"no"`` reads as ``"fp32"``).
        label_index: ``(C,)`` long, shard class -> model class (-1: not evaluated) for a shard set whose
            classes differ from the model's (cross-dataset); None: the same classes.
        weight: ``(K,)`` class weights of the loss (training with ``optim.class_weights``); None: plain mean.
        progress: description of a progress bar on the local main process; None: no bar.
        task: :data:`engine.tasks.TASKS` name: how batches become targets, the loss, the probabilities
            (multi-label: ``"targets"`` ``(B, C)`` batches, binary cross-entropy, sigmoids; ``weight`` is then
            the per-tag ``pos_weight``).
    """
    kind = get_task(task)
    dtype = AUTOCAST_DTYPES[check_precision(precision)]
    device = accelerator.device
    to_model = label_index.to(device) if label_index is not None else None
    model.eval()
    acc = Accumulator()
    loss_sum = torch.zeros((), device=device)
    weight_sum = torch.zeros((), device=device)
    batches: Iterable[dict[str, Tensor]] = loader
    if progress is not None and accelerator.is_local_main_process:
        from tqdm.auto import tqdm

        batches = tqdm(loader, total=len(loader), desc=progress, unit="batch")  # type: ignore[arg-type]
    for batch in batches:
        y, ok = kind.eval_targets(batch, device, to_model, num_classes)  # (B,) or (B, K); (B,) bool
        logits = forward(model, model_input(batch), device, dtype)  # wave (B, T) or feats (B, N, D) -> (B, K)
        loss, w = kind.window_loss(logits, y, weight)  # (B,), (B,)
        loss_sum += (loss * ok).sum()
        weight_sum += (w * ok).sum()
        acc.update(kind.probs(logits), y, batch["track"].to(device, non_blocking=True), ok)
    windows = acc.compute(num_classes=num_classes)  # every process's windows, on every process
    sums = accelerator.reduce(torch.stack([loss_sum, weight_sum]).double(), "sum")
    return WindowResults(
        windows["probs"], windows["labels"], windows["tracks"], float(sums[0]) / max(1e-12, float(sums[1])), task
    )
