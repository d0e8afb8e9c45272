"""Metrics against independent references: torchmetrics, scikit-learn, PyTorch built-ins,
hand-computed cases, loop implementations of the papers' definitions, and sanity properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss, top_k_accuracy_score
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from conftest import make_config, random_logits
from ls_bench.errors import ConfigError
from ls_bench.evaluate.metrics import (
    adaptive_bin_index,
    adaptive_ece,
    bin_index,
    calibration_bins,
    classwise_ece,
    compute_metrics,
    ece,
    mce,
)


def conf_correct(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    conf, pred = z.double().softmax(1).max(1)
    return conf, (pred == y).double()


def loop_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[float, float]:
    """ECE and MCE exactly as written in Guo et al. 2017's code: bins (lo, hi], one loop per bin
    (plus conf = 0 in the first bin, which their code drops)."""
    edges = np.arange(n_bins + 1) / n_bins
    total, worst = 0.0, 0.0
    for m in range(n_bins):
        in_bin = (conf > edges[m]) & (conf <= edges[m + 1]) | ((m == 0) & (conf == 0))
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - conf[in_bin].mean())
            total += in_bin.mean() * gap
            worst = max(worst, gap)
    return total, worst


# --- torchmetrics ------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 5, 15, 23])
@pytest.mark.parametrize("k", [2, 10, 100])
def test_ece_and_mce_agree_with_torchmetrics(k: int, n_bins: int) -> None:
    z, y = random_logits(1000, k, seed=k * 100 + n_bins)
    conf, correct = conf_correct(z, y)
    # Where torchmetrics' binning is right: no confidence on an edge (its bins are [lo, hi)) and none
    # exactly 1.0 (it puts those in a hidden extra bin, Lightning-AI/torchmetrics#3510).
    assert not torch.isin(conf, torch.arange(n_bins + 1, dtype=torch.float64) / n_bins).any()
    got = compute_metrics(z, y, n_bins)
    for norm, mine in (("l1", got["ece"]), ("max", got["mce"])):
        # The multiclass metric sums in float32 (1e-6 holds up to N ~ 1000 in one bin) ...
        ref = multiclass_calibration_error(z.double().softmax(1), y, num_classes=k, n_bins=n_bins, norm=norm)
        assert mine == pytest.approx(float(ref), abs=1e-6), norm
        # ... the binary one on (confidence, correct) is the same top-label ECE, summed in float64.
        ref64 = binary_calibration_error(conf, correct.long(), n_bins=n_bins, norm=norm)
        assert mine == pytest.approx(float(ref64), abs=1e-12), norm
    ref_ece, ref_mce = loop_ece(conf.numpy(), correct.numpy(), n_bins)
    assert got["ece"] == pytest.approx(ref_ece, abs=1e-12)
    assert got["mce"] == pytest.approx(ref_mce, abs=1e-12)


def test_confidence_one_goes_to_the_last_bin_unlike_torchmetrics() -> None:
    # Two predictions, both in the last of 15 bins (14/15, 1]: conf 1.0 wrong, conf 0.95 right.
    conf = torch.tensor([1.0, 0.95], dtype=torch.float64)
    correct = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # One bin: acc 0.5, mean confidence 0.975 -> ECE = MCE = 0.475.
    assert ece(conf, correct, 15) == pytest.approx(0.475, abs=1e-15)
    assert mce(conf, correct, 15) == pytest.approx(0.475, abs=1e-15)
    # torchmetrics counts 1.0 in a hidden 16th bin: 0.5·0.05 + 0.5·1.0 = 0.525, max 1.0.
    assert float(binary_calibration_error(conf, correct.long(), n_bins=15)) == pytest.approx(0.525, abs=1e-6)
    assert float(binary_calibration_error(conf, correct.long(), n_bins=15, norm="max")) == pytest.approx(1.0)


# --- bin rule and hand-computed cases ------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 3, 10, 15, 49])
def test_bin_rule_edges_go_to_the_bin_below(n_bins: int) -> None:
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins  # 0, 1/M, ..., 1 as float64
    expected = torch.tensor([0] + list(range(n_bins)))  # 0 -> bin 0; m/M -> bin m-1; 1 -> bin M-1
    assert torch.equal(bin_index(edges, n_bins), expected)
    just_above = torch.nextafter(edges[:-1], torch.tensor(2.0, dtype=torch.float64))
    assert torch.equal(bin_index(just_above, n_bins), torch.arange(n_bins))
    f32 = bin_index(edges.float(), n_bins)  # float32 confidences use float32 edges the same way
    assert torch.equal(f32, expected)


def test_hand_computed_ece_mce_adaece() -> None:
    # M = 2 bins (0, 0.5], (0.5, 1]. Bin 1: conf 0.3, 0.5 with correct 0, 1 -> acc 0.5, conf 0.4.
    # Bin 2: conf 0.6, 0.9, 1.0 with correct 1, 0, 1 -> acc 2/3, conf 2.5/3.
    conf = torch.tensor([0.3, 0.5, 0.6, 0.9, 1.0], dtype=torch.float64)
    correct = torch.tensor([0, 1, 1, 0, 1], dtype=torch.float64)
    gap1, gap2 = abs(0.5 - 0.4), abs(2 / 3 - 2.5 / 3)
    assert ece(conf, correct, 2) == pytest.approx(2 / 5 * gap1 + 3 / 5 * gap2, abs=1e-15)
    assert mce(conf, correct, 2) == pytest.approx(max(gap1, gap2), abs=1e-15)
    assert calibration_bins(conf, correct, 2) == {"acc": pytest.approx([0.5, 2 / 3]),
                                                  "conf": pytest.approx([0.4, 2.5 / 3]), "count": [2.0, 3.0]}
    # AdaECE, M = 2 equal-mass bins by rank: floor(2·r/5) -> ranks 0,1,2 | 3,4.
    # {0.3, 0.5, 0.6}: acc 2/3, conf 1.4/3; {0.9, 1.0}: acc 1/2, conf 0.95.
    ada = 3 / 5 * abs(2 / 3 - 1.4 / 3) + 2 / 5 * abs(0.5 - 0.95)
    assert adaptive_ece(conf, correct, 2) == pytest.approx(ada, abs=1e-15)


def test_mce_ignores_empty_bins_and_ece_weights_by_count() -> None:
    conf = torch.tensor([0.95] * 9 + [0.55], dtype=torch.float64)
    correct = torch.tensor([1.0] * 9 + [0.0], dtype=torch.float64)
    # 10 bins: (0.9, 1] holds 9 with gap 0.05, (0.5, 0.6] holds 1 with gap 0.55; 8 bins empty.
    assert ece(conf, correct, 10) == pytest.approx(0.9 * 0.05 + 0.1 * 0.55, abs=1e-15)
    assert mce(conf, correct, 10) == pytest.approx(0.55, abs=1e-15)


def test_classwise_ece_hand_computed() -> None:
    # K = 3, M = 2 bins (0, .5], (.5, 1]. Rows q and labels:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    # class 0: high bin {0.7 (y=1), 0.6 (y=0)} -> |1 - 1.3| = 0.3; low bin {0.2 (y=0)} -> 0.2. Sum 0.5
    # class 1: low bin {0.2 (0), 0.3 (1), 0.2 (0)} -> |1 - 0.7| = 0.3.
    # class 2: low bin {0.1 (0), 0.1 (0)} -> 0.2; high bin {0.6 (1)} -> 0.4. Sum 0.6
    # cw-ECE = (1/K) Σ_k Σ_m |B|/N |ȳ - q̄| = Σ |Σ(y - q)| / (N K) = (0.5 + 0.3 + 0.6) / 9
    assert classwise_ece(probs, labels, 2) == pytest.approx(1.4 / 9, abs=1e-15)


def loop_classwise_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Kull et al. 2019, Eq. for classwise-ECE, written as loops over classes and bins."""
    n, k = probs.shape
    total = 0.0
    for j in range(k):
        p, y = probs[:, j], (labels == j).astype(float)
        for lo_, hi_ in zip(np.arange(n_bins) / n_bins, np.arange(1, n_bins + 1) / n_bins):
            in_bin = (p > lo_) & (p <= hi_) | ((lo_ == 0) & (p == 0))
            if in_bin.any():
                total += in_bin.sum() / n * abs(y[in_bin].mean() - p[in_bin].mean())
    return total / k


@pytest.mark.parametrize("k", [3, 10])
def test_classwise_ece_matches_the_definition_as_loops(k: int) -> None:
    z, y = random_logits(1500, k, seed=k)
    probs = z.double().softmax(1)
    got = compute_metrics(z, y, 15)["cwece"]
    assert got == pytest.approx(loop_classwise_ece(probs.numpy(), y.numpy(), 15), abs=1e-12)


# --- AdaECE equal-mass bins ----------------------------------------------------------------------


@pytest.mark.parametrize("n,m", [(100, 15), (1000, 15), (31, 7), (10, 15), (45, 15)])
def test_adaptive_bins_have_equal_mass(n: int, m: int) -> None:
    conf = torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    idx = adaptive_bin_index(conf, m)
    sizes = torch.bincount(idx, minlength=m)
    assert sizes.sum() == n and int(sizes.max() - sizes.min()) <= 1
    order = conf.argsort()  # bins are contiguous in confidence and ordered
    assert torch.all(idx[order].diff() >= 0)


def test_adaece_matches_array_split_reference_when_m_divides_n() -> None:
    z, y = random_logits(1500, 10, seed=3)
    conf, correct = conf_correct(z, y)
    order = np.argsort(conf.numpy())
    ref = sum(len(b) / 1500 * abs(correct.numpy()[b].mean() - conf.numpy()[b].mean())
              for b in np.array_split(order, 15))
    assert compute_metrics(z, y, 15)["adaece"] == pytest.approx(ref, abs=1e-12)


def test_adaece_keeps_ties_together_and_ignores_sample_order() -> None:
    # Half the samples share confidence 1.0 (typical of over-confident float32 softmax).
    g = torch.Generator().manual_seed(0)
    conf = torch.cat([torch.ones(50, dtype=torch.float64), torch.rand(50, generator=g, dtype=torch.float64) * 0.9])
    correct = (torch.rand(100, generator=g) < 0.8).double()
    idx = adaptive_bin_index(conf, 15)
    assert idx[:50].unique().numel() == 1  # the tie is one bin
    values, naive = [], set()
    for seed in range(5):
        perm = torch.randperm(100, generator=torch.Generator().manual_seed(seed))
        values.append(adaptive_ece(conf[perm], correct[perm], 15))
        # Splitting by position in a stable sort (ties cut across bins) depends on the order:
        chunks = np.array_split(np.argsort(conf[perm].numpy(), kind="stable"), 15)
        c, a = conf[perm].numpy(), correct[perm].numpy()
        naive.add(round(sum(len(b) / 100 * abs(a[b].mean() - c[b].mean()) for b in chunks), 12))
    assert max(values) - min(values) < 1e-15
    assert len(naive) > 1  # so this data does exercise the tie rule


# --- the other metrics against references ---------------------------------------------------------


def test_nll_brier_entropy_topk_against_references() -> None:
    z, y = random_logits(2000, 20, seed=11)
    got = compute_metrics(z, y, 15, top_k=5)
    probs = z.double().softmax(1).numpy()
    assert got["nll"] == pytest.approx(log_loss(y.numpy(), probs, labels=list(range(20))), abs=1e-10)
    assert got["nll"] == pytest.approx(float(F.cross_entropy(z.double(), y)), abs=1e-12)
    onehot = np.eye(20)[y.numpy()]
    assert got["brier"] == pytest.approx(((probs - onehot) ** 2).sum(1).mean(), abs=1e-12)
    ent = torch.distributions.Categorical(logits=z.double()).entropy().mean()
    assert got["entropy"] == pytest.approx(float(ent), abs=1e-12)
    assert got["top5"] == pytest.approx(top_k_accuracy_score(y.numpy(), z.numpy(), k=5, labels=list(range(20))))
    assert got["acc"] == pytest.approx(float((z.argmax(1) == y).double().mean()))
    assert got["conf"] == pytest.approx(probs.max(1).mean(), abs=1e-12)
    assert got["gap"] == pytest.approx(got["conf"] - got["acc"], abs=1e-15)
    assert compute_metrics(z, y, 15, top_k=1)["top1"] == got["acc"]  # same tie rule as argmax


def test_topk_counts_ties_like_argmax() -> None:
    z = torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    y = torch.tensor([2, 2])
    # Row 0: all tied, argmax is class 0; label 2 has rank 2 -> in top-3 only. Row 1: rank 2 too.
    assert compute_metrics(z, y, top_k=2)["top2"] == 0.0
    assert compute_metrics(z, y, top_k=3)["top3"] == 1.0
    assert compute_metrics(z, torch.tensor([0, 0]), top_k=1)["top1"] == 1.0


def test_metrics_are_computed_in_float64() -> None:
    # Shifting every logit of a row by a constant changes nothing; float32 arithmetic would drift.
    z, y = random_logits(20000, 10, seed=5)
    a, b = compute_metrics(z, y), compute_metrics(z.double() + 1000.0, y)
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-9), key


# --- sanity properties ----------------------------------------------------------------------------


def calibrated_sample(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K = 2 predictions that are calibrated by construction: the label is 1 with probability sigmoid(z)."""
    g = torch.Generator().manual_seed(seed)
    z = 4 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(z[:, 0])).long()
    return torch.cat([torch.zeros_like(z), z], 1), y


def test_calibrated_predictions_have_small_ece_shrinking_with_n() -> None:
    mean_ece = {}
    for n in (500, 5000, 50000):
        vals = [compute_metrics(*calibrated_sample(n, seed)) for seed in range(5)]
        mean_ece[n] = {k: np.mean([v[k] for v in vals]) for k in ("ece", "adaece", "cwece")}
    for key in ("ece", "adaece", "cwece"):
        assert mean_ece[500][key] > mean_ece[5000][key] > mean_ece[50000][key], key
        assert mean_ece[50000][key] < 0.01, key
    over = calibrated_sample(50000, 0)
    assert compute_metrics(over[0] * 3, over[1])["ece"] > 0.05  # the same predictions made over-confident


def test_all_correct_confidence_one_has_zero_calibration_error() -> None:
    y = torch.arange(1000) % 10
    z = torch.full((1000, 10), -100.0)
    z[torch.arange(1000), y] = 100.0  # softmax = exactly 1.0 in float64
    got = compute_metrics(z, y, 15, top_k=5)
    assert got["conf"] == 1.0 and got["acc"] == 1.0
    assert got["ece"] == got["mce"] == got["adaece"] == got["gap"] == 0.0
    assert got["cwece"] < 1e-80 and got["brier"] < 1e-80 and got["nll"] < 1e-80


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_are_rejected_naming_the_row(value: float) -> None:
    z, y = random_logits(10, 3, seed=0)
    z[4, 1] = value
    with pytest.raises(ValueError, match=r"NaN or Inf in 1 of 10 rows \(first: row 4\)"):
        compute_metrics(z, y)


@pytest.mark.parametrize("bad_label", [-1, 3, 99])
def test_labels_outside_range_are_rejected(bad_label: int) -> None:
    z, y = random_logits(10, 3, seed=0)
    y[2] = bad_label
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        compute_metrics(z, y)


def test_malformed_inputs_are_rejected() -> None:
    z, y = random_logits(10, 3, seed=0)
    with pytest.raises(ValueError, match="logits \\[N, K\\] and labels \\[N\\]"):
        compute_metrics(z, y[:5])
    with pytest.raises(ValueError, match="at least one sample"):
        compute_metrics(z[:0], y[:0])
    with pytest.raises(ValueError, match="integer class indices"):
        compute_metrics(z, y.float())


@pytest.mark.parametrize("n_bins", [0, -3])
def test_n_bins_must_be_positive(n_bins: int) -> None:
    z, y = random_logits(10, 3, seed=0)
    with pytest.raises(ConfigError, match="metrics.n_bins"):
        compute_metrics(z, y, n_bins)
    with pytest.raises(ConfigError, match="metrics.n_bins"):
        make_config(f"metrics.n_bins={n_bins}")


def test_top_k_larger_than_classes_is_rejected() -> None:
    z, y = random_logits(10, 3, seed=0)
    with pytest.raises(ConfigError, match="metrics.top_k"):
        compute_metrics(z, y, top_k=5)
