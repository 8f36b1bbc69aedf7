"""``engine.train.train``: a run by the solver its config names (``optim.solver``).

* ``gradient`` (default): epochs of the configured optimiser, validation picking the best epoch
  (:func:`engine.train.loop.train_by_gradient`);
* ``lbfgs``: the exact L2 logistic regression of a linear head on fixed features, fitted once
  (:func:`engine.train.exact.fit_exact`).

Both write the same run directory (``last.pt`` / ``best.pt``, history, ``summary.json``), so ``evaluate``,
``classify``, ``export``, ``cv`` and ``compare`` read either.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.feature_cache import FeatureStore
from engine.train.config import TrainConfig
from engine.train.exact import fit_exact
from engine.train.loop import train_by_gradient

__all__ = ["SOLVERS", "train"]

Solver = Callable[..., dict[str, Any]]

SOLVERS: dict[str, Solver] = {"gradient": train_by_gradient, "lbfgs": fit_exact}
"""``optim.solver`` -> ``f(cfg, feature_cache=None) -> summary``."""


def train(cfg: TrainConfig, feature_cache: str | Path | FeatureStore | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns ``{run_dir, best_checkpoint, last_checkpoint, history, best, ...}``.

    ``feature_cache``: a directory where fixed front-end features are kept for other runs on the same shard
    set (``cv`` passes one for all its folds); used by the ``lbfgs`` solver only."""
    return SOLVERS[cfg.optim.solver](cfg, feature_cache=feature_cache)
