"""engine.logistic_newton: Newton's method in the data's row space reaches the optimum L-BFGS and scikit-learn
reach (wide problems N < D included), in tens of iterations; too large a Hessian is left to L-BFGS."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import engine.logistic_newton as newton
from engine.linear_fit import fit_logistic
from engine.logistic_newton import newton_solve

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

SK = {"max_iter": 20000, "tol": 1e-12}


def _wide(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """N < D, nearly separable: the probe's shape (clips x embedding values), where L-BFGS needs hundreds of steps."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.normal(0, 1, (k, d))
    return centres[y] * 0.3 + rng.normal(0, 1, (n, d)), y


def _sklearn_probs(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    z = StandardScaler().fit_transform(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=c, **SK).fit(z, y).predict_proba(z)


@pytest.mark.parametrize("k", [2, 5])
def test_wide_single_label_fit_gives_sklearns_probabilities_in_few_newton_steps(k):
    x, y = _wide(60, 300, k)
    fit = fit_logistic(x, y, 1.0, tol=1e-8)
    probs = fit.probabilities(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(probs, _sklearn_probs(x, y, 1.0), atol=1e-6)
    assert fit.converged and fit.n_iter <= 40  # Newton's count (L-BFGS: hundreds)


def test_newton_and_lbfgs_reach_the_same_optimum(monkeypatch):
    x, y = _wide(50, 120, 4, seed=1)
    by_newton = fit_logistic(x, y, 0.5, tol=1e-9)
    monkeypatch.setattr(newton, "MAX_PARAMETERS", 0)  # every problem "too large": L-BFGS alone
    by_lbfgs = fit_logistic(x, y, 0.5, tol=1e-9, max_iter=20000)
    assert by_lbfgs.n_iter > 3 * by_newton.n_iter
    xt = torch.as_tensor(x)
    torch.testing.assert_close(by_newton.probabilities(xt), by_lbfgs.probabilities(xt), atol=1e-6, rtol=0)


def test_one_vs_rest_tags_with_their_own_c_match_sklearn_per_tag():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (40, 90))
    y = (x[:, :3] + rng.normal(0, 1, (40, 3)) > 0).astype(np.float64)  # (N, 3) tags
    cs = [0.1, 1.0, 10.0]
    fit = fit_logistic(x, y, cs, tol=1e-9)
    got = fit.probabilities(torch.as_tensor(x)).numpy()
    z = StandardScaler().fit_transform(x)
    for j, c in enumerate(cs):
        want = LogisticRegression(C=c, **SK).fit(z, y[:, j]).predict_proba(z)[:, 1]
        np.testing.assert_allclose(got[:, j], want, atol=1e-6)


def test_gradient_at_the_returned_point_is_within_tol_in_the_original_coordinates():
    x, y = _wide(30, 80, 3, seed=3)
    z = torch.as_tensor(StandardScaler().fit_transform(x))
    inv_2c = torch.full((3,), 0.5, dtype=torch.float64)
    weight = torch.ones(30, dtype=torch.float64)
    res = newton_solve(z, "multinomial", torch.as_tensor(y), inv_2c, weight, 1e-10, None)
    assert res is not None and res.converged and res.theta.shape == (3, 81)
    theta = res.theta.clone().requires_grad_(True)
    logits = z @ theta[:, :-1].T + theta[:, -1]
    loss = (torch.logsumexp(logits, 1) - logits.gather(1, torch.as_tensor(y)[:, None]).squeeze(1)).sum()
    loss = (loss + (inv_2c * theta[:, :-1].pow(2).sum(1)).sum()) / weight.sum()
    loss.backward()
    assert float(theta.grad.abs().max()) <= 1e-9


def test_a_hessian_over_the_limit_is_left_to_the_caller(monkeypatch):
    x, y = _wide(20, 40, 3)
    # standardised (centred) rows span 19 dimensions: 3 classes x (19 + 1) parameters is one too many
    monkeypatch.setattr(newton, "MAX_PARAMETERS", 3 * 20 - 1)
    z = torch.as_tensor(StandardScaler().fit_transform(x))
    ones = torch.ones(20, dtype=torch.float64)
    assert newton_solve(z, "multinomial", torch.as_tensor(y), ones[:3], ones, 1e-6, None) is None
    assert newton_solve(z, "ovr", torch.as_tensor(np.eye(3)[y]), ones[:3], ones, 1e-6, None) is not None  # 20 per tag
