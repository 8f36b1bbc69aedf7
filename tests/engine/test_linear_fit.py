"""engine.linear_fit against scikit-learn: the same probabilities, the same inner-CV choice of C, the two
weight forms, absent classes, determinism."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from engine.linear_fit import (
    ABSENT_LOGIT,
    c_grid,
    fit_logistic,
    fit_logistic_cv,
    multilabel_strata,
    stratified_folds,
)

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import make_classification, make_multilabel_classification  # noqa: E402
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.multiclass import OneVsRestClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

PROB_TOL = 1e-3  # the brief's bound; measured differences are printed by -s
SK = {"max_iter": 5000, "tol": 1e-10}


@pytest.fixture(autouse=True)
def _quiet_sklearn_deprecations():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _rescale(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Columns over six orders of magnitude, offset, plus one constant column (left unscaled)."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** np.linspace(-3, 3, x.shape[1])
    out = x * scales + rng.normal(0, 100, x.shape[1])
    out[:, 3] = 7.5
    return out


@pytest.fixture(scope="module")
def multiclass() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(
        n_samples=200, n_features=20, n_informative=8, n_redundant=4, n_classes=4, random_state=0
    )
    return _rescale(x), y


@pytest.fixture(scope="module")
def multilabel() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_multilabel_classification(n_samples=200, n_features=20, n_classes=5, random_state=0)
    return _rescale(x.astype(np.float64), 1), y


def _sk_probs(model, x: np.ndarray) -> np.ndarray:
    return model.predict_proba(x)


def _max_diff(ours: torch.Tensor, theirs: np.ndarray) -> float:
    diff = float(np.abs(ours.numpy() - theirs).max())
    print(f"max |p - p_sklearn| = {diff:.2e}")
    return diff


@pytest.mark.parametrize("c", [0.01, 1.0, 100.0])
def test_multinomial_probabilities_equal_sklearn(multiclass, c):
    x, y = multiclass
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=c, **SK)).fit(x, y)
    fit = fit_logistic(x, y, c)
    assert fit.converged and not fit.multilabel
    assert _max_diff(fit.probabilities(torch.from_numpy(x)), _sk_probs(sk, x)) < PROB_TOL


def test_binary_problem_uses_sklearn_binary_model(multiclass):
    x, y = multiclass
    keep = y < 2
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, **SK)).fit(x[keep], y[keep])
    fit = fit_logistic(x[keep], y[keep], 0.5)
    assert torch.all(fit.weight[0] == 0) and float(fit.bias[0]) == 0.0  # class 0's logit is 0
    assert _max_diff(fit.probabilities(torch.from_numpy(x[keep])), _sk_probs(sk, x[keep])) < PROB_TOL


@pytest.mark.parametrize("c", [0.05, 1.0, 20.0])
def test_one_vs_rest_probabilities_equal_sklearn(multilabel, c):
    x, y = multilabel
    sk = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=c, **SK))).fit(x, y)
    fit = fit_logistic(x, y, c)
    assert fit.multilabel and fit.converged
    assert _max_diff(fit.probabilities(torch.from_numpy(x)), _sk_probs(sk, x)) < PROB_TOL


def test_sample_weights_weight_the_losses_as_sklearn(multiclass):
    x, y = multiclass
    w = np.random.default_rng(3).uniform(0.2, 3.0, len(y))
    scaler = StandardScaler().fit(x)  # the standardisation is unweighted
    sk = LogisticRegression(C=2.0, **SK).fit(scaler.transform(x), y, sample_weight=w)
    fit = fit_logistic(x, y, 2.0, sample_weight=w)
    assert _max_diff(fit.probabilities(torch.from_numpy(x)), sk.predict_proba(scaler.transform(x))) < PROB_TOL


def test_standardisation_is_standard_scaler(multiclass):
    x, y = multiclass
    scaler = StandardScaler().fit(x)
    fit = fit_logistic(x, y, 1.0)
    np.testing.assert_allclose(fit.mean.numpy(), scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(fit.scale.numpy(), scaler.scale_, rtol=1e-12)
    assert float(fit.scale[3]) == 1.0  # the constant column is centred, not scaled


@pytest.mark.parametrize(
    "labels,k",
    [
        ([2, 0, 1, 1, 0, 2, 2, 2, 0, 1, 1, 0, 2, 1, 0], 3),
        (list(np.random.default_rng(0).integers(0, 4, 103)), 5),
        (list(np.random.default_rng(1).integers(0, 7, 64)), 4),
    ],
)
def test_stratified_folds_are_sklearns(labels, k):
    ours = stratified_folds(np.asarray(labels), k)
    theirs = np.empty(len(labels), dtype=np.int64)
    for f, (_, test) in enumerate(StratifiedKFold(k).split(np.zeros(len(labels)), labels)):
        theirs[test] = f
    np.testing.assert_array_equal(ours, theirs)


def test_c_grid_is_logistic_regression_cv_default():
    np.testing.assert_allclose(c_grid(10), np.logspace(-4, 4, 10))
    assert c_grid([0.1, 1.0]) == [0.1, 1.0]


@pytest.mark.parametrize("scoring", ["accuracy", "neg_log_loss"])
def test_inner_cv_picks_logistic_regression_cv_c(multiclass, scoring):
    x, y = multiclass
    sk_cv = LogisticRegressionCV(
        Cs=10, cv=StratifiedKFold(5), scoring=scoring, l1_ratios=(0,), use_legacy_attributes=True, **SK
    )
    sk = make_pipeline(StandardScaler(), sk_cv).fit(x, y)
    fit = fit_logistic_cv(x, y, 10, folds=5, scoring=scoring)
    assert fit.cv is not None and fit.cv.fold_scaling == "global"
    print(f"{scoring}: C = {fit.c[0].item():.4g}, sklearn {sk_cv.C_[0]:.4g}")
    assert fit.c[0].item() == pytest.approx(sk_cv.C_[0])
    assert _max_diff(fit.probabilities(torch.from_numpy(x)), _sk_probs(sk, x)) < PROB_TOL
    sk_scores = np.asarray(sk_cv.scores_[0]).reshape(5, 10).T  # (Cs, folds); scores_ keeps an l1_ratio axis
    np.testing.assert_allclose(fit.cv.scores.numpy(), sk_scores, atol=1e-6)


def test_per_fold_scaling_picks_grid_search_pipeline_c(multiclass):
    x, y = multiclass
    grid = c_grid(10)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(**SK))
    search = GridSearchCV(pipe, {"logisticregression__C": grid}, cv=StratifiedKFold(5), scoring="neg_log_loss")
    search.fit(x, y)
    fit = fit_logistic_cv(x, y, grid, folds=5, scoring="neg_log_loss", fold_scaling="per_fold")
    assert fit.c[0].item() == pytest.approx(search.best_params_["logisticregression__C"])
    np.testing.assert_allclose(fit.cv.mean_scores.numpy(), search.cv_results_["mean_test_score"], atol=1e-6)


def _fold_splits(fold_ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.flatnonzero(fold_ids != f), np.flatnonzero(fold_ids == f)) for f in np.unique(fold_ids)]


def test_per_tag_cv_is_one_vs_rest_logistic_regression_cv(multilabel):
    x, y = multilabel
    fold_ids = stratified_folds(multilabel_strata(y), 4)
    sk_cv = LogisticRegressionCV(
        Cs=10, cv=_fold_splits(fold_ids), scoring="neg_log_loss", l1_ratios=(0,), use_legacy_attributes=True, **SK
    )
    sk = make_pipeline(StandardScaler(), OneVsRestClassifier(sk_cv)).fit(x, y)
    fit = fit_logistic_cv(x, y, 10, folds=4, per_tag=True)
    sk_c = [est.C_[0] for est in sk[-1].estimators_]
    print(f"per-tag C = {fit.c.tolist()}, sklearn {sk_c}")
    np.testing.assert_allclose(fit.c.numpy(), sk_c)
    assert _max_diff(fit.probabilities(torch.from_numpy(x)), _sk_probs(sk, x)) < PROB_TOL


def test_shared_c_cv_is_mean_tag_log_loss_of_sklearn_pieces(multilabel):
    x, y = multilabel
    z = StandardScaler().fit_transform(x)
    fold_ids = stratified_folds(multilabel_strata(y), 4)
    grid = c_grid(10)
    mean_score = []
    for c in grid:
        per_fold = []
        for train, test in _fold_splits(fold_ids):
            m = OneVsRestClassifier(LogisticRegression(C=c, **SK)).fit(z[train], y[train])
            p = np.clip(m.predict_proba(z[test]), 1e-15, 1 - 1e-15)
            per_fold.append(np.mean(y[test] * np.log(p) + (1 - y[test]) * np.log(1 - p)))
        mean_score.append(np.mean(per_fold))
    fit = fit_logistic_cv(x, y, grid, folds=4)
    assert fit.cv is not None and fit.cv.scoring == "neg_log_loss"
    np.testing.assert_allclose(fit.cv.mean_scores.numpy(), mean_score, atol=1e-6)
    assert fit.c.tolist() == [grid[int(np.argmax(mean_score))]] * y.shape[1]


def test_roc_auc_scoring_chooses_one_shared_c(multilabel):
    x, y = multilabel
    fit = fit_logistic_cv(x, y, [0.01, 1.0], folds=3, scoring="roc_auc")
    assert fit.cv is not None and fit.cv.scores.shape == (2, 3)
    assert len(set(fit.c.tolist())) == 1


def test_original_space_weights_give_standardised_logits(multiclass):
    x, y = multiclass
    fit = fit_logistic(x, y, 1.0)
    xt = torch.from_numpy(x)
    want = fit.logits(xt)
    torch.testing.assert_close(xt @ fit.raw_weight.T + fit.raw_bias, want, rtol=1e-9, atol=1e-9)

    plain = nn.Linear(20, 4).double()
    fit.load_into(plain)
    torch.testing.assert_close(plain(xt), want, rtol=1e-9, atol=1e-9)

    norm, head = nn.BatchNorm1d(20, affine=False).double().eval(), nn.Linear(20, 4).double()
    fit.load_into(head, norm)
    torch.testing.assert_close(head(norm(xt)), want, rtol=1e-9, atol=1e-9)


def test_load_into_the_stats_architecture_head(multiclass):
    from engine.models.stats import Stats

    x, y = multiclass
    fit = fit_logistic(x, y, 1.0)
    backbone = Stats(Stats.Config(stats=("mean",)), (1, 20, 1), 4).eval()  # float32, as the model runs
    fit.load_into(backbone.classifier, backbone.norm)
    xt = torch.from_numpy(x)
    got = backbone(xt.float()[:, None, :, None]).double()  # (N, 1, D, 1 frame): the mean is x itself
    torch.testing.assert_close(got, fit.logits(xt), rtol=1e-4, atol=1e-3)


def test_class_absent_from_training_gets_zero_probability(multiclass):
    x, y = multiclass
    y5 = np.where(y == 2, 4, y)  # classes 0, 1, 3, 4 of 5 present; 2 absent
    keep = y5 != 3  # ... and 3 too
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, **SK)).fit(x[keep], y5[keep])
    fit = fit_logistic(x[keep], y5[keep], 1.0, num_classes=5)
    p = fit.probabilities(torch.from_numpy(x))
    assert p.shape == (200, 5)
    for absent in (2, 3):
        assert torch.all(fit.weight[absent] == 0) and float(fit.bias[absent]) == -ABSENT_LOGIT
        assert float(p[:, absent].max()) < 1e-100
    assert _max_diff(p[:, [0, 1, 4]], sk.predict_proba(x)) < PROB_TOL


def test_tag_never_positive_is_predicted_zero_like_one_vs_rest(multilabel):
    x, y = multilabel
    y = y.copy()
    y[:, 2] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Label 2 is present in all training examples"
        sk = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=1.0, **SK))).fit(x, y)
    fit = fit_logistic(x, y, 1.0)
    p = fit.probabilities(torch.from_numpy(x))
    assert float(fit.bias[2]) == -ABSENT_LOGIT and float(p[:, 2].max()) == 0.0
    assert _max_diff(p, _sk_probs(sk, x)) < PROB_TOL


def test_fits_are_deterministic(multiclass, multilabel):
    x, y = multiclass
    a, b = fit_logistic_cv(x, y, 4, folds=3), fit_logistic_cv(x, y, 4, folds=3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and torch.equal(a.c, b.c)
    xm, ym = multilabel
    a, b = fit_logistic(xm, ym, 0.3), fit_logistic(xm, ym, 0.3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_bad_requests_are_refused(multiclass, multilabel):
    x, y = multiclass
    with pytest.raises(ValueError, match="roc_auc"):
        fit_logistic_cv(x, y, scoring="roc_auc")
    with pytest.raises(ValueError, match="per_tag"):
        fit_logistic_cv(x, y, per_tag=True)
    with pytest.raises(ValueError, match="C must be > 0"):
        fit_logistic(x, y, 0.0)
    with pytest.raises(ValueError, match="labels must lie"):
        fit_logistic(x, y, num_classes=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_equals_cpu_fit(multiclass):
    x, y = multiclass
    cpu = fit_logistic(x, y, 1.0)
    gpu = fit_logistic(x, y, 1.0, device="cuda")
    assert gpu.weight.device.type == "cuda"
    p_cpu, p_gpu = cpu.probabilities(torch.from_numpy(x)), gpu.probabilities(torch.from_numpy(x).cuda())
    assert float((p_cpu - p_gpu.cpu()).abs().max()) < 1e-6


def test_var_eps_standardises_as_a_batchnorm_and_damps_a_near_constant_column(multiclass):
    x, y = multiclass
    x = x.copy()
    x[:, 5] = 3.0 + 1e-9 * np.random.default_rng(0).normal(size=len(x))  # near-constant, not constant
    eps = 1e-3
    fit = fit_logistic(x, y, 1.0, tol=1e-10, var_eps=eps)
    z = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)
    want = LogisticRegression(C=1.0, **SK).fit(z, y).predict_proba(z)
    np.testing.assert_allclose(fit.probabilities(torch.as_tensor(x)).numpy(), want, atol=1e-6)
    assert float(fit.raw_weight[:, 5].abs().max()) < 1e3  # scikit-learn's scaling would make it ~1e9 per unit
    norm, linear = nn.BatchNorm1d(x.shape[1], eps=eps).eval().double(), nn.Linear(x.shape[1], 4).double()
    with torch.no_grad():
        fit.load_into(linear, norm)
        torch.testing.assert_close(linear(norm(torch.as_tensor(x))), fit.logits(torch.as_tensor(x)))
