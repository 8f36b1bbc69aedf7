"""Exact L2-regularised logistic regression on fixed features, fitted the way scikit-learn fits it, in torch.

What a linear probe on fixed features (the ``stats`` architecture, ``configs/probe.yaml``) should be trained
with: the convex problem solved to its optimum instead of 30 epochs of Adam, and C chosen by an inner
cross-validation instead of a few validation clips.

Objective (scikit-learn's ``LogisticRegression(solver="lbfgs")``), on standardised features ``z``::

    single-label, >= 3 classes present:  sum_i s_i * (logsumexp(z_i W^T + b) - (z_i W^T + b)[y_i])
                                         + 1 / (2C) * ||W||^2                  (multinomial; W [K, D])
    single-label, 2 classes present:     sum_i s_i * BCE(z_i . w + b, y_i == second class)
                                         + 1 / (2C) * ||w||^2                  (sklearn's binary model)
    multi-label (targets [N, K] in {0,1}): sum_k [ sum_i s_i * BCE(z_i . W_k + b_k, Y_ik)
                                         + 1 / (2C_k) * ||W_k||^2 ]            (one-vs-rest, one C per tag
                                                                                or one shared C)

``s_i`` are the sample weights (1 by default); the intercept is never penalised. Solved in float64 (any
device) on the objective divided by ``sum_i s_i`` (sklearn's scaling: same minimiser), until the largest
absolute gradient entry is below ``tol`` (sklearn's ``gtol``): by Newton's method in the row space of the data
(:mod:`engine.logistic_newton`) when its Hessian is small enough to solve densely -- a probe of a few hundred
clips, however wide the embedding -- else (or if Newton stops short) by full-batch L-BFGS with a strong-Wolfe
line search (``torch.optim.LBFGS``). Same optimum; Newton takes some 10 steps where L-BFGS takes 300-400.

Standardisation (``StandardScaler``): ``z = (x - mean) / scale`` with the training set's mean and
population standard deviation (``ddof = 0``), unweighted; a (near-)constant column keeps ``scale = 1``
(sklearn's ``_is_constant_feature`` bound), so it stays centred but unscaled.

The fitted model in both forms (:class:`LogisticFit`)::

    standardised:  logits = ((x - mean) / scale) @ weight.T + bias
    original:      logits = x @ raw_weight.T + raw_bias,   raw_weight = weight / scale,
                                                           raw_bias = bias - raw_weight @ mean

:meth:`LogisticFit.load_into` writes either form into a head: a plain ``nn.Linear`` on raw features, or a
standardising ``BatchNorm1d`` (running stats = mean, scale^2) followed by an ``nn.Linear`` (the ``stats``
architecture's ``norm`` + ``classifier``). Single-label logits go through a softmax, multi-label through a
sigmoid. For a 2-class problem the first class's row is 0 (softmax([0, t]) = [1 - sigmoid(t), sigmoid(t)],
sklearn's binary probabilities).

Classes or tags without data: a single-label class absent from the training labels (but counted in
``num_classes``) gets a zero weight row and the bias ``-ABSENT_LOGIT`` (probability ~0; the present classes
are fitted exactly as sklearn fits the data it sees). A multi-label tag that is never positive (or always
positive) gets a zero row and bias ``-ABSENT_LOGIT`` (``+ABSENT_LOGIT``): the constant prediction 0 (1) that
``OneVsRestClassifier`` makes for it.

Inner cross-validation (:func:`fit_logistic_cv`), ``LogisticRegressionCV``'s protocol: a grid of C
(``Cs=10`` -> ``np.logspace(-4, 4, 10)``), stratified k folds (sklearn's ``StratifiedKFold`` without
shuffling, reproduced by :func:`stratified_folds`), the score averaged over folds, the best C (the first, i.e.
the smallest, of ties) refitted on all the data. ``fold_scaling="global"`` (default) standardises once on all
the data and cross-validates on the standardised features: exactly ``Pipeline(StandardScaler(),
LogisticRegressionCV(...))``. ``fold_scaling="per_fold"`` standardises each fold on its training part:
``GridSearchCV(Pipeline(StandardScaler(), LogisticRegression()), {"C": Cs}, cv=StratifiedKFold(k))``.
Scores: ``accuracy`` (single-label default), ``neg_log_loss`` (multi-label default: the mean binary
cross-entropy over tags and samples), ``roc_auc`` (multi-label: macro over the tags with both values in the
test fold; sample weights are not used by it). Multi-label: one shared C (default, chosen by the mean over
tags) or one C per tag (``per_tag=True``: each tag's own score; then it is ``OneVsRestClassifier(
LogisticRegressionCV(cv=the same folds))``). Multi-label folds are stratified on each sample's rarest
positive tag (:func:`multilabel_strata`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.logistic_newton import newton_solve
from engine.tag_metrics import roc_auc_per_tag

log = logging.getLogger(__name__)

__all__ = [
    "ABSENT_LOGIT",
    "SCORINGS",
    "CVResult",
    "LogisticFit",
    "Standardiser",
    "c_grid",
    "fit_logistic",
    "fit_logistic_cv",
    "multilabel_strata",
    "stratified_folds",
]

ABSENT_LOGIT = 1e4
"""|bias| of a class / tag without training data: exp(-1e4) is 0 in float64, and 1e4 fits float16."""

SCORINGS = ("accuracy", "neg_log_loss", "roc_auc")
FOLD_SCALINGS = ("global", "per_fold")

ArrayLike = Tensor | np.ndarray | Sequence


def c_grid(cs: int | Sequence[float]) -> list[float]:
    """``LogisticRegressionCV``'s ``Cs``: an int n -> ``np.logspace(-4, 4, n)``; a sequence as given."""
    if isinstance(cs, int):
        if cs < 1:
            raise ValueError(f"Cs must be >= 1 or a list of C values, got {cs}")
        return [float(c) for c in np.logspace(-4, 4, cs)]
    out = [float(c) for c in cs]
    if not out or any(not c > 0 for c in out):
        raise ValueError(f"every C must be > 0, got {out}")
    return out


# ---------------------------------------------------------------------------------------------- folds


def stratified_folds(labels: ArrayLike, k: int) -> np.ndarray:
    """Test-fold id ``0..k-1`` per sample, exactly sklearn's ``StratifiedKFold(k, shuffle=False)``.

    Classes are ordered by first appearance; the sorted labels are dealt round robin to the folds to decide
    how many of each class every fold gets, and each class's samples fill the folds in order, in blocks.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, class_perm = np.unique(first, return_inverse=True)
    encoded = class_perm[inverse.reshape(-1)]
    counts = np.bincount(encoded)
    if np.all(k > counts):
        raise ValueError(f"{k} folds cannot be greater than the number of members in every class")
    if k > counts.min():
        log.warning("the least populated class has only %d members, fewer than %d folds", counts.min(), k)
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::k], minlength=len(counts)) for i in range(k)])  # (k, C)
    folds = np.empty(len(y), dtype=np.int64)
    for c in range(len(counts)):
        folds[encoded == c] = np.arange(k).repeat(allocation[:, c])
    return folds


def multilabel_strata(targets: ArrayLike) -> np.ndarray:
    """One stratum per sample of a multi-label target ``[N, K]``: its rarest positive tag (K when none), so
    :func:`stratified_folds` spreads every rare tag's positives over the folds."""
    y = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets) > 0.5
    counts = y.sum(axis=0)  # (K,)
    rarity = np.where(y, counts[None, :], np.iinfo(np.int64).max)  # (N, K)
    return np.where(y.any(axis=1), rarity.argmin(axis=1), y.shape[1])


# -------------------------------------------------------------------------------------- standardising


@dataclass
class Standardiser:
    """``StandardScaler``: ``(x - mean) / scale`` with ``mean``, ``scale`` ``[D]`` (population std; 1 for a
    near-constant column)."""

    mean: Tensor
    scale: Tensor

    @classmethod
    def fit(cls, x: Tensor, var_eps: float = 0.0) -> Standardiser:
        """Statistics of ``x [N, D]`` (computed in ``x``'s dtype; pass float64). ``var_eps`` > 0: ``scale =
        sqrt(var + var_eps)`` for every column, as a BatchNorm with that ``eps`` divides (a near-constant column is
        damped instead of blown up to unit variance: a head that goes on training must not read a 1e-10 wobble
        of it as a 1-sigma move)."""
        mean = x.mean(dim=0)
        var = (x - mean).pow(2).mean(dim=0)
        if var_eps > 0:
            return cls(mean, (var + var_eps).sqrt())
        n = x.shape[0]
        eps = torch.finfo(torch.float64).eps
        constant = var <= n * eps * var + (n * mean * eps) ** 2  # sklearn's _is_constant_feature
        scale = torch.where(constant, torch.ones_like(var), var.sqrt())
        return cls(mean, scale)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.scale


# ---------------------------------------------------------------------------------------- the result


@dataclass
class CVResult:
    """The inner cross-validation behind a :class:`LogisticFit`.

    ``scores``: ``[len(cs), folds]`` (shared C) or ``[len(cs), folds, K]`` (per-tag C), higher is better
    (NaN where undefined, e.g. AUC of a tag without positives in a fold); ``best``: index into ``cs`` (one
    per tag with ``per_tag``).
    """

    cs: list[float]
    scores: Tensor
    best: list[int]
    scoring: str
    fold_scaling: str
    folds: np.ndarray  # (N,) test-fold id per sample

    @property
    def mean_scores(self) -> Tensor:
        """Score per C averaged over folds: ``[len(cs)]`` or ``[len(cs), K]``."""
        return self.scores.nanmean(dim=1)


@dataclass
class LogisticFit:
    """A fitted logistic regression: ``weight [K, D]``, ``bias [K]`` on standardised features; ``mean``,
    ``scale [D]`` the standardisation; ``c`` the C of each output ``[K]``; see the module docstring for the
    two forms and :meth:`load_into`."""

    weight: Tensor
    bias: Tensor
    mean: Tensor
    scale: Tensor
    c: Tensor
    multilabel: bool
    n_iter: int = 0
    converged: bool = True
    cv: CVResult | None = field(default=None, repr=False)

    @property
    def raw_weight(self) -> Tensor:
        """``[K, D]``: the weight on original (unstandardised) features."""
        return self.weight / self.scale

    @property
    def raw_bias(self) -> Tensor:
        """``[K]``: the bias on original features."""
        return self.bias - self.raw_weight @ self.mean

    def logits(self, x: Tensor) -> Tensor:
        """Original features ``[N, D]`` -> logits ``[N, K]`` (standardise, then the linear map)."""
        x = x.to(self.weight)
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias

    def probabilities(self, x: Tensor) -> Tensor:
        """``[N, K]``: softmax (single-label) or sigmoid (multi-label) of :meth:`logits`."""
        z = self.logits(x)
        return torch.sigmoid(z) if self.multilabel else torch.softmax(z, dim=1)

    @torch.no_grad()
    def load_into(self, linear: nn.Linear, norm: nn.BatchNorm1d | None = None) -> None:
        """Write the fit into a head, in place (converted to the modules' dtype and device).

        ``norm=None``: ``linear`` takes raw features (``raw_weight``, ``raw_bias``). With a ``BatchNorm1d``
        (eval mode; its ``eps`` kept): running mean = ``mean``, running var = ``scale^2``, affine (if any) =
        identity, and ``linear`` gets ``weight * sqrt(scale^2 + eps) / scale`` so that ``linear(norm(x))``
        equals :meth:`logits` exactly.
        """
        k, d = self.weight.shape
        if tuple(linear.weight.shape) != (k, d) or linear.bias is None:
            raise ValueError(f"need an nn.Linear({d}, {k}) with bias, got {tuple(linear.weight.shape)}")
        if norm is None:
            weight, bias = self.raw_weight, self.raw_bias
        else:
            if norm.num_features != d or norm.running_mean is None or norm.running_var is None:
                raise ValueError(f"need a BatchNorm1d({d}) tracking running stats")
            var = self.scale.pow(2)
            norm.running_mean.copy_(self.mean)
            norm.running_var.copy_(var)
            if norm.affine:
                norm.weight.fill_(1.0)
                norm.bias.zero_()
            weight, bias = self.weight * ((var + norm.eps).sqrt() / self.scale), self.bias
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)


# -------------------------------------------------------------------------------------- the problem


@dataclass
class _Problem:
    """A training set in solver form. ``kind``: ``multinomial`` (``target`` [N] int into ``present``),
    ``binary`` (``target`` [N, 1] float), ``ovr`` (``target`` [N, P] float over the ``present`` tags),
    ``constant`` (nothing to solve). ``present``: the classes / tags that are solved for."""

    kind: str
    target: Tensor
    present: list[int]
    num_outputs: int
    fill: Tensor  # (K,) bias of the outputs that are not solved for


def _as_tensor(a: ArrayLike, device: torch.device | str | None, dtype: torch.dtype | None = None) -> Tensor:
    t = a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device=device)


def _is_multilabel(y: Tensor) -> bool:
    if y.dim() == 2:
        return True
    if y.dim() != 1:
        raise ValueError(f"targets must be labels [N] or multi-label {{0,1}} [N, K], got {tuple(y.shape)}")
    return False


def _problem(y: Tensor, num_outputs: int, dtype: torch.dtype, weight: Tensor) -> _Problem:
    """Decide what to solve for labels ``[N]`` (single-label) or targets ``[N, K]`` (multi-label); samples
    with zero weight do not count as evidence that a class is present."""
    fill = torch.zeros(num_outputs, dtype=dtype, device=y.device)
    if _is_multilabel(y):
        pos = ((y > 0.5) & (weight[:, None] > 0)).any(dim=0)
        neg = ((y <= 0.5) & (weight[:, None] > 0)).any(dim=0)
        present = [k for k in range(num_outputs) if bool(pos[k]) and bool(neg[k])]
        fill = torch.where(pos, ABSENT_LOGIT, -ABSENT_LOGIT).to(dtype)
        target = (y[:, present] > 0.5).to(dtype)
        return _Problem("ovr" if present else "constant", target, present, num_outputs, fill)
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_outputs):
        raise ValueError(f"labels must lie in [0, {num_outputs - 1}]")
    present = sorted({int(v) for v in y[weight > 0].tolist()})
    fill = torch.full((num_outputs,), -ABSENT_LOGIT, dtype=dtype, device=y.device)
    if len(present) <= 1:
        fill[present] = 0.0
        return _Problem("constant", y, present, num_outputs, fill)
    fill[present[0]] = 0.0  # binary: the first class's logit is 0
    if len(present) == 2:
        return _Problem("binary", (y == present[1]).to(dtype)[:, None], present, num_outputs, fill)
    index = torch.full((num_outputs,), -1, dtype=torch.long, device=y.device)
    index[present] = torch.arange(len(present), device=y.device)
    return _Problem("multinomial", index[y], present, num_outputs, fill)


def _objective(theta: Tensor, z: Tensor, prob: _Problem, inv_2c: Tensor, weight: Tensor) -> Tensor:
    """sklearn's objective / sum(weight); ``theta`` ``[P, D + 1]`` (last column: intercept)."""
    w, b = theta[:, :-1], theta[:, -1]
    logits = z @ w.T + b  # (N, P)
    if prob.kind == "multinomial":
        per_sample = torch.logsumexp(logits, dim=1) - logits.gather(1, prob.target[:, None]).squeeze(1)
        data = (weight * per_sample).sum()
    else:
        bce = F.binary_cross_entropy_with_logits(logits, prob.target, reduction="none")  # (N, P)
        data = (weight[:, None] * bce).sum()
    return (data + (inv_2c * w.pow(2).sum(dim=1)).sum()) / weight.sum()


def _solve(
    z: Tensor, prob: _Problem, c: Tensor, weight: Tensor, tol: float, max_iter: int, init: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, int, bool]:
    """Solve ``prob`` on standardised ``z [N, D]`` with C per output ``c [K]``.

    Returns ``(weight [K, D], bias [K], theta, iterations, converged)``; ``theta`` ``[P, D + 1]`` is the
    solved block, which ``init`` takes back to warm-start the next C of a path on the same data.
    ``converged``: the gradient reached ``tol``, or L-BFGS stopped before ``max_iter`` because no step
    changed the objective by more than sklearn's ``ftol`` (64 machine epsilons).
    """
    k, d = prob.num_outputs, z.shape[1]
    full_w = torch.zeros(k, d, dtype=z.dtype, device=z.device)
    full_b = prob.fill.clone()
    if prob.kind == "constant":
        return full_w, full_b, torch.zeros(0, d + 1, dtype=z.dtype, device=z.device), 0, True
    rows = prob.present[1:] if prob.kind == "binary" else prob.present
    inv_2c = 1.0 / (2.0 * c[rows])  # (P,)
    newton = newton_solve(z, prob.kind, prob.target, inv_2c, weight, tol, init)  # None: Hessian too large
    if newton is not None and newton.converged:
        full_w[rows] = newton.theta[:, :-1]
        full_b[rows] = newton.theta[:, -1]
        return full_w, full_b, newton.theta, newton.n_iter, True
    theta = torch.zeros(len(rows), d + 1, dtype=z.dtype, device=z.device)
    start = newton.theta if newton is not None else init  # L-BFGS goes on from where Newton stopped
    if start is not None and start.shape == theta.shape:
        theta.copy_(start)
    theta.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tol,
        tolerance_change=64 * torch.finfo(torch.float64).eps,  # sklearn's ftol
        history_size=10,  # scipy's default m, as sklearn uses it
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _objective(theta, z, prob, inv_2c, weight)
        loss.backward()
        return loss

    opt.step(closure)
    n_iter = int(opt.state[theta].get("n_iter", 0))
    closure()
    assert theta.grad is not None
    grad_max = float(theta.grad.abs().max())
    converged = grad_max <= tol or n_iter < max_iter
    if not converged:
        log.warning("L-BFGS stopped after %d iterations with max |gradient| %.2e (tol %.0e)", n_iter, grad_max, tol)
    theta = theta.detach()
    full_w[rows] = theta[:, :-1]
    full_b[rows] = theta[:, -1]
    return full_w, full_b, theta, n_iter, converged


# ------------------------------------------------------------------------------------------- fitting


def _prepare(
    x: ArrayLike,
    y: ArrayLike,
    num_classes: int | None,
    sample_weight: ArrayLike | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """``(x [N, D], y [N] or [N, K], weight [N], K)`` on ``device`` (x and weight in ``dtype``)."""
    xt = _as_tensor(x, device, dtype)
    yt = _as_tensor(y, device)
    if xt.dim() != 2 or yt.shape[0] != xt.shape[0]:
        raise ValueError(f"need x [N, D] and targets with N rows, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    if _is_multilabel(yt):
        k = int(yt.shape[1])
        if num_classes is not None and num_classes != k:
            raise ValueError(f"multi-label targets have {k} tags but num_classes={num_classes}")
        yt = yt.to(dtype)
    else:
        k = int(num_classes) if num_classes is not None else int(yt.max()) + 1
    if k < 2:
        raise ValueError(f"need at least 2 classes, got {k}")
    if sample_weight is None:
        weight = torch.ones(xt.shape[0], dtype=dtype, device=xt.device)
    else:
        weight = _as_tensor(sample_weight, device, dtype).reshape(-1)
        if weight.shape[0] != xt.shape[0] or bool((weight < 0).any()) or not float(weight.sum()) > 0:
            raise ValueError("sample_weight must be [N], >= 0, with a positive sum")
    return xt, yt, weight, k


def _c_vector(c: float | Sequence[float] | Tensor, k: int, like: Tensor) -> Tensor:
    cv = torch.as_tensor(c, dtype=like.dtype).to(like.device).reshape(-1)
    if cv.numel() == 1:
        cv = cv.expand(k).clone()
    if cv.numel() != k or bool((cv <= 0).any()):
        raise ValueError(f"C must be > 0, one value or one per output ({k}), got {c}")
    return cv


def fit_logistic(
    x: ArrayLike,
    y: ArrayLike,
    c: float | Sequence[float] = 1.0,
    *,
    num_classes: int | None = None,
    sample_weight: ArrayLike | None = None,
    tol: float = 1e-8,
    max_iter: int = 5000,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    var_eps: float = 0.0,
) -> LogisticFit:
    """Standardise ``x [N, D]`` and fit sklearn's L2 logistic regression with inverse strength ``c``.

    Args:
        y: labels ``[N]`` (int, single-label: softmax) or targets ``[N, K]`` in {0, 1} (multi-label:
            one-vs-rest sigmoids).
        c: C (> 0), shared, or one per tag (multi-label).
        num_classes: K for single-label (default ``max(y) + 1``; classes beyond the data are "absent").
        sample_weight: ``[N]`` >= 0; weights the per-sample losses (not the standardisation).
        tol: largest absolute gradient entry of the objective / sum(weights) at convergence.
        max_iter: L-BFGS iterations.
        device, dtype: where and in which precision to solve (float64 by default, as sklearn).
        var_eps: 0 (default): scikit-learn's ``StandardScaler``; > 0: scale ``sqrt(var + var_eps)``, a
            BatchNorm's (see :meth:`Standardiser.fit`; the exact head of a model that goes on training).
    """
    xt, yt, weight, k = _prepare(x, y, num_classes, sample_weight, device, dtype)
    scaler = Standardiser.fit(xt, var_eps)
    cvec = _c_vector(c, k, xt)
    prob = _problem(yt, k, dtype, weight)
    w, b, _, n_iter, converged = _solve(scaler(xt), prob, cvec, weight, tol, max_iter, None)
    return LogisticFit(w, b, scaler.mean, scaler.scale, cvec, _is_multilabel(yt), n_iter, converged)


# ------------------------------------------------------------------------------------ cross-validation


def _score(logits: Tensor, y: Tensor, weight: Tensor, multilabel: bool, scoring: str) -> Tensor:
    """Higher-is-better score of ``logits [N, K]``: a scalar (single-label) or one per tag ``[K]``."""
    eps = torch.finfo(logits.dtype).eps
    if not multilabel:
        if scoring == "accuracy":
            correct = (logits.argmax(dim=1) == y.long()).to(weight.dtype)
            return (weight * correct).sum() / weight.sum()
        p = torch.softmax(logits, dim=1).gather(1, y.long()[:, None]).squeeze(1).clamp(eps, 1 - eps)
        return (weight * p.log()).sum() / weight.sum()
    if scoring == "accuracy":
        correct = ((logits > 0) == (y > 0.5)).to(weight.dtype)  # (N, K)
        return (weight[:, None] * correct).sum(dim=0) / weight.sum()
    if scoring == "neg_log_loss":
        p = torch.sigmoid(logits).clamp(eps, 1 - eps)
        ll = y * p.log() + (1 - y) * (1 - p).log()  # (N, K)
        return (weight[:, None] * ll).sum(dim=0) / weight.sum()
    auc = roc_auc_per_tag(logits, (y > 0.5).to(logits.dtype))  # [K]; NaN for a tag with one class only
    return auc.to(logits.device, logits.dtype)


def _fold_ids(y: Tensor, folds: int | ArrayLike, multilabel: bool) -> np.ndarray:
    if isinstance(folds, int):
        strata = multilabel_strata(y) if multilabel else y.cpu().numpy()
        return stratified_folds(strata, folds)
    ids = np.asarray(folds.cpu() if isinstance(folds, Tensor) else folds).astype(np.int64).reshape(-1)
    if ids.shape[0] != y.shape[0] or len(np.unique(ids)) < 2:
        raise ValueError("folds must be an int or a fold id per sample with at least 2 distinct folds")
    return ids


def _cv_scores(
    x: Tensor, y: Tensor, weight: Tensor, k: int, grid: list[float], fold_ids: np.ndarray, opts: dict
) -> Tensor:
    """Scores ``[len(grid), folds]`` (single-label) or ``[len(grid), folds, K]``; each fold's C path is
    warm-started from the previous C, as sklearn's is."""
    multilabel = _is_multilabel(y)
    shared = Standardiser.fit(x) if opts["fold_scaling"] == "global" else None
    per_fold = []
    for f in np.unique(fold_ids):
        test = torch.as_tensor(fold_ids == f, device=x.device)
        train = ~test
        scaler = shared or Standardiser.fit(x[train])
        z_tr, z_te = scaler(x[train]), scaler(x[test])
        prob = _problem(y[train], k, x.dtype, weight[train])
        theta, scores = None, []
        for c in grid:
            cvec = _c_vector(c, k, x)
            w, b, theta, _, _ = _solve(z_tr, prob, cvec, weight[train], opts["tol"], opts["max_iter"], theta)
            scores.append(_score(z_te @ w.T + b, y[test], weight[test], multilabel, opts["scoring"]))
        per_fold.append(torch.stack(scores))  # (n_c,) or (n_c, K)
    return torch.stack(per_fold, dim=1)


def fit_logistic_cv(
    x: ArrayLike,
    y: ArrayLike,
    cs: int | Sequence[float] = 10,
    *,
    folds: int | ArrayLike = 5,
    scoring: str | None = None,
    per_tag: bool = False,
    fold_scaling: str = "global",
    num_classes: int | None = None,
    sample_weight: ArrayLike | None = None,
    tol: float = 1e-8,
    max_iter: int = 5000,
    path_tol: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> LogisticFit:
    """Choose C by inner cross-validation, then :func:`fit_logistic` on all the data with it.

    Args:
        cs: an int n (``np.logspace(-4, 4, n)``) or the C values.
        folds: k (stratified folds, :func:`stratified_folds`) or a test-fold id per sample (e.g. grouped
            by artist).
        scoring: ``accuracy`` / ``neg_log_loss`` / ``roc_auc`` (multi-label only); default ``accuracy``
            single-label, ``neg_log_loss`` multi-label.
        per_tag: multi-label only: one C per tag by its own score (default: one C by the mean over tags).
        fold_scaling: ``global`` (standardise once; ``Pipeline(StandardScaler, LogisticRegressionCV)``)
            or ``per_fold`` (each fold on its training part); see the module docstring.
        path_tol: the gradient tolerance of the fold fits along the C grid (default ``tol``); e.g. 1e-4,
            ``LogisticRegressionCV``'s own default, scores the grid several times faster (weakly regularised
            fits on separable folds stop early) while the refit on all the data keeps ``tol``.
        The rest as in :func:`fit_logistic`.

    Returns the refitted :class:`LogisticFit` with ``cv`` (:class:`CVResult`) set. Ties go to the first
    (smallest) C, like sklearn's ``argmax``.
    """
    xt, yt, weight, k = _prepare(x, y, num_classes, sample_weight, device, dtype)
    multilabel = _is_multilabel(yt)
    scoring = scoring or ("neg_log_loss" if multilabel else "accuracy")
    if scoring not in SCORINGS or (scoring == "roc_auc" and not multilabel):
        raise ValueError(f"scoring must be one of {SCORINGS} (roc_auc: multi-label only), got {scoring!r}")
    if fold_scaling not in FOLD_SCALINGS:
        raise ValueError(f"fold_scaling must be one of {FOLD_SCALINGS}, got {fold_scaling!r}")
    if per_tag and not multilabel:
        raise ValueError("per_tag needs multi-label targets [N, K]")
    grid = c_grid(cs)
    fold_ids = _fold_ids(yt, folds, multilabel)
    opts = {"fold_scaling": fold_scaling, "scoring": scoring, "tol": tol if path_tol is None else path_tol,
            "max_iter": max_iter}  # fmt: skip
    scores = _cv_scores(xt, yt, weight, k, grid, fold_ids, opts)  # (n_c, folds[, K])
    mean = scores.nanmean(dim=1)  # (n_c[, K])
    if multilabel and not per_tag:
        scores, mean = scores.nanmean(dim=2), mean.nanmean(dim=1)
    # first maximum = smallest C among ties (NaN: never best)
    filled = torch.nan_to_num(mean, nan=-math.inf).cpu().numpy()
    best = [int(i) for i in np.atleast_1d(filled.argmax(axis=0))]
    c = [grid[i] for i in best] if per_tag else grid[best[0]]
    fit = fit_logistic(xt, yt, c, num_classes=k, sample_weight=weight, tol=tol, max_iter=max_iter, dtype=dtype)
    fit.cv = CVResult(grid, scores, best, scoring, fold_scaling, fold_ids)
    log.info("inner CV (%s, %d folds): C = %s", scoring, len(np.unique(fold_ids)), c)
    return fit
