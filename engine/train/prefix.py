"""Fine-tuning after a frozen backbone prefix: the prefix cache (``optim.cache_frozen_prefix``) and the exact
head initialisation (``optim.head_init: lbfgs``), both used by :func:`engine.train.loop.train_by_gradient`.

* :func:`attach_prefix_cache` checks that the backbone's prefix (the protocol of
  :mod:`engine.feature_cache`: ``prefix_modules``, ``prefix``, ``after_prefix``; musicnn's front end) is a fixed
  function of the input window for the whole run -- the front end cacheable, every prefix parameter frozen by
  ``run.freeze`` with ``optim.freeze_epochs: 0``, the prefix BatchNorms held in eval mode by the freezer, no
  mixup (:meth:`engine.train.config.TrainConfig.check_prefix_cache`) -- and makes the model read the prefix
  output from a :class:`~engine.feature_cache.PrefixCache` keyed by each window's content. With
  ``data.crop_grid`` the training crops are evaluation windows, so after the first epoch (and validation) every
  window's prefix is served from memory; ``cv`` passes one store to all folds.
* :func:`init_head_exactly` fits the linear head (the backbone's ``linear_head``) to the optimum of the L2
  logistic regression on the pooled head input of every evaluation window of the training tracks
  (:mod:`engine.train.exact`'s solver), the model in eval mode: the probe the fine-tune starts from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from engine.config import ConfigError
from engine.feature_cache import FeatureStore, PrefixCache, prefix_modules, uncacheable_reason
from engine.models import GenreModel
from engine.tasks import Task
from engine.train.config import TrainConfig
from engine.train.data import ShardSet
from engine.train.learner import Learner
from engine.train.pooled_fit import Pooler, pooled_training_set, solve, training_figures

__all__ = ["HEAD_INIT_C", "attach_prefix_cache", "init_head_exactly"]

HEAD_INIT_C = 1.0
"""C of the head initialisation when ``optim.solver_c`` is not given (scikit-learn's default)."""

_NORMS = torch.nn.modules.batchnorm._BatchNorm


def attach_prefix_cache(
    cfg: TrainConfig, learner: Learner, store: str | Path | FeatureStore | None
) -> PrefixCache | None:
    """With ``optim.cache_frozen_prefix``: check the model (ConfigError naming the setting that breaks a rule),
    then serve ``learner.net``'s prefix from a :class:`PrefixCache` on ``store``'s memory (a FeatureStore; else a
    new one) and return the cache; None when the option is off."""
    if not cfg.optim.cache_frozen_prefix:
        return None
    net = learner.net
    modules = prefix_modules(net)
    key = "optim.cache_frozen_prefix"
    if not modules:
        raise ConfigError(f"{key}: model.arch={cfg.model.arch!r} has no frozen-prefix protocol (prefix_modules, "
                          "prefix, after_prefix; musicnn has it)")  # fmt: skip
    reason = uncacheable_reason(net)
    if reason:
        raise ConfigError(f"{key} needs a fixed front end (model.features, model.augment), but {reason}")
    frozen = set(learner.freezer.names)
    loose = [n for stem, m in modules.items() for n, _ in m.named_parameters(prefix=stem) if n not in frozen]
    held = {id(m) for m in learner.freezer.norms}  # the freezer keeps these in eval mode every epoch
    loose += [f"{stem}.{n}".rstrip(".") for stem, m in modules.items() for n, b in m.named_modules()
              if isinstance(b, _NORMS) and id(b) not in held]  # fmt: skip
    if loose:
        raise ConfigError(f"{key}: run.freeze must cover the backbone prefix {sorted(modules)}; not frozen: "
                          f"{', '.join(loose[:6])}{', ...' if len(loose) > 6 else ''}")  # fmt: skip
    cache = PrefixCache(net, store if isinstance(store, FeatureStore) else None)
    net.prefix_cache = cache.by_content
    return cache


def init_head_exactly(
    cfg: TrainConfig, shards: ShardSet, learner: Learner, task: Task, weight: torch.Tensor | None,
    cache: PrefixCache | None,
) -> dict[str, Any]:  # fmt: skip
    """Fit ``learner.net``'s linear head exactly (see the module docstring; C = ``optim.solver_c`` or
    :data:`HEAD_INIT_C`), copy it into the EMA weights, and return the fit's history figures (``train_loss``,
    ``train_acc``, ``C``, ``train_windows``)."""
    net = learner.net
    head = getattr(net.backbone, "linear_head", None)
    parts = head() if callable(head) else None
    if parts is None:
        raise ConfigError(f"optim.head_init: lbfgs fits a linear head on pooled features; model.arch="
                          f"{cfg.model.arch!r} with these params has none (musicnn: params.head_input=meanmax)")  # fmt: skip
    norm, classifier = parts
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        train_set = pooled_training_set(cfg, shards, task, head_input_pooler(net, cache, device), device)
    finally:
        net.train(was_training)
    c = cfg.optim.solver_c or HEAD_INIT_C
    # standardised as the BatchNorm will (sqrt(var + eps)): a near-constant pool value is not blown up by 1e8,
    # so the mid-end's first steps do not move the logits by thousands
    var_eps = float(norm.eps) if norm is not None else 0.0
    fit = solve(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, solver_c=c)), train_set, weight,
                len(shards.labels), var_eps)  # fmt: skip
    with torch.no_grad():
        fit.load_into(classifier, norm)
    if learner.ema is not None:  # the average starts from the initialised head
        learner.ema.model.load_state_dict(net.state_dict())
    return {**training_figures(fit, train_set), "C": float(c), "train_windows": int(train_set.x.shape[0])}


def head_input_pooler(net: GenreModel, cache: PrefixCache | None, device: torch.device) -> Pooler:
    """``pool(clips, rows)``: the backbone's pooled head input of input rows, through ``cache`` when given
    (the backbone's ``pooled_after_prefix``), else the whole forward up to the pool (``pooled``)."""
    bb = net.backbone
    if cache is not None:
        return lambda clips, rows: bb.pooled_after_prefix(cache.by_content(rows.to(device)))
    if not callable(getattr(bb, "pooled", None)):
        raise ConfigError(f"optim.head_init: lbfgs: model.arch={net.cfg.arch!r} has no pooled head input")
    return lambda clips, rows: bb.pooled(net.features(rows.to(device)))
