"""Post-hoc calibrators against their references on the same logits: the authors' dirichletcal (vector
scaling, ODIR matrix scaling, Dirichlet; Python >= 3.12 only, skipped elsewhere), scikit-learn's
LogisticRegression (unregularised matrix scaling) and IsotonicRegression, uncertainty-calibration's
HistogramTopCalibrator, Zhang et al.'s ETS weight fit and formula, and torch autograd for the ODIR gradient."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy.special import softmax

from ls_bench.evaluate import linear, posthoc
from ls_bench.evaluate.calibration import fit_temperature
from ls_bench.evaluate.metrics import compute_metrics


def make_logits(n: int, k: int, seed: int, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes (no separable data: every fit has a finite optimum), a per-class bias to correct."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), y] += 1.5
    return z * scale + rng.normal(0, 0.5, k), y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    z, y = make_logits(600, 5, seed=0)
    zt, yt = make_logits(400, 5, seed=1)
    return z, y, zt, yt


def probs(method: str, params: dict, z: np.ndarray) -> np.ndarray:
    return torch.softmax(posthoc.apply(method, params, torch.from_numpy(z)), 1).numpy()


@pytest.mark.slow  # jax compiles the Hessian of their Newton optimiser: ~30 s per case on 2 cores
@pytest.mark.parametrize("method, on, lam, mu", [("Diag", "logits", 0.0, None),  # vector scaling
                                                  ("Full", "logits", 0.1, 0.01),  # ms_odir at one (λ, μ)
                                                  ("Full", "logprobs", 0.1, 0.01)])  # dirichlet at one (λ, μ)
def test_linear_fits_are_dirichletcals(data, method: str, on: str, lam: float, mu: float | None) -> None:
    """At a fixed (λ, μ) our objective and optimum are the authors' MultinomialRegression's (what their
    VectorScaling, MatrixScaling and FullDirichletCalibrator fit): reg_norm=True is ODIR's λ/(K(K-1)), μ/K;
    ref_row=False the paper's parametrisation. Their default optimiser for K <= 36, Newton's method (their
    L-BFGS path stops ~3e-10 short of the optimum, 1e-5 away in q)."""
    multinomial = pytest.importorskip("dirichletcal.calib.multinomial")
    z, y, zt, _ = data
    x, xt = linear.features(z, on), linear.features(zt, on)
    diag = method == "Diag"
    ours = linear._unpack(linear._minimise(x, y, lam, mu or 0.0, diag=diag), 5, diag=diag)
    ref = multinomial.MultinomialRegression(method=method, reg_lambda=lam, reg_mu=mu, reg_norm=not diag,
                                            ref_row=diag, optimizer="newton").fit(x, y)
    q_ref = np.asarray(ref.predict_proba(xt))
    assert np.abs(softmax(linear.apply_linear(ours, zt, on), 1) - q_ref).max() < 1e-5  # measured 1.1e-6 (ms_odir)


@pytest.mark.filterwarnings("ignore:'penalty' was deprecated:FutureWarning")  # sklearn >= 1.8; None still works
def test_unregularised_matrix_scaling_is_multinomial_logistic_regression(data) -> None:
    """λ = μ = 0: matrix scaling is plain multinomial logistic regression on the logits (sklearn, lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    z, y, zt, _ = data
    ours = linear._unpack(linear._minimise(z, y, 0.0, 0.0, diag=False), 5, diag=False)
    ref = LogisticRegression(penalty=None, tol=1e-10, max_iter=10_000).fit(z, y)
    assert np.abs(softmax(linear.apply_linear(ours, zt, "logits"), 1) - ref.predict_proba(zt)).max() < 1e-5


def test_odir_gradient_is_autograds(data) -> None:
    z, y, _, _ = data
    rng = np.random.default_rng(3)
    theta = np.concatenate([np.eye(5).ravel() + rng.normal(0, 0.1, 25), rng.normal(0, 0.1, 5)])
    f, g = linear._nll_grad(theta, z, y, 0.3, 0.2, diag=False)
    t = torch.tensor(theta, requires_grad=True)
    w, b = t[:25].view(5, 5), t[25:]
    off = w - torch.diag(torch.diag(w))
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(z) @ w.T + b, torch.from_numpy(y)) \
        + 0.3 / 20 * off.square().sum() + 0.2 / 5 * b.square().sum()
    loss.backward()
    assert f == pytest.approx(loss.item(), rel=1e-12)
    assert np.abs(g - t.grad.numpy()).max() < 1e-12


def test_vector_scaling_gradient_is_autograds(data) -> None:
    z, y, _, _ = data
    theta = np.random.default_rng(4).normal(1, 0.2, 10)
    f, g = linear._nll_grad(theta, z, y, 0.0, 0.0, diag=True)
    t = torch.tensor(theta, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(z) * t[:5] + t[5:], torch.from_numpy(y))
    loss.backward()
    assert f == pytest.approx(loss.item(), rel=1e-12)
    assert np.abs(g - t.grad.numpy()).max() < 1e-12


def test_odir_cross_validation_picks_the_lowest_held_out_nll(data) -> None:
    z, y, _, _ = data
    p = posthoc.fit("ms_odir", torch.from_numpy(z), torch.from_numpy(y))
    table = {(la, mu): v for la, mu, v in p["cv_nll"]}
    assert table[p["lambda"], p["mu"]] == min(table.values())
    grid = sorted(linear.ODIR_GRID, reverse=True)
    walk = [table[g, g] for g in grid if (g, g) in table]  # λ = μ, strong to weak: a prefix of the grid
    assert [(g, g) in table for g in grid] == [True] * len(walk) + [False] * (len(grid) - len(walk))
    stopped = len(walk) < len(grid)
    assert not stopped or min(walk[-linear.PATIENCE:]) > min(walk[:-linear.PATIENCE])  # stopped: worse in a row
    again = posthoc.fit("ms_odir", torch.from_numpy(z), torch.from_numpy(y))
    assert again == p  # deterministic: same folds, same grid, same optimiser path


def test_isotonic_is_sklearns_per_class(data) -> None:
    """Tied q_k (each validation row three times, with different labels) are averaged with their counts as
    weights, as sklearn does. (sklearn also merges values less than 1e-15 apart; these do not.)"""
    from sklearn.isotonic import IsotonicRegression

    z, y, zt, _ = data
    z, y = np.repeat(z[:200], 3, axis=0), y[:600]  # exact ties
    params = posthoc.fit("isotonic", torch.from_numpy(z), torch.from_numpy(y))
    q, qt = softmax(z, 1), softmax(zt, 1)
    ref = np.stack([IsotonicRegression(out_of_bounds="clip").fit(q[:, k], y == k).predict(qt[:, k])
                    for k in range(5)], 1)
    ours = np.stack([np.interp(qt[:, k], params["x"][k], params["y"][k]) for k in range(5)], 1)
    assert np.abs(ours - ref).max() < 1e-12
    expect = (ref + 1e-9 * qt) / (ref + 1e-9 * qt).sum(1, keepdims=True)
    assert np.abs(probs("isotonic", params, zt) - expect).max() < 1e-12


def test_histogram_binning_is_uncertainty_calibrations(data) -> None:
    calibrators = pytest.importorskip("calibration.calibrators")
    z, y, zt, _ = data
    ref = calibrators.HistogramTopCalibrator(len(y), 15)
    ref.train_calibration(softmax(z, 1), y)
    params = posthoc.fit("hist", torch.from_numpy(z), torch.from_numpy(y), n_bins=15)
    qt = softmax(zt, 1)
    h = ref.calibrate(qt)
    assert np.abs(posthoc.hist_confidence(params, qt.max(1)) - h).max() < 1e-15
    q = probs("hist", params, zt)
    top = qt.argmax(1)
    assert np.abs(q[np.arange(len(q)), top] - h).max() < 1e-8  # the top label gets h (up to the 1e-9 tie-break)
    assert np.allclose(q.sum(1), 1)


def test_ets_weights_and_formula_are_zhang_et_als(data) -> None:
    """Their ensemble_scaling with loss='ce' (ll_w, SLSQP from (1, 0, 0), no gradient) gives the same
    weights; the calibrated q is w0·softmax(z/T) + w1·softmax(z) + w2/K by hand."""
    from scipy import optimize

    z, y, zt, _ = data
    params = posthoc.fit("ets", torch.from_numpy(z), torch.from_numpy(y))
    t = params["temperature"]
    assert t == fit_temperature(torch.from_numpy(z), torch.from_numpy(y))
    p0, p1, p2 = softmax(z / t, 1), softmax(z, 1), np.full_like(z, 1 / 5)
    onehot = np.eye(5)[y]

    def ll_w(w: np.ndarray) -> float:
        return -np.sum(onehot * np.log(w[0] * p0 + w[1] * p1 + w[2] * p2)) / len(y)

    ref = optimize.minimize(ll_w, (1.0, 0.0, 0.0), method="SLSQP", bounds=((0.0, 1.0),) * 3, tol=1e-12,
                            constraints={"type": "eq", "fun": lambda x: np.sum(x) - 1}).x
    w = np.array(params["weights"])
    assert np.abs(w - ref).max() < 1e-4 and ll_w(w) <= ll_w(ref) + 1e-10
    w0, w1, w2 = w
    expect = w0 * softmax(zt / t, 1) + w1 * softmax(zt, 1) + w2 / 5
    assert np.abs(probs("ets", params, zt) - expect).max() < 1e-12


def test_ts_is_todays_fit_and_arithmetic(data) -> None:
    z, y, zt, yt = data
    z32, zt32 = torch.from_numpy(z).float(), torch.from_numpy(zt).float()
    params = posthoc.fit("ts", z32, torch.from_numpy(y))
    assert params == {"temperature": fit_temperature(z32, torch.from_numpy(y))}
    assert compute_metrics(posthoc.apply("ts", params, zt32), torch.from_numpy(yt)) == \
        compute_metrics(zt32 / params["temperature"], torch.from_numpy(yt))


def test_posthoc_metrics_reports_each_method_and_its_argmax_changes(data) -> None:
    z, y, zt, yt = data
    val, test = (torch.from_numpy(z), torch.from_numpy(y)), (torch.from_numpy(zt), torch.from_numpy(yt))
    out, params = posthoc.posthoc_metrics(["vs", "ets", "hist", "isotonic"], val, test, 15, None, 0, 0)
    assert set(params) == {"vs", "ets", "hist", "isotonic"}
    assert out["test_ets/argmax_changed"] == 0.0  # a mixture of two softmaxes of z keeps its order
    for m in params:
        assert {f"test_{m}/{k}" for k in ("acc", "nll", "ece", "adaece", "cwece", "brier", "aurc")} <= set(out)
        moved = (probs(m, params[m], zt).argmax(1) != zt.argmax(1)).mean()
        assert out[f"test_{m}/argmax_changed"] == pytest.approx(moved)
    # vector scaling corrects the per-class bias that make_logits adds: NLL improves on the test split
    assert out["test_vs/nll"] < compute_metrics(test[0], test[1])["nll"]


def test_unknown_method_is_named() -> None:
    with pytest.raises(ValueError, match="unknown post-hoc method 'platt'"):
        posthoc.fit("platt", torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("overrides, message", [
    (["metrics.posthoc=[ts,platt]"], "metrics.posthoc=['ts', 'platt'] is invalid: a list of different names out of ts"),
    (["metrics.posthoc=[vs,vs]"], "metrics.posthoc=['vs', 'vs'] is invalid"),
    (["metrics.scores=[doctor]"], "metrics.scores=['doctor'] is invalid: a list of different names out of msp"),
    (["data.val_size=0", "metrics.temperature_scaling=false", "metrics.posthoc=[ts,dirichlet]"],
     "data.val_size=0 is invalid: must be > 0 for dirichlet (metrics.posthoc, metrics.scores: fitted on val)"),
    (["data.val_size=0", "metrics.posthoc=[]", "metrics.scores=[maxlogit_pnorm]"],
     "data.val_size=0 is invalid: must be > 0 for maxlogit_pnorm"),
])
def test_bad_posthoc_config_is_refused_in_one_line(overrides: list[str], message: str) -> None:
    from conftest import make_config
    from ls_bench.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config(*overrides)


def test_no_validation_split_without_fitted_methods_is_fine() -> None:
    from conftest import make_config

    make_config("data.val_size=0", "metrics.posthoc=[]", "metrics.scores=[msp,margin]")


def test_a_run_writes_each_method_everywhere(tmp_path) -> None:
    """final.json, the last metrics.jsonl record and posthoc.json (JSON, not pickle); test_ts/* unchanged."""
    import json

    from conftest import TINY, make_config
    from ls_bench.logs import read_jsonl
    from ls_bench.train import fit as train

    final = train(make_config(*TINY, "metrics.posthoc=[ts,vs,hist]", "metrics.scores=[maxlogit_pnorm]",
                              "metrics.figures=false"), tmp_path)
    last = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    for key in ("test_vs/ece", "test_vs/acc", "test_hist/nll", "test_vs/argmax_changed", "test/maxlogit_pnorm/aurc"):
        assert key in final and last[key] == final[key]
    assert "test_ts/ece" in final and "test_ts/ece" not in last  # ts's keys stay where they were
    saved = json.loads((tmp_path / "posthoc.json").read_text())
    assert set(saved) == {"vs", "hist", "maxlogit_pnorm"} and len(saved["vs"]["a"]) == 10
    with np.load(tmp_path / "predictions.npz") as f:
        z = torch.from_numpy(f["test_logits"])
    y = torch.from_numpy(np.load(tmp_path / "predictions.npz")["test_labels"])
    assert compute_metrics(posthoc.apply("vs", saved["vs"], z), y, top_k=5)["ece"] == final["test_vs/ece"]
