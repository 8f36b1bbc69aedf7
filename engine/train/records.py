"""What a run writes for people and for ``evaluate`` / ``classify`` (main process only): ``last.pt`` and
``best.pt`` each epoch (model checkpoints with the whole config, enough to rebuild the model), ``history.jsonl``
/ ``history.csv``, ``curves.png`` (gradient runs), TensorBoard scalars and, at the end, ``summary.json``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from engine.checkpoint_format import save_checkpoint
from engine.config import to_dict
from engine.train.config import TrainConfig
from engine.train.data import ShardSet
from engine.train.state import TrainState

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["RunRecords", "write_history"]


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    with open(run_dir / "history.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    if history:
        keys = list(history[0])
        with open(run_dir / "history.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(history)


def _plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    # matplotlib is imported when the first epoch ends, not at start
    from engine.plots import training_curves_png

    training_curves_png(history, run_dir / "curves.png")


class RunRecords:
    """The run directory's records of a model's training on ``shards`` (written on the main process)."""

    def __init__(
        self, run_dir: Path, cfg: TrainConfig, shards: ShardSet, model: nn.Module, n_params: int,
        accelerator: Accelerator, task_extra: dict[str, Any] | None = None, weights: str = "raw",
        curves: bool = True,
    ) -> None:  # fmt: skip
        """``model``: what the checkpoints hold (the EMA copy when ``weights`` is ``"ema"``); ``n_params``: the
        trainable parameters reported; ``curves``: draw ``curves.png`` each epoch (not for a one-row fit)."""
        self.run_dir, self.main, self.model = run_dir, accelerator.is_main_process, model
        self.world, self.labels, self.n_params = accelerator.num_processes, shards.labels, n_params
        self.tb = None
        if cfg.run.tensorboard and self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.config = to_dict(cfg)
        self.weights, self.curves = weights, curves
        window = shards.eval_samples if shards.eval_samples != shards.segment_samples else None
        self.ckpt_meta = dict(labels=shards.labels, sample_rate=shards.sample_rate, segment_samples=shards.segment_samples,
                              window_samples=window)  # fmt: skip
        # extra: the weights, and the task (engine.tasks.Task.checkpoint_extra: task, multi_label, label_kind)
        self.extra = {"weights": self.weights, **(task_extra or {})}

    def epoch_end(
        self, epoch: int, row: dict[str, Any], improved: bool, history: list[dict[str, Any]],
        epoch_extra: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """``last.pt`` (and ``best.pt`` when the selection figure ``improved``), history, TensorBoard, curves;
        ``epoch_extra`` joins the checkpoints' ``extra`` (multi-label: the epoch's per-tag ``thresholds``)."""
        if not self.main:
            return
        extra = {**self.extra, **(epoch_extra or {})}
        meta = dict(model=self.model, config=self.config, epoch=epoch, metrics=row, extra=extra, **self.ckpt_meta)
        save_checkpoint(self.run_dir / "last.pt", **meta)
        if improved:
            save_checkpoint(self.run_dir / "best.pt", **meta)
        write_history(self.run_dir, history)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, epoch)
            self.tb.flush()
        if self.curves:
            _plot_curves(self.run_dir, history)

    def finish(self, state: TrainState) -> dict[str, Any]:
        """The run's summary (``summary.json`` without the history); closes TensorBoard."""
        best = next((r for r in state.history if r["epoch"] == state.best_epoch), state.history[-1] if state.history else {})
        summary = {
            "run_dir": str(self.run_dir),
            "best_checkpoint": str(self.run_dir / "best.pt"),
            "last_checkpoint": str(self.run_dir / "last.pt"),
            "best_epoch": state.best_epoch,
            "best": best,
            "history": state.history,
            "parameters": self.n_params,
            "weights": self.weights,
            "world_size": self.world,
            "labels": self.labels,
        }
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
        if self.tb is not None:
            self.tb.close()
        return summary
