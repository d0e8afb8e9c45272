"""Linear post-hoc calibrators: q = softmax(W x + b) of the logits x = z or the log-probabilities
x = log softmax(z), fitted on the validation split (float64 numpy, scipy's L-BFGS-B, analytic gradient).

- vs, vector scaling (Guo et al. 2017, "On calibration of modern neural networks"): W = diag(a) on the
  logits, unregularised: minimise the mean NLL over a, b in R^K from a = 1, b = 0.
- ms_odir, matrix scaling, and dirichlet, Dirichlet calibration (Kull et al. 2019, "Beyond temperature
  scaling: obtaining well-calibrated multi-class probabilities with Dirichlet calibration"): a full W on
  the logits (ms_odir) or on the log-probabilities (dirichlet), with their Off-Diagonal and Intercept
  Regularisation (ODIR, their eq. 5):
      L(W, b) = (1/N) Σ_i -log q_{y_i} + λ/(K(K-1)) Σ_{j≠k} W_jk² + μ/K Σ_k b_k²,
  from W = I, b = 0 (their 'identity' initialiser). λ and μ are chosen as in their experiments_dnn code
  (tune_dirichlet_nn_slim.py): 5-fold cross-validation on the validation split (sklearn KFold, shuffled,
  random_state=15), the grid point with the lowest held-out log-loss averaged over the folds. Their grid
  (λ in 10^-5..10^6 times {1, 1/4, 1/2}, times 12 μ values: 432 points x 5 folds) costs hours at
  K = 100 on a CPU; here λ = μ walks ODIR_GRID from strong to weak first, then μ walks it at the best
  λ (at most 15 points, warm started, each walk stopped after PATIENCE points worse than its best),
  and the chosen (λ, μ) is refitted on the whole split (they averaged the 5 fold models).
dirichletcal (the authors' package) with reg_norm=True, ref_row=False minimises the same objective.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.special import log_softmax

ODIR_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)  # λ and μ candidates (normalised as in eq. 5)
CV_FOLDS, CV_SEED = 5, 15  # Kull et al.'s k_folds and random_state
PATIENCE = 2  # grid points worse than the best in a row that end a walk along the grid
TOL = {"maxiter": 5000, "ftol": 1e-13, "gtol": 1e-9}  # L-BFGS-B, final fits: ~1e-6 of dirichletcal's q
CV_TOL = {"maxiter": 500, "ftol": 1e-8, "gtol": 1e-5}  # the grid's fold fits: only their ranking matters


def features(logits: np.ndarray, on: str) -> np.ndarray:
    """x = z (on="logits") or x = log softmax(z) (on="logprobs", the Dirichlet map), float64."""
    z = np.asarray(logits, dtype=np.float64)
    return z if on == "logits" else log_softmax(z, axis=1)


def _nll_grad(theta: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float, mu: float,
              diag: bool) -> tuple[float, np.ndarray]:
    """ODIR objective and its gradient; theta = [a, b] (diag) or [W row-major, b].

    The fits call this thousands of times, so it works in one [N, K] buffer: a single exp (the
    softmax q and -log q_y = log Σ exp(s - m) - (s_y - m) from it, not log_softmax and then exp
    again) and, for the full matrix, no other temporaries of that size: 1.7-1.9x faster per call than the log_softmax
    form at 4,000 x 100, same values to 1e-16 (scripts/bench_posthoc.py, docs/posthoc.md)."""
    n, k = x.shape
    rows = np.arange(n)
    w, b = (theta[:k], theta[k:]) if diag else (theta[:k * k].reshape(k, k), theta[k * k:])
    s = x * w if diag else x @ w.T
    s += b
    m = s.max(axis=1)
    s_y = s[rows, y] - m
    s -= m[:, None]
    np.exp(s, out=s)
    total = s.sum(axis=1)
    loss = float(np.mean(np.log(total) - s_y))
    s /= total[:, None]
    s[rows, y] -= 1  # d(-log q_y)/ds = q - onehot
    s /= n
    if diag:
        return loss, np.concatenate([(s * x).sum(0), s.sum(0)])
    off = w - np.diag(np.diag(w))
    c_off, c_b = lam / (k * (k - 1)), mu / k
    loss += c_off * np.square(off).sum() + c_b * np.square(b).sum()
    return loss, np.concatenate([(s.T @ x + 2 * c_off * off).ravel(), s.sum(0) + 2 * c_b * b])


def _minimise(x: np.ndarray, y: np.ndarray, lam: float, mu: float, diag: bool,
              theta0: np.ndarray | None = None, tol: dict = TOL) -> np.ndarray:
    k = x.shape[1]
    if theta0 is None:  # identity map: the uncalibrated model
        theta0 = np.concatenate([np.ones(k) if diag else np.eye(k).ravel(), np.zeros(k)])
    from scipy.optimize import minimize  # here: a 1-2 s import that only a fit should pay (calibration.py)

    res = minimize(_nll_grad, theta0, args=(x, y, lam, mu, diag), jac=True, method="L-BFGS-B", options=tol)
    return res.x


def _unpack(theta: np.ndarray, k: int, diag: bool) -> dict[str, np.ndarray]:
    if diag:
        return {"a": theta[:k], "b": theta[k:]}
    return {"W": theta[:k * k].reshape(k, k), "b": theta[k * k:]}


def fit_vector_scaling(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Guo et al.'s vector scaling: {"a": [K], "b": [K]} minimising the validation NLL of softmax(a*z + b)."""
    x = features(logits, "logits")
    return _unpack(_minimise(x, np.asarray(labels), 0.0, 0.0, diag=True), x.shape[1], diag=True)


def _cv_nll(x: np.ndarray, y: np.ndarray, folds: list, lam: float, mu: float,
            warm: list[np.ndarray | None]) -> float:
    """Mean held-out NLL over the folds at (λ, μ); updates `warm` with each fold's solution."""
    losses = []
    for i, (tr, te) in enumerate(folds):
        warm[i] = _minimise(x[tr], y[tr], lam, mu, diag=False, theta0=warm[i], tol=CV_TOL)
        losses.append(_nll_grad(warm[i], x[te], y[te], 0.0, 0.0, diag=False)[0])
    return float(np.mean(losses))


def _walk(scores: dict, points: list[tuple[float, float]], cv: Callable[[tuple[float, float]], float]) -> None:
    """Score grid points from the strongest regularisation down (each fold's fit warm-starts the next),
    stopping after PATIENCE points in a row worse than the best: the held-out NLL along the path is
    (almost always) unimodal, and the weakly regularised fits of a K x K matrix are the slow ones."""
    best, worse = float("inf"), 0
    for p in sorted(points, reverse=True):
        if p not in scores:
            scores[p] = cv(p)
        best, worse = (scores[p], 0) if scores[p] < best else (best, worse + 1)
        if worse == PATIENCE:
            return


def fit_odir(logits: np.ndarray, labels: np.ndarray, on: str) -> dict:
    """ms_odir (on="logits") or dirichlet (on="logprobs"): {"W", "b", "lambda", "mu", "cv_nll"}."""
    from sklearn.model_selection import KFold  # ~1 s to import: paid only by runs that use ODIR

    x, y = features(logits, on), np.asarray(labels)
    folds = list(KFold(n_splits=min(CV_FOLDS, len(y)), shuffle=True, random_state=CV_SEED).split(x))
    warm: list[np.ndarray | None] = [None] * len(folds)
    scores: dict[tuple[float, float], float] = {}
    _walk(scores, [(lam, lam) for lam in ODIR_GRID], lambda p: _cv_nll(x, y, folds, *p, warm))
    best_lam = min(sorted(scores), key=lambda p: scores[p])[0]
    _walk(scores, [(best_lam, mu) for mu in ODIR_GRID], lambda p: _cv_nll(x, y, folds, *p, warm))
    lam, mu = min(sorted(scores), key=lambda p: scores[p])  # ties: the smallest (λ, μ)
    out = _unpack(_minimise(x, y, lam, mu, diag=False), x.shape[1], diag=False)
    return {**out, "lambda": lam, "mu": mu,
            "cv_nll": [[la, m, v] for (la, m), v in sorted(scores.items())]}


def apply_linear(params: dict, logits: np.ndarray, on: str) -> np.ndarray:
    """The calibrated logits W x + b (or a*x + b), float64 [N, K]; softmax of them is q."""
    x = features(logits, on)
    if "a" in params:
        return x * np.asarray(params["a"]) + np.asarray(params["b"])
    return x @ np.asarray(params["W"]).T + np.asarray(params["b"])
