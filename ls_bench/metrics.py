"""Evaluation metrics: pure, vectorized functions of (logits [N, K], labels [N]).

Calibration metrics follow the literature's definitions:
- ECE (Naeini et al. 2015; Guo et al. 2017): M equal-width confidence bins
  B_m = ((m-1)/M, m/M], m = 1..M (a confidence of exactly 0 goes to B_1, exactly 1 to B_M);
  ECE = Σ_m |B_m|/N · |acc(B_m) - conf(B_m)|. MCE = max over non-empty bins of the same gap.
- AdaECE (Nguyen & O'Connor 2015; Mukhoti et al. 2020): the same sum over M equal-mass bins
  (samples sorted by confidence, split into M groups whose sizes differ by at most one).
- Classwise ECE (Kull et al. 2019): for each class k, bin p_k(x) of *every* sample into the
  equal-width bins and compare with the frequency of y = k; averaged over the K classes.
- Brier score (Brier 1950): mean over samples of Σ_k (q_k - 1[y = k])².
NLL is always the one-hot cross-entropy of the model's probabilities, whatever the training loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_inputs(logits: Tensor, labels: Tensor) -> None:
    """Reject what would make every metric meaningless, with a message naming the problem."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"metrics need logits [N, K] and labels [N]; got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if not torch.isfinite(logits).all():
        bad = (~torch.isfinite(logits)).any(1).sum().item()
        raise ValueError(f"logits contain NaN or Inf in {bad} of {len(logits)} rows")
    K = logits.shape[1]
    if len(labels) and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(f"labels must be in [0, {K}); got values in [{labels.min().item()}, {labels.max().item()}]")


def bin_index(conf: Tensor, n_bins: int) -> Tensor:
    """Equal-width bin of each confidence: m-1 for conf in ((m-1)/M, m/M]; 0 -> bin 0, 1 -> bin M-1."""
    inner = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)[1:-1]
    return torch.bucketize(conf, inner, right=False)


def _binned_gaps(conf: Tensor, correct: Tensor, idx: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    """Per-bin (|acc - conf|, count) given each sample's bin index."""
    count = torch.zeros(n_bins, dtype=conf.dtype, device=conf.device).index_add_(0, idx, torch.ones_like(conf))
    s_conf = torch.zeros_like(count).index_add_(0, idx, conf)
    s_corr = torch.zeros_like(count).index_add_(0, idx, correct)
    gap = (s_corr - s_conf).abs() / count.clamp_min(1)
    return gap, count


def ece(conf: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    gap, count = _binned_gaps(conf, correct, bin_index(conf, n_bins), n_bins)
    return float((gap * count).sum() / count.sum())


def mce(conf: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    gap, count = _binned_gaps(conf, correct, bin_index(conf, n_bins), n_bins)
    return float(gap[count > 0].max())


def adaptive_ece(conf: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    n = len(conf)
    order = conf.argsort()
    # Equal-mass bins: rank r goes to bin floor(r * M / N), so bin sizes differ by at most one.
    idx = torch.empty_like(order)
    idx[order] = torch.arange(n, device=conf.device) * n_bins // n
    gap, count = _binned_gaps(conf, correct, idx, n_bins)
    return float((gap * count).sum() / count.sum())


def classwise_ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    N, K = probs.shape
    onehot = F.one_hot(labels, K).to(probs.dtype)
    # Flatten (class, bin) into one index so all K histograms are one index_add.
    idx = (torch.arange(K, device=probs.device) * n_bins + bin_index(probs, n_bins)).flatten()
    count = torch.zeros(K * n_bins, dtype=probs.dtype, device=probs.device).index_add_(0, idx, torch.ones_like(idx, dtype=probs.dtype))
    s_p = torch.zeros_like(count).index_add_(0, idx, probs.flatten())
    s_y = torch.zeros_like(count).index_add_(0, idx, onehot.flatten())
    return float((s_y - s_p).abs().sum() / (N * K))  # Σ_bins |B|/N·|gap| = Σ |Σ(y - p)| / N


def calibration_bins(conf: Tensor, correct: Tensor, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin accuracy, mean confidence and count: the data of a reliability diagram."""
    idx = bin_index(conf, n_bins)
    count = torch.zeros(n_bins, dtype=conf.dtype, device=conf.device).index_add_(0, idx, torch.ones_like(conf))
    s_conf = torch.zeros_like(count).index_add_(0, idx, conf)
    s_corr = torch.zeros_like(count).index_add_(0, idx, correct)
    c = count.clamp_min(1)
    return {"acc": (s_corr / c).tolist(), "conf": (s_conf / c).tolist(), "count": count.tolist()}


def compute_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15, top_k: int | None = None) -> dict[str, float]:
    """Every evaluation metric from one softmax, as {name: value} (prefix with the split to log)."""
    check_inputs(logits, labels)
    logits = logits.double()  # metric arithmetic in float64: sums over 10^4 samples stay exact enough
    K = logits.shape[1]
    logp = F.log_softmax(logits, dim=1)
    probs = logp.exp()
    conf, pred = probs.max(1)
    correct = (pred == labels).to(probs.dtype)
    acc = float(correct.mean())
    out = {
        "acc": acc,
        "nll": float(F.nll_loss(logp, labels)),
        "brier": float((probs - F.one_hot(labels, K).to(probs.dtype)).pow(2).sum(1).mean()),
        "ece": ece(conf, correct, n_bins),
        "mce": mce(conf, correct, n_bins),
        "adaece": adaptive_ece(conf, correct, n_bins),
        "cwece": classwise_ece(probs, labels, n_bins),
        "conf": float(conf.mean()),
        "gap": float(conf.mean()) - acc,  # > 0: over-confident, < 0: under-confident
        "entropy": float(-(probs * logp).sum(1).mean()),  # nats
    }
    if top_k is not None:
        out[f"top{top_k}"] = float((logits.topk(top_k, dim=1).indices == labels[:, None]).any(1).double().mean())
    return out


def default_top_k(num_classes: int, requested: int | None) -> int | None:
    """Top-5 accuracy is reported by default when K >= 10."""
    if requested is not None:
        return requested
    return 5 if num_classes >= 10 else None
