"""Evaluation metrics: pure, vectorized functions of (logits [N, K], labels [N]).

Everything is computed from one float64 softmax q = softmax(z); conf = max_k q_k, pred = argmax_k q_k.

Bin rule (all binned metrics): M equal-width bins B_m = ((m-1)/M, m/M], m = 1..M, closed on the
right as in Guo et al. 2017's reference code; a confidence of exactly 0 goes to B_1 and exactly 1
to B_M (torchmetrics <= 1.9 puts 1.0 in a hidden extra bin: Lightning-AI/torchmetrics#3510).
The edges are the float64 values nearest to m/M, so a confidence equal to an edge is in the bin below.

- ECE (Naeini et al. 2015; Guo et al. 2017): Σ_m |B_m|/N · |acc(B_m) - conf(B_m)|.
- MCE (same papers): max over the *non-empty* bins of |acc(B_m) - conf(B_m)|.
- AdaECE (Nguyen & O'Connor 2015; Mukhoti et al. 2020): the ECE sum over M equal-mass bins.
  Sample i goes to bin floor(M · r_i / N), r_i = #{j : conf_j < conf_i} (its rank, ties sharing the
  lowest rank). Without ties the bins hold N/M samples each, sizes differing by at most one; tied
  confidences are never split across bins, so the value does not depend on the order of samples.
- Classwise ECE (Kull et al. 2019, "cw-ECE"): for each class k, bin q_k(x) of *every* sample into the
  equal-width bins and compare with the frequency of y = k; averaged over the K classes:
  (1/K) Σ_k Σ_m |B_mk|/N · |mean_{B_mk} 1[y = k] - mean_{B_mk} q_k|.
- Brier score (Brier 1950): mean over samples of Σ_k (q_k - 1[y = k])², in [0, 2].
- NLL: the one-hot cross-entropy -log q_y, whatever the training loss (nats).
- acc: top-1 accuracy; topK: the label among the K largest logits; conf: mean confidence;
  gap: conf - acc (> 0 over-confident); entropy: mean of -Σ_k q_k log q_k (nats).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ls_bench.errors import invalid


def check_inputs(logits: Tensor, labels: Tensor) -> None:
    """Reject what would make every metric meaningless, with a message naming the problem."""
    if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"metrics need logits [N, K] and labels [N]; got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if len(labels) == 0 or logits.shape[1] == 0:
        raise ValueError(f"metrics need at least one sample and one class; got logits {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point; got {logits.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices; got {labels.dtype}")
    if not torch.isfinite(logits).all():
        bad_rows = (~torch.isfinite(logits)).any(1)
        raise ValueError(f"logits contain NaN or Inf in {int(bad_rows.sum())} of {len(logits)} rows "
                         f"(first: row {int(bad_rows.nonzero()[0, 0])})")
    K = logits.shape[1]
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= K:
        raise ValueError(f"labels must be in [0, {K}) for {K} logits per row; got values in [{lo}, {hi}]")


def check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise invalid("metrics.n_bins", n_bins, "must be an integer >= 1")


def bin_index(conf: Tensor, n_bins: int) -> Tensor:
    """Equal-width bin of each confidence: m-1 for conf in ((m-1)/M, m/M]; 0 -> bin 0, 1 -> bin M-1."""
    # arange / M is the correctly rounded m/M (linspace may be one ulp off); bucketize(right=False)
    # returns i with edge[i-1] < x <= edge[i], i.e. bins closed on the right.
    inner = torch.arange(1, n_bins, dtype=conf.dtype, device=conf.device) / n_bins
    return torch.bucketize(conf, inner, right=False)


def bin_sums(conf: Tensor, correct: Tensor, idx: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin (count, Σ conf, Σ correct) given each sample's bin index, in conf's dtype."""
    count = torch.bincount(idx, minlength=n_bins).to(conf.dtype)
    s_conf = torch.bincount(idx, weights=conf, minlength=n_bins).to(conf.dtype)
    s_corr = torch.bincount(idx, weights=correct.to(conf.dtype), minlength=n_bins).to(conf.dtype)
    return count, s_conf, s_corr


def _weighted_gap(conf: Tensor, correct: Tensor, idx: Tensor, n_bins: int) -> float:
    """Σ_m |B_m|/N · |acc_m - conf_m| = Σ_m |Σ_{B_m} (correct - conf)| / N."""
    count, s_conf, s_corr = bin_sums(conf, correct, idx, n_bins)
    return float((s_corr - s_conf).abs().sum() / count.sum())


def ece(conf: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error over equal-width bins (module docstring for the bin rule)."""
    return _weighted_gap(conf, correct, bin_index(conf, n_bins), n_bins)


def mce(conf: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    """Maximum calibration error: the largest |acc - conf| over the non-empty equal-width bins."""
    count, s_conf, s_corr = bin_sums(conf, correct, bin_index(conf, n_bins), n_bins)
    filled = count > 0
    return float(((s_corr - s_conf)[filled] / count[filled]).abs().max())


def adaptive_bin_index(conf: Tensor, n_bins: int) -> Tensor:
    """Equal-mass bin of each confidence: floor(M · rank / N), ties sharing their lowest rank."""
    rank = torch.searchsorted(conf.sort().values, conf, right=False)  # #{j : conf_j < conf_i}
    return rank * n_bins // len(conf)


def adaptive_ece(conf: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    """AdaECE: the ECE sum over M equal-mass bins (module docstring for the definition)."""
    return _weighted_gap(conf, correct, adaptive_bin_index(conf, n_bins), n_bins)


def classwise_gaps(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """|Σ_{B_mk} 1[y = k] - Σ_{B_mk} q_k| for each class k and bin m of q_k, flat [K·M] (index k·M + m)."""
    N, K = probs.shape
    # Flatten (class, bin) into one index k·M + m so all K histograms are one bincount.
    cls_bin = torch.arange(K, device=probs.device) * n_bins + bin_index(probs, n_bins)  # [N, K]
    s_p = torch.bincount(cls_bin.flatten(), weights=probs.flatten(), minlength=K * n_bins)
    # Σ_{B_mk} 1[y = k]: only the label entry of each row is 1, so count (y, bin of q_y) pairs.
    s_y = torch.bincount(cls_bin.gather(1, labels[:, None]).flatten(), minlength=K * n_bins).to(s_p.dtype)
    return (s_y - s_p).abs()


def classwise_ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Classwise ECE of Kull et al. 2019: every q_k of every sample is binned, per class."""
    N, K = probs.shape
    return float(classwise_gaps(probs, labels, n_bins).sum() / (N * K))


def calibration_bins(conf: Tensor, correct: Tensor, n_bins: int = 15) -> dict[str, list[float]]:
    """Per equal-width bin: accuracy, mean confidence and count (0, 0, 0 for an empty bin)."""
    check_n_bins(n_bins)
    count, s_conf, s_corr = bin_sums(conf, correct, bin_index(conf, n_bins), n_bins)
    c = count.clamp_min(1)
    return {"acc": (s_corr / c).tolist(), "conf": (s_conf / c).tolist(), "count": count.tolist()}


def top_label(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Top-label confidence max_k q_k and 0/1 correctness of argmax_k q_k, in probs' dtype."""
    conf, pred = probs.max(1)
    return conf, (pred == labels).to(probs.dtype)


def confidence_correct(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 top-label confidence and 0/1 correctness: what the top-label metrics bin."""
    return top_label(torch.softmax(logits.double(), dim=1), labels)


def compute_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15, top_k: int | None = None) -> dict[str, float]:
    """Every evaluation metric from one softmax, as {name: value} (prefix with the split to log)."""
    check_inputs(logits, labels)
    check_n_bins(n_bins)
    K = logits.shape[1]
    if top_k is not None and not 1 <= top_k <= K:
        raise invalid("metrics.top_k", top_k, f"must be in [1, {K}] for {K} classes")
    labels = labels.long()
    # Metric arithmetic in float64: sums over 10^5 samples keep ~1e-12 relative error, and a
    # confidence rounds to exactly 1.0 only when the runner-up is e^-37 times smaller.
    z = logits.double()
    logp = F.log_softmax(z, dim=1)
    probs = logp.exp()
    conf, correct = top_label(probs, labels)
    acc = float(correct.mean())
    p_y = probs.gather(1, labels[:, None]).squeeze(1)
    out = {
        "acc": acc,
        "nll": float(-logp.gather(1, labels[:, None]).mean()),
        "brier": float((probs.square().sum(1) - 2 * p_y + 1).mean()),  # Σ_k (q_k - y_k)² expanded
        "ece": ece(conf, correct, n_bins),
        "mce": mce(conf, correct, n_bins),
        "adaece": adaptive_ece(conf, correct, n_bins),
        "cwece": classwise_ece(probs, labels, n_bins),
        "conf": float(conf.mean()),
        "gap": float(conf.mean()) - acc,  # > 0: over-confident, < 0: under-confident
        "entropy": float(-(probs * logp).sum(1).mean()),  # nats
    }
    if top_k is not None:
        out[f"top{top_k}"] = topk_accuracy(logits, labels, top_k)
    return out


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of samples whose label is among the k largest logits.

    The label's rank counts the classes with a larger logit, plus tied classes of lower index
    (the tie rule of argmax), so top-1 equals `acc` exactly. One comparison pass: ~10x faster than topk.
    """
    z_y = logits.gather(1, labels[:, None])
    lower_index = torch.arange(logits.shape[1], device=logits.device) < labels[:, None]
    rank = ((logits > z_y) | ((logits == z_y) & lower_index)).sum(1)
    return float((rank < k).double().mean())


def default_top_k(num_classes: int, requested: int | None) -> int | None:
    """Top-5 accuracy is reported by default when K >= 10."""
    if requested is not None:
        return requested
    return 5 if num_classes >= 10 else None
