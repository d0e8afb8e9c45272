"""Evaluation suites against independent references: brute-force loops over k, averages over every
order of tied samples, hand-computed cases, scikit-learn, scipy.stats.bootstrap, and the authors'
packages (uncertainty-calibration for the debiased ECE, relplot for SmoothECE)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from conftest import random_logits
from ls_bench.evaluate.metrics import ece
from ls_bench.evaluate.selective import (
    _bootstrap_eces,
    bootstrap_ece,
    debiased_ece,
    ece_floor,
    equal_mass_edges,
    evaluate_split,
    ood_metrics,
    ood_scores,
    paired_bootstrap_ece_diff,
    risk_coverage,
    selective_metrics,
    smooth_ece,
)


def np_conf_correct(z: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Max softmax probability and correctness with scipy, not ls_bench."""
    p = scipy.special.softmax(z.double().numpy(), axis=1)
    return p.max(1), (p.argmax(1) == y.numpy()).astype(float)


def miscalibrated(n: int, seed: int, shift: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """conf ~ U(0.4, 1), correct ~ Bernoulli(conf - shift): over-confident by `shift`."""
    g = torch.Generator().manual_seed(seed)
    conf = 0.4 + 0.6 * torch.rand(n, generator=g, dtype=torch.float64)
    correct = (torch.rand(n, generator=g, dtype=torch.float64) < conf - shift).double()
    return conf, correct


# --- selective classification ---------------------------------------------------------------------


def loop_risks(conf_sorted_errors: list[int]) -> list[float]:
    """risk(k) for k = 1..n of samples already in decreasing confidence: errors among the first k / k."""
    return [sum(conf_sorted_errors[:k]) / k for k in range(1, len(conf_sorted_errors) + 1)]


@pytest.mark.parametrize("n", [500, 503])
def test_selective_metrics_match_a_loop_without_ties(n: int) -> None:
    z, y = random_logits(n, 10, seed=n)
    conf, correct = np_conf_correct(z, y)
    assert len(np.unique(conf)) == n  # no ties: the plain sorted order is the only order
    errors = [1 - int(c) for c in correct[np.argsort(-conf)]]
    risks = loop_risks(errors)
    optimal = loop_risks(sorted(errors))  # every correct sample first
    k80 = math.ceil(Fraction(4, 5) * n)  # exact rational ceil: 400 for n = 500, 403 for n = 503
    got = selective_metrics(z, y)
    assert got["aurc"] == pytest.approx(sum(risks) / n, abs=1e-12)
    assert got["eaurc"] == pytest.approx(sum(risks) / n - sum(optimal) / n, abs=1e-12)
    assert got["risk_cov80"] == pytest.approx(risks[k80 - 1], abs=1e-15)
    cov, risk = risk_coverage(torch.from_numpy(conf), torch.from_numpy(correct))
    assert torch.equal(cov, torch.arange(1, n + 1, dtype=torch.float64) / n)
    np.testing.assert_allclose(risk.numpy(), risks, rtol=0, atol=1e-15)


def test_risk_with_ties_is_the_average_over_all_orders_of_the_tied_samples() -> None:
    # Two tie blocks (four samples at 0.7, two at 0.4): 4! · 2! = 48 orders, each equally likely.
    conf = torch.tensor([0.9, 0.7, 0.7, 0.7, 0.7, 0.4, 0.4, 0.2], dtype=torch.float64)
    correct = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.float64)
    err = [1 - int(c) for c in correct]
    curves = []
    for block1 in itertools.permutations([1, 2, 3, 4]):
        for block2 in itertools.permutations([5, 6]):
            curves.append(loop_risks([err[i] for i in (0, *block1, *block2, 7)]))
    expected = np.mean(curves, axis=0)
    _, risk = risk_coverage(conf, correct)
    np.testing.assert_allclose(risk.numpy(), expected, rtol=0, atol=1e-15)
    # The value does not depend on the order the samples come in.
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(risk_coverage(conf[perm], correct[perm])[1], risk)


def test_selective_metrics_hand_made_case_with_ties() -> None:
    # Two classes, logits [d, 0]: conf = sigmoid(d), class 0 predicted; label 1 marks an error.
    # By decreasing confidence: d = 3 (right), a tie of three at d = 2 (one right, two wrong),
    # d = 0.5 (wrong). Expected errors among the first k (tie: each member carries 2/3 error):
    #   k=1: 0        risk 0
    #   k=2: 2/3      risk 1/3
    #   k=3: 4/3      risk 4/9
    #   k=4: 2        risk 1/2
    #   k=5: 3        risk 3/5
    # AURC = (0 + 1/3 + 4/9 + 1/2 + 3/5) / 5 = (169/90) / 5 = 169/450.
    # Perfect ranking (2 right then 3 wrong): risks 0, 0, 1/3, 2/4, 3/5 -> AURC* = (43/30)/5 = 43/150,
    # so E-AURC = 169/450 - 129/450 = 4/45. Coverage 80% of 5 is k = 4: risk 1/2.
    d = torch.tensor([2.0, 0.5, 2.0, 3.0, 2.0])
    labels = torch.tensor([1, 1, 0, 0, 1])
    z = torch.stack([d, torch.zeros(5)], dim=1)
    got = selective_metrics(z, labels)
    assert got["aurc"] == pytest.approx(169 / 450, abs=1e-15)
    assert got["eaurc"] == pytest.approx(4 / 45, abs=1e-15)
    assert got["risk_cov80"] == pytest.approx(1 / 2, abs=1e-15)


def test_perfect_ranking_has_zero_eaurc_and_the_closed_form_aurc() -> None:
    # 700 right predictions, all more confident than the 300 wrong ones.
    n, n_err = 1000, 300
    d = torch.cat([torch.linspace(3, 5, n - n_err), torch.linspace(0.1, 2, n_err)])
    labels = torch.cat([torch.zeros(n - n_err, dtype=torch.long), torch.ones(n_err, dtype=torch.long)])
    got = selective_metrics(torch.stack([d, torch.zeros(n)], dim=1), labels)
    assert got["eaurc"] == pytest.approx(0.0, abs=1e-15)
    # Geifman et al. 2019's continuous approximation r + (1-r)·ln(1-r) of the optimal AURC; the exact
    # (1/n) Σ_{k > n_c} (1 - n_c/k) = r - (1-r)(H_n - H_{n_c}) is larger by r/(2n) + O(1/n²)
    # (H_n = ln n + γ + 1/(2n) - ...).
    r = n_err / n
    assert got["aurc"] == pytest.approx(r + (1 - r) * math.log(1 - r) + r / (2 * n), abs=1e-6)
    assert got["risk_cov80"] == pytest.approx((800 - 700) / 800, abs=1e-15)


def test_all_correct_has_zero_risk_and_all_wrong_has_zero_excess() -> None:
    z, _ = random_logits(300, 10, seed=1)
    pred = z.argmax(1)
    right = selective_metrics(z, pred)
    assert right == {"aurc": 0.0, "eaurc": 0.0, "risk_cov80": 0.0}
    wrong = selective_metrics(z, (pred + 1) % 10)
    assert wrong["aurc"] == pytest.approx(1.0, abs=1e-15)
    assert wrong["eaurc"] == pytest.approx(0.0, abs=1e-15)  # no ranking can do better


# --- OOD detection ----------------------------------------------------------------------------------


def test_ood_scores_match_scipy() -> None:
    z, _ = random_logits(200, 10, seed=2)
    zn = z.double().numpy()
    got = ood_scores(z)
    np.testing.assert_allclose(got["msp"].numpy(), scipy.special.softmax(zn, axis=1).max(1), rtol=1e-13)
    np.testing.assert_array_equal(got["max_logit"].numpy(), zn.max(1))
    np.testing.assert_allclose(got["energy"].numpy(), scipy.special.logsumexp(zn, axis=1), rtol=1e-13)
    # Energy is logsumexp, not its negative: a confident in-distribution row scores higher.
    assert float(ood_scores(torch.tensor([[10.0, 0.0]]))["energy"][0]) > \
        float(ood_scores(torch.tensor([[0.0, 0.0]]))["energy"][0])


def test_ood_metrics_hand_made() -> None:
    # ID 1..20: TPR(t) >= 0.95 needs 19 of the 20 ID scores >= t, so t = 2 (the 19th largest);
    # OOD scores >= 2 are 2, 2.5 and 30: FPR95 = 3/5.
    s_in = torch.arange(1, 21, dtype=torch.float64)
    s_out = torch.tensor([0.5, 1.5, 2.0, 2.5, 30.0], dtype=torch.float64)
    assert ood_metrics(s_in, s_out)["fpr95"] == pytest.approx(3 / 5, abs=1e-15)
    # 18 ID at 3 and 2 at 1: TPR(3) = 0.90 < 0.95, so t = 1 and OOD {1, 2, 3} pass: 3/4.
    s_out = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    assert ood_metrics(torch.tensor([3.0] * 18 + [1.0] * 2), s_out)["fpr95"] == pytest.approx(3 / 4, abs=1e-15)
    # 19 ID at 3 and 1 at 1: TPR(3) = 0.95 exactly reaches it, t = 3, only OOD 3 passes: 1/4.
    assert ood_metrics(torch.tensor([3.0] * 19 + [1.0]), s_out)["fpr95"] == pytest.approx(1 / 4, abs=1e-15)
    # ID 1..23: 0.95 · 23 = 21.85 is not whole, so 22 ID scores must pass: t = 2; OOD {2, 3} of 3 pass.
    s_in = torch.arange(1, 24, dtype=torch.float64)
    assert ood_metrics(s_in, torch.tensor([1.5, 2.0, 3.0]))["fpr95"] == pytest.approx(2 / 3, abs=1e-15)
    # AUROC of ID {2, 1} vs OOD {1, 0}: pairs 2>1, 2>0, 1=1 (counts 1/2), 1>0 -> 3.5 / 4.
    # AUPR-in: thresholds 2 (P = 1, R = 1/2) and 1 (ID 1 and OOD 1 enter together: P = 2/3, R = 1)
    # -> 1/2 · 1 + 1/2 · 2/3 = 5/6.
    got = ood_metrics(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]))
    assert got["auroc"] == pytest.approx(0.875, abs=1e-15)
    assert got["aupr_in"] == pytest.approx(5 / 6, abs=1e-15)


# --- ECE bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_eces_centre_on_the_plug_in_ece_and_the_interval_holds_it() -> None:
    conf, correct = miscalibrated(3000, seed=3)
    plug_in = ece(conf, correct, 15)
    eces = _bootstrap_eces([(conf, correct)], 15, 1000, seed=0)[0]
    # Far from calibration the |.| in every bin is locally linear: no bootstrap bias to speak of,
    # so the mean is within Monte-Carlo error (sd / sqrt(1000) = 0.03 sd) of the plug-in.
    assert abs(float(eces.mean()) - plug_in) < 0.15 * float(eces.std())
    lo, hi = bootstrap_ece(conf, correct, 15, 1000, seed=0)
    assert lo < plug_in < hi
    # The interval is ±1.96 sd wide for this near-normal statistic (not a 68% or 99% interval).
    assert (hi - lo) / float(eces.std()) == pytest.approx(2 * 1.96, rel=0.1)


def numpy_ece(conf: np.ndarray, correct: np.ndarray, axis: int = -1, n_bins: int = 15) -> np.ndarray:
    """ECE along the last axis with bins ((m-1)/M, m/M] (searchsorted side='left'), in numpy."""
    bins = np.searchsorted(np.arange(1, n_bins) / n_bins, conf, side="left")
    gap = correct - conf
    return sum(np.abs(np.where(bins == m, gap, 0.0).sum(axis)) for m in range(n_bins)) / conf.shape[axis]


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap() -> None:
    conf, correct = miscalibrated(1000, seed=4, shift=0.05)
    c, y = conf.numpy(), correct.numpy()
    assert numpy_ece(c, y) == pytest.approx(ece(conf, correct, 15), abs=1e-12)  # the reference statistic
    ref = scipy.stats.bootstrap((c, y), numpy_ece, paired=True, vectorized=True, n_resamples=5000, batch=500,
                                method="percentile", confidence_level=0.95, rng=np.random.default_rng(0))
    lo, hi = bootstrap_ece(conf, correct, 15, 5000, seed=0)
    # Each end is a 2.5% quantile of 5000 draws: Monte-Carlo sd ≈ 0.038 bootstrap sd per estimate,
    # 0.054 sd for the difference of two; 0.2 sd is ~3.7 of those.
    sd = ref.standard_error
    assert abs(lo - ref.confidence_interval.low) < 0.2 * sd
    assert abs(hi - ref.confidence_interval.high) < 0.2 * sd


def test_bootstrap_bins_confidences_on_an_edge_like_metrics_ece() -> None:
    # 500 samples at conf 0.6 (= 3/5, an edge of 5 bins: in bin (0.4, 0.6]), all right, gap +0.4;
    # 500 at 0.7 (bin (0.6, 0.8]), all wrong, gap -0.7. In separate bins a resample with a share f of
    # the first group has ECE = 0.4 f + 0.7 (1 - f), f ~ Binomial(1000, 1/2) / 1000; were 0.6 binned
    # with 0.7 (bins [0.6, 0.8)), the ECE would be |0.4 f - 0.7 (1 - f)| ≈ 0.15.
    conf = torch.tensor([0.6] * 500 + [0.7] * 500, dtype=torch.float64)
    correct = torch.tensor([1.0] * 500 + [0.0] * 500, dtype=torch.float64)
    assert ece(conf, correct, 5) == pytest.approx(0.55, abs=1e-12)
    lo, hi = bootstrap_ece(conf, correct, 5, 2000, seed=0)
    f_lo, f_hi = scipy.stats.binom.ppf([0.025, 0.975], 1000, 0.5) / 1000
    # Sd of the ECE over resamples: 0.3 · sqrt(0.25 / 1000) = 0.0047; 0.0015 is ~5 Monte-Carlo sd.
    assert lo == pytest.approx(0.7 - 0.3 * f_hi, abs=1.5e-3)
    assert hi == pytest.approx(0.7 - 0.3 * f_lo, abs=1.5e-3)


def test_bootstrap_seed_fixes_the_interval() -> None:
    conf, correct = miscalibrated(500, seed=5)
    a = bootstrap_ece(conf, correct, 15, 300, seed=7)
    assert bootstrap_ece(conf, correct, 15, 300, seed=7) == a
    assert bootstrap_ece(conf, correct, 15, 300, seed=8) != a
    assert bootstrap_ece(conf, correct, 15, 300, seed=7, level=0.5) != a


def test_paired_difference_of_a_model_with_itself_is_exactly_zero() -> None:
    conf, correct = miscalibrated(800, seed=6)
    assert paired_bootstrap_ece_diff(conf, correct, conf, correct, 15, 250, seed=0) == \
        {"mean": 0.0, "lo": 0.0, "hi": 0.0}


def test_paired_difference_finds_the_worse_model_and_pairs_the_samples() -> None:
    # Calibrated predictions made over-confident by 0.10 (a) and by 0.05 (b), on the same samples:
    # a is the worse model, and both ECEs move with the same sampling noise of `correct`.
    g = torch.Generator().manual_seed(9)
    conf = 0.3 + 0.6 * torch.rand(2000, generator=g, dtype=torch.float64)
    correct = (torch.rand(2000, generator=g, dtype=torch.float64) < conf).double()
    conf_a, conf_b = conf + 0.10, conf + 0.05
    got = paired_bootstrap_ece_diff(conf_a, correct, conf_b, correct, 15, 1000, seed=0)
    assert 0 < got["lo"] < got["mean"] < got["hi"]
    assert got["mean"] == pytest.approx(ece(conf_a, correct, 15) - ece(conf_b, correct, 15), abs=0.005)
    # Unpaired resamples (independent seeds per model) give a much wider interval: the pairing
    # cancels the sampling noise the two models share.
    ua = _bootstrap_eces([(conf_a, correct)], 15, 1000, seed=1)[0]
    ub = _bootstrap_eces([(conf_b, correct)], 15, 1000, seed=2)[0]
    unpaired = torch.quantile(ua - ub, torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert got["hi"] - got["lo"] < 0.5 * float(unpaired[1] - unpaired[0])


# --- debiased ECE (Kumar, Liang & Ma 2019) -----------------------------------------------------------


@pytest.mark.parametrize("n, n_bins", [(1000, 15), (1003, 15), (50, 15), (10, 15), (997, 7)])
def test_equal_mass_edges_are_the_packages(n: int, n_bins: int) -> None:
    calibration = pytest.importorskip("calibration")
    conf, _ = miscalibrated(n, seed=n)
    conf = conf.round(decimals=2)  # ties, some across the split points
    edges = equal_mass_edges(conf, n_bins)
    np.testing.assert_array_equal(edges.numpy(), calibration.get_equal_bins(list(conf.numpy()), num_bins=n_bins))


def _probs(n: int, k: int, seed: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    z, y = random_logits(n, k, seed=seed, scale=scale)
    return scipy.special.softmax(z.double().numpy(), axis=1), y.numpy()


def test_debiased_ece_matches_the_package_estimator_with_many_draws() -> None:
    calibration = pytest.importorskip("calibration")
    # 600 samples in 15 bins of 40: the plug-in's noise floor is large, so is the correction.
    probs, labels = _probs(600, 10, seed=10, scale=1.0)
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(float)
    bins = calibration.get_equal_bins(list(conf), num_bins=15)
    binned = calibration.bin(list(zip(conf, correct)), bins)
    plug_in = calibration.plugin_ce(binned, power=1)
    np.random.seed(0)
    # Their estimator with 40000 Gaussian draws instead of 1000 (Monte-Carlo sd ~ 1e-4).
    ref = calibration.normal_debiased_ce(binned, power=1, resamples=40_000)
    got = debiased_ece(torch.from_numpy(conf), torch.from_numpy(correct), 15)
    assert abs(ref - plug_in) > 0.005  # a correction worth testing
    assert got == pytest.approx(ref, abs=5e-4)


@pytest.mark.parametrize("scale, seed", [(1.0, 11), (3.0, 12)])
def test_debiased_ece_matches_get_calibration_error(scale: float, seed: int) -> None:
    calibration = pytest.importorskip("calibration")
    probs, labels = _probs(3000, 10, seed=seed, scale=scale)
    np.random.seed(seed)
    ref = calibration.get_calibration_error(probs, labels, p=1, debias=True, mode="top-label")
    plug_in = calibration.get_calibration_error(probs, labels, p=1, debias=False, mode="top-label")
    conf = torch.from_numpy(probs.max(1))
    correct = torch.from_numpy((probs.argmax(1) == labels).astype(float))
    got = debiased_ece(conf, correct)
    # Their 1000 draws: Monte-Carlo sd of the correction <= 3e-4 here; 1.5e-3 is 5 of those.
    assert got == pytest.approx(ref, abs=1.5e-3)
    if scale == 1.0:
        assert plug_in - got > 2e-3  # near calibration the plug-in overshoots: a real correction
    else:
        # Far from calibration every bin's gap is many sd from 0, E|N(mu, s^2)| = |mu|: no correction.
        assert abs(got - plug_in) < 1e-4


# --- SmoothECE (Błasiok & Nakkiran 2023) ------------------------------------------------------------


@pytest.mark.parametrize("n, scale, seed", [(5000, 3.0, 13), (20000, 1.0, 14), (40, 2.0, 15)])
def test_smooth_ece_matches_relplot(n: int, scale: float, seed: int) -> None:
    relplot = pytest.importorskip("relplot")
    z, y = random_logits(n, 10, seed=seed, scale=scale)
    conf, correct = np_conf_correct(z, y)
    ref = relplot.smECE(conf, correct)
    assert smooth_ece(torch.from_numpy(conf), torch.from_numpy(correct)) == pytest.approx(float(ref), abs=1e-12)


def test_smooth_ece_matches_relplot_when_calibrated() -> None:
    # A calibrated model: the bandwidth search goes down to a narrow kernel (fine grids, 10^4+ points).
    relplot = pytest.importorskip("relplot")
    g = torch.Generator().manual_seed(16)
    conf = torch.rand(20000, generator=g, dtype=torch.float64)
    correct = (torch.rand(20000, generator=g, dtype=torch.float64) < conf).double()
    ref, width = relplot.smECE(conf.numpy(), correct.numpy(), return_width=True)
    assert width < 0.02
    assert smooth_ece(conf, correct) == pytest.approx(float(ref), abs=1e-12)


# --- evaluate_split -----------------------------------------------------------------------------------


def test_evaluate_split_reports_each_metric_under_its_name() -> None:
    z, y = random_logits(2000, 10, seed=17)
    conf, correct = (torch.from_numpy(a) for a in np_conf_correct(z, y))
    got = evaluate_split(z, y, n_bins=15, bootstrap=200, seed=3)
    assert set(got) == {"aurc", "eaurc", "risk_cov80", "ece_lo", "ece_hi", "ece_floor", "dece", "smece"}
    assert all(isinstance(v, float) for v in got.values())
    sel = selective_metrics(z, y)
    assert {k: got[k] for k in sel} == pytest.approx(sel, abs=1e-15)
    assert (got["ece_lo"], got["ece_hi"]) == pytest.approx(bootstrap_ece(conf, correct, 15, 200, seed=3), abs=1e-15)
    assert got["dece"] == pytest.approx(debiased_ece(conf, correct, 15), abs=1e-15)
    assert got["smece"] == pytest.approx(smooth_ece(conf, correct), abs=1e-15)
    assert set(evaluate_split(z, y, n_bins=15, bootstrap=0, seed=3)) == {"aurc", "eaurc", "risk_cov80", "dece",
                                                                        "smece"}


def test_bad_inputs_fail_with_a_message() -> None:
    z, y = random_logits(100, 10, seed=18)
    with pytest.raises(ValueError, match="bootstrap"):
        evaluate_split(z, y, n_bins=15, bootstrap=-1, seed=0)
    with pytest.raises(ValueError, match="labels"):
        evaluate_split(z, y[:50], n_bins=15, bootstrap=0, seed=0)
    conf = torch.rand(10, dtype=torch.float64)
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap_ece_diff(conf, conf.round(), conf[:5], conf[:5].round(), 15, 10, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics(torch.tensor([1.0, float("nan")]), torch.tensor([0.0]))


# --- ECE's noise floor ------------------------------------------------------------------------------


def test_ece_floor_of_two_coin_flips_is_a_quarter() -> None:
    """Two samples at confidence 0.5 in one bin: ECE = |Σ (correct - 0.5)| / 2 is 0.5 when both
    draws agree (probability 1/2) and 0 otherwise, so its expectation is 1/4 (sd of the mean of
    20,000 draws: 0.0018)."""
    assert ece_floor(torch.tensor([0.5, 0.5], dtype=torch.float64), 15, 20_000, seed=0) == pytest.approx(0.25, abs=0.01)


def test_ece_floor_is_the_mean_ece_of_labels_drawn_from_the_confidences() -> None:
    conf = torch.rand(300, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.7 + 0.3
    # The same draws, chunked by 100 as the function does (its generator is consumed chunk by chunk).
    g = torch.Generator().manual_seed(7)
    draws = torch.cat([torch.rand(100, 300, generator=g, dtype=torch.float64),
                       torch.rand(50, 300, generator=g, dtype=torch.float64)])
    ref = float(np.mean([ece(conf, (d < conf).double(), 15) for d in draws]))
    assert ece_floor(conf, 15, 150, seed=7) == pytest.approx(ref, abs=1e-12)


def test_ece_floor_falls_with_the_number_of_samples() -> None:
    """The sampling bias of ECE shrinks like 1/sqrt(N): ~4x lower at 16x the samples."""
    g = torch.Generator().manual_seed(3)
    small, large = (torch.rand(n, generator=g, dtype=torch.float64) * 0.8 + 0.2 for n in (500, 8000))
    f_small, f_large = ece_floor(small, 15, 200, 0), ece_floor(large, 15, 200, 0)
    assert 0.03 < f_small < 0.08 and 2.5 < f_small / f_large < 6

