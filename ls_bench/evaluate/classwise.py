"""Accuracy and calibration by class frequency: the head, medium and tail classes of a long-tailed
training split (data.imbalance). Pure functions of (logits [N, K], labels [N], class_counts [K]).

Groups. The classes are ranked by their training count (largest first, ties by class index); the
head is the first round(K/3), the tail the last round(K/3), the medium group the rest (K = 10:
3 / 4 / 3; K = 100: 33 / 34 / 33; K = 2: head and tail only). This is the many / medium / few-shot
split of Liu et al. 2019 ("Large-scale long-tailed recognition in an open world", OLTR) by rank
instead of by their absolute thresholds (> 100, 20-100, < 20 training images): those were set for
ImageNet-LT's 1,280-to-5 images per class, and on CIFAR-10-LT at ρ = 100 (4,500 to 45 after the
validation hold-out) they would leave two classes below 100 images and none below 20. Thirds
by rank give every group classes at any K >= 3 and any ρ, and the same classes across ρ.

- Per-class accuracy (recall) acc_k = #{i : y_i = k, argmax q_i = k} / #{i : y_i = k}
  (scikit-learn's recall_score(average=None)); a group's accuracy is the mean of acc_k over its
  classes that have test images (on a balanced test split: the accuracy over those images).
- Class-wise ECE of class k (Kull et al. 2019, the per-class term of metrics.classwise_ece): over
  all N samples, Σ_m |B_mk|/N · |mean_{B_mk} 1[y = k] - mean_{B_mk} q_k| in M equal-width bins of
  q_k. A group's cwECE is the mean over its classes, so the three groups' class-weighted mean is
  test/cwece itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ls_bench.evaluate.metrics import check_inputs, check_n_bins, classwise_gaps

GROUPS = ("head", "medium", "tail")


def frequency_groups(class_counts: Tensor) -> dict[str, Tensor]:
    """{head, medium, tail: class indices} by training count (module docstring); empty groups left out."""
    counts = torch.as_tensor(class_counts).long().cpu()
    K = len(counts)
    # Stable sort of -count: largest first, equal counts in class order.
    order = torch.sort(-counts, stable=True).indices
    third = int(round(K / 3))  # Python's round: K = 2 -> 1, K = 4 -> 1, K = 5 -> 2
    parts = {"head": order[:third], "medium": order[third:K - third], "tail": order[K - third:]}
    return {g: idx.sort().values for g, idx in parts.items() if len(idx)}


def per_class_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """acc_k for each class k (float64 [K]); NaN for a class without samples."""
    K = logits.shape[1]
    hit = (logits.argmax(1) == labels).double()
    n = torch.bincount(labels, minlength=K).double()
    correct = torch.bincount(labels, weights=hit, minlength=K)
    return torch.where(n > 0, correct / n.clamp_min(1), torch.full_like(n, float("nan")))


def per_class_ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """Each class's term of Kull et al.'s classwise ECE (float64 [K]); their mean is classwise_ece."""
    N, K = probs.shape
    return classwise_gaps(probs, labels, n_bins).view(K, n_bins).sum(1) / N


def class_results(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Per class: accuracy and class-wise ECE (float64 [K] each), from one float64 softmax."""
    check_inputs(logits, labels)
    check_n_bins(n_bins)
    labels = labels.long()
    probs = torch.softmax(logits.double(), dim=1)
    return {"acc": per_class_accuracy(probs, labels), "cwece": per_class_ece(probs, labels, n_bins)}


def group_metrics(logits: Tensor, labels: Tensor, class_counts: Tensor, n_bins: int = 15) -> dict[str, float]:
    """{head_acc, medium_acc, tail_acc, head_cwece, ...} (prefix with the split to log): the mean of
    per-class accuracy and class-wise ECE over each frequency group's classes."""
    if len(class_counts) != logits.shape[1]:
        raise ValueError(f"class_counts has {len(class_counts)} entries for {logits.shape[1]} classes")
    per = class_results(logits, labels, n_bins)
    out: dict[str, float] = {}
    for g, idx in frequency_groups(class_counts).items():
        for name, values in per.items():
            v = values[idx]
            v = v[~v.isnan()]  # a class without test images has no accuracy (and a group of them no key)
            if len(v):
                out[f"{g}_{name}"] = float(v.mean())
    return out


def is_long_tailed(class_counts: Tensor, ratio: float | None) -> bool:
    """Whether the head / medium / tail metrics mean something: data.imbalance.ratio > 1, or the
    training split is already imbalanced (its largest class at least twice its smallest)."""
    counts = torch.as_tensor(class_counts)
    return (ratio is not None and ratio > 1) or (len(counts) > 1 and int(counts.max()) >= 2 * int(counts.min()))
