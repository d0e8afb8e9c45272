"""Post-hoc calibrators: pure functions of the validation logits and labels -> parameters (plain
numbers and lists, saved as JSON) -> calibrated log-probabilities of any logits.

Every `apply` returns float64 [N, K] "calibrated logits" s with softmax(s) = q, so the whole metric
family (ls_bench.evaluate.metrics.compute_metrics, selective.evaluate_split) scores them unchanged.

- ts: temperature scaling (Guo et al. 2017), the fit of ls_bench.evaluate.calibration; q = softmax(z / T).
- vs, ms_odir, dirichlet: ls_bench.evaluate.linear (Guo et al. 2017; Kull et al. 2019).
- ets: ensemble temperature scaling (Zhang, Kailkhura & Han 2020, "Mix-n-Match", eq. 9):
  q = w0·softmax(z / T) + w1·softmax(z) + w2/K with T the ts temperature and w on the simplex
  minimising the validation NLL (their ll_w, SLSQP from (1, 0, 0) as in their util_calibration.py;
  their demo fits both T and w by MSE: here T is ts's NLL fit and w fits NLL, as the loss they also offer).
- hist: top-label histogram binning (Zadrozny & Elkan 2001; Gupta & Ramdas 2021 for the top-label form),
  as uncertainty-calibration's HistogramTopCalibrator (Kumar et al. 2019): the top-label confidence c
  is replaced by the validation accuracy h(c) of its equal-mass bin (metrics.n_bins bins). The rest of
  the vector shares 1 - h in proportion to the other softmax probabilities.
- isotonic: one-vs-rest isotonic regression of 1[y = k] on q_k per class (Zadrozny & Elkan 2002),
  linear between the fitted points and clipped outside (scikit-learn's IsotonicRegression(out_of_bounds=
  "clip")), then + 1e-9·q (Zhang et al.'s irova_calibrate: breaks ties, no all-zero row) and renormalised.
vs, ms_odir, dirichlet, hist and isotonic can move the argmax: their acc is reported as it is, with
`argmax_changed`, the share of test samples whose prediction differs from the uncalibrated one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ls_bench.config import POSTHOC
from ls_bench.evaluate import linear
from ls_bench.evaluate.calibration import fit_temperature
from ls_bench.evaluate.metrics import compute_metrics
from ls_bench.evaluate.selective import equal_mass_edges, evaluate_split

TIE_BREAK = 1e-9  # Zhang et al.'s + 1e-9·q in isotonic (and here in hist): no zero row, argmax ties broken by q
TINY = np.finfo(np.float64).tiny  # log floor of a mixture's probabilities (ets)


def _softmax(z: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(z, dtype=np.float64)), 1).numpy()


def _log(q: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(q, TINY))


# --- ets -----------------------------------------------------------------------------------------


def ets_weights(p0_y: np.ndarray, p1_y: np.ndarray, k: int) -> np.ndarray:
    """w on the simplex minimising -mean log(w0·p0_y + w1·p1_y + w2/K) (Zhang et al.'s ll_w), SLSQP."""
    from scipy.optimize import minimize

    cols = np.stack([p0_y, p1_y, np.full_like(p0_y, 1 / k)], 1)  # [N, 3]: each component's q_y

    def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        q = np.maximum(cols @ w, TINY)
        return float(-np.log(q).mean()), -(cols / q[:, None]).mean(0)

    res = minimize(nll, np.array([1.0, 0.0, 0.0]), jac=True, method="SLSQP", bounds=[(0, 1)] * 3, tol=1e-12,
                   constraints={"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(3)})
    w = np.clip(res.x, 0, 1)
    return w / w.sum()


def fit_ets(z: np.ndarray, y: np.ndarray) -> dict:
    t = fit_temperature(torch.from_numpy(z), torch.from_numpy(y))
    rows = np.arange(len(y))
    w = ets_weights(_softmax(z / t)[rows, y], _softmax(z)[rows, y], z.shape[1])
    return {"temperature": t, "weights": w.tolist()}


def apply_ets(params: dict, z: np.ndarray) -> np.ndarray:
    w0, w1, w2 = params["weights"]
    return _log(w0 * _softmax(z / params["temperature"]) + w1 * _softmax(z) + w2 / z.shape[1])


# --- hist ----------------------------------------------------------------------------------------


def fit_hist(z: np.ndarray, y: np.ndarray, n_bins: int) -> dict:
    """Equal-mass bin edges of the validation top-label confidences (Kumar et al.'s get_equal_bins) and
    each bin's accuracy; an empty bin gets its midpoint, as their get_histogram_calibrator does."""
    q = _softmax(z)
    conf, correct = q.max(1), (q.argmax(1) == y).astype(np.float64)
    edges = equal_mass_edges(torch.from_numpy(conf), n_bins).numpy()
    idx = np.searchsorted(edges, conf)  # edge[b-1] < conf <= edge[b]
    count = np.bincount(idx, minlength=len(edges))
    hits = np.bincount(idx, weights=correct, minlength=len(edges))
    mid = (edges + np.r_[0.0, edges[:-1]]) / 2
    return {"edges": edges.tolist(), "accuracy": np.where(count > 0, hits / np.maximum(count, 1), mid).tolist()}


def hist_confidence(params: dict, conf: np.ndarray) -> np.ndarray:
    """h(c): the calibrated top-label confidence (their calibrator(probs) = bin_means[searchsorted])."""
    return np.asarray(params["accuracy"])[np.searchsorted(np.asarray(params["edges"]), conf)]


def apply_hist(params: dict, z: np.ndarray) -> np.ndarray:
    q = _softmax(z)
    top = q.argmax(1)
    rows = np.arange(len(q))
    h = hist_confidence(params, q[rows, top])
    rest = q.copy()
    rest[rows, top] = 0
    s = rest.sum(1, keepdims=True)
    rest = np.where(s > 0, rest / np.where(s > 0, s, 1), 1 / (q.shape[1] - 1))  # confidence 1.0: spread evenly
    rest[rows, top] = 0
    out = rest * (1 - h)[:, None]
    out[rows, top] = h
    return _log((out + TIE_BREAK * q) / (1 + TIE_BREAK))


# --- isotonic ------------------------------------------------------------------------------------


def isotonic_points(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The increasing least-squares fit of y on x at the distinct x (tied x averaged with their counts as
    weights, as IsotonicRegression does), keeping only the points where the fit changes."""
    from scipy.optimize import isotonic_regression

    ux, inv = np.unique(x, return_inverse=True)
    w = np.bincount(inv).astype(np.float64)
    fx = isotonic_regression(np.bincount(inv, weights=y) / w, weights=w).x
    keep = np.ones(len(fx), dtype=bool)
    keep[1:-1] = (fx[1:-1] != fx[:-2]) | (fx[1:-1] != fx[2:])  # interior points of a flat run add nothing
    return ux[keep], fx[keep]


def fit_isotonic(z: np.ndarray, y: np.ndarray) -> dict:
    q = _softmax(z)
    pts = [isotonic_points(q[:, k], (y == k).astype(np.float64)) for k in range(q.shape[1])]
    return {"x": [p[0].tolist() for p in pts], "y": [p[1].tolist() for p in pts]}


def apply_isotonic(params: dict, z: np.ndarray) -> np.ndarray:
    q = _softmax(z)
    iso = np.stack([np.interp(q[:, k], params["x"][k], params["y"][k]) for k in range(q.shape[1])], 1)
    out = iso + TIE_BREAK * q
    return _log(out / out.sum(1, keepdims=True))


# --- the registry ----------------------------------------------------------------------------------


def fit(method: str, logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict:
    """The parameters of `method` fitted on (validation) logits [N, K] and labels [N]."""
    z, y = logits.detach().double().cpu().numpy(), labels.long().cpu().numpy()
    if method == "ts":
        return {"temperature": fit_temperature(logits, labels)}
    if method == "vs":
        return {k: v.tolist() for k, v in linear.fit_vector_scaling(z, y).items()}
    if method in ("ms_odir", "dirichlet"):
        p = linear.fit_odir(z, y, on=ON[method])
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in p.items()}
    if method == "ets":
        return fit_ets(z, y)
    if method == "hist":
        return fit_hist(z, y, n_bins)
    if method == "isotonic":
        return fit_isotonic(z, y)
    raise ValueError(f"unknown post-hoc method {method!r}; known: {', '.join(POSTHOC)}")


ON = {"vs": "logits", "ms_odir": "logits", "dirichlet": "logprobs"}


def apply(method: str, params: dict, logits: Tensor) -> Tensor:
    """Calibrated logits (float64 [N, K], softmax = the calibrated q) of `logits` under fitted `params`."""
    if method == "ts":
        return logits / params["temperature"]  # finish.py's own arithmetic: test_ts/* bit-identical
    z = logits.detach().double().cpu().numpy()
    if method in ON:
        out = linear.apply_linear(params, z, ON[method])
    else:
        out = {"ets": apply_ets, "hist": apply_hist, "isotonic": apply_isotonic}[method](params, z)
    return torch.from_numpy(out)


def posthoc_metrics(methods: list[str], val: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], n_bins: int,
                    top_k: int | None, bootstrap: int, seed: int) -> tuple[dict[str, float], dict[str, dict]]:
    """Fit each method on `val`, score it on `test`: ({"test_<m>/<metric>": value}, {m: params}).

    The metric family is compute_metrics' plus evaluate_split's (aurc, eaurc, ece interval, dece, smece),
    and argmax_changed: the share of test samples whose argmax the method moved."""
    out: dict[str, float] = {}
    fitted: dict[str, dict] = {}
    z, y = test
    pred = z.argmax(1)
    for m in methods:
        params = fitted[m] = fit(m, *val, n_bins=n_bins)
        s = apply(m, params, z)
        scores = {**compute_metrics(s, y, n_bins, top_k), **evaluate_split(s, y, n_bins, bootstrap, seed),
                  "argmax_changed": float((s.argmax(1) != pred).double().mean())}
        out.update({f"test_{m}/{k}": v for k, v in scores.items()})
    return out, fitted
