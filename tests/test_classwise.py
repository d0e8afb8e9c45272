"""Head / medium / tail metrics (ls_bench.evaluate.classwise) against scikit-learn's per-class
recall, a per-class ECE computed by hand in loops, and metrics.classwise_ece."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import recall_score

from conftest import random_logits
from ls_bench.evaluate.classwise import frequency_groups, group_metrics, is_long_tailed, per_class_ece
from ls_bench.evaluate.metrics import compute_metrics


def hand_class_ece(probs: np.ndarray, labels: np.ndarray, k: int, n_bins: int) -> float:
    """Σ_m |B_mk|/N · |mean 1[y = k] - mean q_k| over bins ((m-1)/M, m/M] of q_k, one sample at a time."""
    N = len(labels)
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        members = [i for i in range(N) if (lo < probs[i, k] <= hi) or (m == 0 and probs[i, k] == 0)]
        if members:
            hits = sum(labels[i] == k for i in members) / len(members)
            conf = sum(probs[i, k] for i in members) / len(members)
            total += len(members) / N * abs(hits - conf)
    return total


def test_groups_are_thirds_by_count_largest_first_ties_by_index() -> None:
    counts = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    g = frequency_groups(counts)
    assert {k: v.tolist() for k, v in g.items()} == {"head": [0, 1, 2], "medium": [3, 4, 5, 6], "tail": [7, 8, 9]}
    shuffled = frequency_groups(torch.tensor([10, 90, 30, 70, 50]))  # by count: 1, 3 | 4 | 2, 0 (round(5/3) = 2)
    assert {k: v.tolist() for k, v in shuffled.items()} == {"head": [1, 3], "medium": [4], "tail": [0, 2]}
    assert {k: v.tolist() for k, v in frequency_groups(torch.tensor([7, 7, 7])).items()} == {
        "head": [0], "medium": [1], "tail": [2]}
    assert {k: v.tolist() for k, v in frequency_groups(torch.tensor([3, 9])).items()} == {"head": [1], "tail": [0]}


def test_per_class_ece_is_the_hand_computation_and_averages_to_classwise_ece() -> None:
    z, y = random_logits(300, 4, seed=0, scale=2.0)
    probs = torch.softmax(z.double(), 1)
    got = per_class_ece(probs, y, 10)
    ref = [hand_class_ece(probs.numpy(), y.numpy(), k, 10) for k in range(4)]
    assert got.tolist() == pytest.approx(ref, abs=1e-12)
    assert float(got.mean()) == pytest.approx(compute_metrics(z, y, 10)["cwece"], abs=1e-12)


def test_group_metrics_against_sklearn_recall_and_overall_cwece() -> None:
    K = 10
    z, y = random_logits(1000, K, seed=1, scale=1.5)
    counts = torch.tensor([40, 400, 90, 300, 10, 200, 60, 150, 20, 100])  # head 1, 3, 5; tail 0, 4, 8
    out = group_metrics(z, y, counts, n_bins=15)
    recall = recall_score(y.numpy(), z.argmax(1).numpy(), average=None, labels=list(range(K)))
    groups = {"head": [1, 3, 5], "medium": [2, 6, 7, 9], "tail": [0, 4, 8]}
    for g, idx in groups.items():
        assert out[f"{g}_acc"] == pytest.approx(recall[idx].mean(), abs=1e-12)
    weighted = sum(len(idx) * out[f"{g}_cwece"] for g, idx in groups.items()) / K
    assert weighted == pytest.approx(compute_metrics(z, y, 15)["cwece"], abs=1e-12)
    assert set(out) == {f"{g}_{m}" for g in groups for m in ("acc", "cwece")}


def test_a_class_without_test_images_is_left_out_of_its_group_accuracy() -> None:
    z, y = random_logits(200, 3, seed=2)
    keep = y != 2
    z, y = z[keep], y[keep]  # class 2 (the tail) has no test image: its accuracy is undefined
    out = group_metrics(z, y, torch.tensor([50, 20, 5]))
    assert "tail_acc" not in out and "tail_cwece" in out
    assert out["head_acc"] == pytest.approx(float((z.argmax(1)[y == 0] == 0).double().mean()))


def test_counts_of_another_length_are_refused() -> None:
    z, y = random_logits(20, 3, seed=3)
    with pytest.raises(ValueError, match="class_counts"):
        group_metrics(z, y, torch.tensor([5, 4]))


def test_long_tailed_means_data_imbalance_or_a_factor_of_two() -> None:
    assert is_long_tailed(torch.tensor([100, 100]), 10.0)
    assert not is_long_tailed(torch.tensor([146, 139, 144]), None)  # digits' natural spread
    assert not is_long_tailed(torch.tensor([50, 50]), 1.0)  # ρ = 1: equal counts
    assert is_long_tailed(torch.tensor([200, 90]), None)  # a folder that is already long-tailed
