"""Newton's method for :mod:`engine.linear_fit`'s logistic objective, in the row space of the data.

L-BFGS needs hundreds of iterations on a small, nearly separable probe problem (166 clips x 1,506 embedding
values, C = 1: 300-400 iterations, 1.5 s of Python-bound steps a fit on a 2-core CPU). Newton's method with the
exact Hessian needs 10-30, each one dense solve, when the Hessian is small enough to hold. It is made small by
two exact facts:

- **Row space.** With an L2 penalty, the optimal weights lie in the span of the training rows (the gradient of
  the data term is a combination of the rows, and at the optimum ``w / C`` equals minus that gradient). With
  ``z = U S V^T`` (thin SVD, rank r <= min(N, D)), ``w = beta V^T`` and ``||w|| = ||beta||``: the problem on
  the r features ``F = U S`` with the same penalty has the same optimum, mapped back by ``V``. So the size is
  ``(min(N, D) + 1) x P`` parameters whatever D is.
- **Block structure.** One-vs-rest and binary problems are independent per output: P Hessians of size
  ``(r + 1)^2`` (batched). The multinomial Hessian couples the classes: one ``(P (r + 1))^2`` matrix.

:func:`newton_solve` returns None when that matrix would exceed :data:`MAX_PARAMETERS` (the caller keeps
L-BFGS). Steps are damped by Armijo backtracking on the objective (global convergence); the multinomial
intercepts' one flat direction (adding a constant to every class's bias changes nothing) is handled by a tiny
ridge on the solve, which leaves the gradient -- orthogonal to that direction -- untouched. Converged when the
largest absolute gradient entry *in the original coordinates* is <= ``tol``, the criterion L-BFGS uses.
Everything in the input's dtype (float64 from :mod:`engine.linear_fit`) and device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MAX_PARAMETERS", "NewtonResult", "newton_solve"]

MAX_PARAMETERS = 3000
"""Largest coupled Hessian side (multinomial: classes x (rank + 1); one-vs-rest: rank + 1) solved by Newton."""

MAX_NEWTON_ITER = 100
ARMIJO = 1e-4  # sufficient-decrease constant of the backtracking line search
MAX_HALVINGS = 40


@dataclass
class NewtonResult:
    theta: Tensor  # [P, D + 1] weights and intercept (last column) in the original standardised coordinates
    n_iter: int
    converged: bool
    grad_max: float  # largest absolute gradient entry of the objective at theta (original coordinates)


def newton_solve(
    z: Tensor, kind: str, target: Tensor, inv_2c: Tensor, weight: Tensor, tol: float, init: Tensor | None
) -> NewtonResult | None:
    """Minimise ``(sum_i weight_i loss_i + sum_p inv_2c_p ||w_p||^2) / sum(weight)`` over ``theta [P, D + 1]``.

    Args:
        z: standardised features ``[N, D]``.
        kind: ``"multinomial"`` (``target [N]`` int in ``[0, P)``), ``"binary"`` or ``"ovr"`` (``target [N, P]``
            in {0, 1}: independent sigmoid outputs).
        inv_2c: ``1 / (2 C_p)`` per output ``[P]``.
        weight: sample weights ``[N]``.
        tol: gradient tolerance (largest absolute entry).
        init: a starting ``theta`` (warm start along a C path) or None (zeros).

    Returns None when the Hessian is too large for a dense solve (see the module docstring).
    """
    n, d = z.shape
    p = inv_2c.shape[0]
    basis = _row_basis(z)  # [D, r] orthonormal, or None: work on z itself
    f = z if basis is None else z @ basis  # (N, r)
    r = f.shape[1]
    if (p * (r + 1) if kind == "multinomial" else r + 1) > MAX_PARAMETERS:
        return None
    ft = torch.cat([f, torch.ones(n, 1, dtype=z.dtype, device=z.device)], dim=1)  # (N, q): features + intercept
    ws = weight / weight.sum()
    reg = torch.zeros(p, r + 1, dtype=z.dtype, device=z.device)
    reg[:, :r] = (2.0 * inv_2c / weight.sum())[:, None]  # Hessian of the penalty (diagonal; intercept free)
    theta = torch.zeros(p, r + 1, dtype=z.dtype, device=z.device)
    if init is not None and tuple(init.shape) == (p, d + 1):
        theta[:, :r] = init[:, :-1] if basis is None else init[:, :-1] @ basis
        theta[:, r] = init[:, -1]
    problem = _Multinomial(ft, target, ws, reg) if kind == "multinomial" else _Sigmoid(ft, target, ws, reg)

    def back(t: Tensor) -> Tensor:  # [P, r + 1] -> [P, D + 1] in the original coordinates
        return t if basis is None else torch.cat([t[:, :r] @ basis.T, t[:, r:]], dim=1)

    loss, grad = problem.loss_grad(theta)
    grad_max = _grad_max(grad, basis)
    it = 0
    while grad_max > tol and it < MAX_NEWTON_ITER:
        step = problem.direction(theta, grad)
        slope = float((grad * step).sum())
        if not slope < 0:  # not a descent direction (numerically flat): stop here
            break
        t = 1.0
        for _ in range(MAX_HALVINGS):
            new_loss, new_grad = problem.loss_grad(theta + t * step)
            if float(new_loss) <= float(loss) + ARMIJO * t * slope:
                break
            t *= 0.5
        else:
            break
        theta, loss, grad = theta + t * step, new_loss, new_grad
        grad_max = _grad_max(grad, basis)
        it += 1
    return NewtonResult(back(theta), it, grad_max <= tol, grad_max)


def _row_basis(z: Tensor) -> Tensor | None:
    """An orthonormal basis ``[D, r]`` of the span of z's rows when N < D (else None: z is already small)."""
    n, d = z.shape
    if n >= d:
        return None
    _, s, vh = torch.linalg.svd(z, full_matrices=False)  # vh (N, D)
    keep = s > s[0] * max(n, d) * torch.finfo(z.dtype).eps if s.numel() else s > 0
    return vh[keep].T


def _grad_max(grad: Tensor, basis: Tensor | None) -> float:
    """Largest absolute gradient entry in the original coordinates (the weights' part mapped back by the basis;
    the optimum's weights lie in the span, so nothing is lost off it)."""
    w = grad[:, :-1] if basis is None else grad[:, :-1] @ basis.T
    return max(float(w.abs().max()) if w.numel() else 0.0, float(grad[:, -1].abs().max()))


class _Multinomial:
    """Softmax cross-entropy: one coupled Hessian ``[P q, P q]``."""

    def __init__(self, ft: Tensor, target: Tensor, ws: Tensor, reg: Tensor) -> None:
        self.ft, self.ws, self.reg = ft, ws, reg
        self.onehot = torch.nn.functional.one_hot(target.long(), reg.shape[0]).to(ft.dtype)  # (N, P)

    def loss_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.ft @ theta.T  # (N, P)
        lse = torch.logsumexp(logits, dim=1)
        loss = (self.ws * (lse - (logits * self.onehot).sum(dim=1))).sum() + 0.5 * (self.reg * theta.pow(2)).sum()
        self.prob = torch.softmax(logits, dim=1)  # kept for the Hessian at this point
        grad = (self.ws[:, None] * (self.prob - self.onehot)).T @ self.ft + self.reg * theta  # (P, q)
        return loss, grad

    def direction(self, theta: Tensor, grad: Tensor) -> Tensor:
        """The Newton step at ``theta``, the point of the last :meth:`loss_grad` call (its probabilities)."""
        p, q = theta.shape
        prob, ft, ws = self.prob, self.ft, self.ws
        # sum_i ws_i (diag(p_i) - p_i p_i^T) (x) f_i f_i^T, plus the penalty's diagonal; built in place (the
        # matrix is P q square: 8 MB at 6 x 167)
        x = (prob[:, :, None] * ft[:, None, :]).reshape(-1, p * q)  # (N, P q)
        hess = x.T @ (ws[:, None] * x)
        hess.neg_()
        blocks = hess.view(p, q, p, q)
        for a in range(p):  # the diag(p_i) part: one (q, q) block per class
            blocks[a, :, a, :] += ft.T @ ((ws * prob[:, a])[:, None] * ft)
        diag = hess.diagonal()
        diag += self.reg.reshape(-1)
        diag += 1e-10 * float(diag.abs().max())  # ridge: the intercepts' flat direction
        return _spd_solve(hess, -grad.reshape(-1, 1)).reshape(p, q)


def _spd_solve(a: Tensor, b: Tensor) -> Tensor:
    """``a^-1 b`` for a symmetric positive definite ``a`` (Cholesky; a general solve if it is not numerically)."""
    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):
        return torch.linalg.solve(a, b)
    return torch.cholesky_solve(b, chol)


class _Sigmoid:
    """Independent sigmoid outputs (binary, one-vs-rest): P Hessians ``[q, q]``, batched."""

    def __init__(self, ft: Tensor, target: Tensor, ws: Tensor, reg: Tensor) -> None:
        self.ft, self.target, self.ws, self.reg = ft, target.to(ft.dtype), ws, reg

    def loss_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.ft @ theta.T  # (N, P)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, self.target, reduction="none")
        loss = (self.ws[:, None] * bce).sum() + 0.5 * (self.reg * theta.pow(2)).sum()
        self.prob = torch.sigmoid(logits)
        grad = (self.ws[:, None] * (self.prob - self.target)).T @ self.ft + self.reg * theta  # (P, q)
        return loss, grad

    def direction(self, theta: Tensor, grad: Tensor) -> Tensor:
        """The Newton step at ``theta``, the point of the last :meth:`loss_grad` call (its probabilities)."""
        curv = self.ws[:, None] * self.prob * (1 - self.prob)  # (N, P)
        hess = torch.einsum("na,ni,nj->aij", curv, self.ft, self.ft)  # (P, q, q)
        hess = hess + torch.diag_embed(self.reg)
        return _spd_solve(hess, -grad[:, :, None]).squeeze(2)
