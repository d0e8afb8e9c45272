"""Representation metrics (eval.representation): how a model arranges the penultimate features of a
split, the mechanism Müller, Kornblith & Hinton (NeurIPS 2019, §4) draw in penultimate.png and
Kornblith, Chen, Lee & Norouzi (NeurIPS 2021) measure. Pure functions of (features [N, D], labels
[N]) (and logits [N, K] for logit_spread), float64; `representation_results` runs them on a run's
test split and on the classes data.classes left out.

- class_separation: Kornblith et al. 2021's R² = 1 - d̄_within / d̄_total over cosine distances
  1 - sim(x, x'), sim(x, x') = x·x' / (|x| |x'|), on the raw (uncentred) features:
      d̄_within = (1/K) Σ_k (1/N_k²) Σ_{m,n ∈ k} (1 - sim(x_m, x_n))
      d̄_total  = (1/K²) Σ_{j,k} (1/(N_j N_k)) Σ_{m ∈ j, n ∈ k} (1 - sim(x_m, x_n))
  Class-balanced, and every pair counted, a sample with itself too (distance 0), as their
  N_k² and N_j N_k denominators say. With u = x/|x| and μ_k the mean of u over class k the double
  sums collapse: d̄_within = 1 - (1/K) Σ_k |μ_k|², d̄_total = 1 - |(1/K) Σ_k μ_k|², so the cost is
  O(N·D), no pairwise matrix and no subsampling. 1: every class a single direction; 0: the classes
  indistinguishable. (A zero feature vector has distance 1 to everything, itself included, as
  scikit-learn's cosine_distances gives it.)
- within_between: tr(S_W) / tr(S_B), the trace ratio of within- to between-class scatter of the
  raw features (Fisher's criterion in its trace form; the NC1 quantity of Papyan, Han & Donoho 2020
  up to the pseudo-inverse): Σ_i |x_i - m_{y_i}|² / Σ_k N_k |m_k - m|², m_k the class means, m the
  mean of all. Scale-free; small: tight clusters far apart.
- logit_spread: how unequal the non-target logits are, Müller et al.'s "equidistant templates"
  (LS makes |x - w_k| the same for every wrong class k, so z_y - z_k the same for every k ≠ y).
  Per sample i, s_i = std_{k≠y_i}(z_{y_i} - z_k) (population std over the K-1 wrong classes) and
  g_i = mean_{k≠y_i}(z_{y_i} - z_k) (the mean gap); per class c, mean_{i∈c} s_i / mean_{i∈c} g_i;
  then the mean over the classes whose mean gap is positive (NaN if none). Dividing by the gap makes
  it scale-free (a temperature leaves it unchanged: one-hot + TS and LS are compared on shape, not
  on logit size); a ratio of class means, not a mean of per-sample ratios, because a sample's own
  gap can be 0 or negative (misclassified) and its ratio unbounded. 0: equidistant templates.
  K = 2 has one wrong class: always 0.
- knn_acc: leave-one-out k-NN accuracy on the split's own features: scikit-learn's
  KNeighborsClassifier(n_neighbors=KNN_K, metric="cosine", uniform vote) fitted on the features and
  asked for predict(None), where no sample is its own neighbour. No training-split pass is needed
  (cheap), and no sample votes for itself (honest). Above KNN_MAX samples a seeded random subset of
  KNN_MAX is used: the cost grows as N²·D.
- transfer_acc (held_out/ only): linear-probe accuracy (Kornblith et al.'s fixed-feature transfer):
  scikit-learn's LogisticRegression(C=PROBE_C, lbfgs, multinomial) on standardised features (mean
  and std of the probe's training features), fitted on the held-out classes' training images and
  scored on their test images. Kornblith et al. find that better class separation transfers worse.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

import torch
from torch import Tensor

from ls_bench.config import Config
from ls_bench.data.loader import Split

log = logging.getLogger(__name__)

KNN_K = 10  # neighbours of the k-NN vote
KNN_MAX = 10_000  # samples the k-NN uses at most (seeded subset): N² distances
PROBE_C = 1.0  # inverse L2 strength of the linear probe, on standardised features (fixed, not tuned)
PROBE_MAX_ITER = 1000


def _check(features: Tensor, labels: Tensor) -> None:
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels) or not len(labels):
        raise ValueError(f"features [N, D] and labels [N] must match and be non-empty; got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")


def class_means(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(means [K', D], counts [K']) of the classes present in labels, in label order."""
    _, inv, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), x.shape[1], dtype=x.dtype).index_add_(0, inv, x)
    return sums / counts[:, None].to(x.dtype), counts


def class_separation(features: Tensor, labels: Tensor) -> float:
    """Kornblith et al. 2021's R² = 1 - d̄_within / d̄_total of cosine distances (module docstring)."""
    _check(features, labels)
    u = torch.nn.functional.normalize(features.double(), dim=1)  # a zero vector stays 0
    mu, _ = class_means(u, labels)
    d_within = 1 - (mu * mu).sum(1).mean()
    d_total = 1 - mu.mean(0).square().sum()
    return float(1 - d_within / d_total) if d_total > 0 else float("nan")


def within_between(features: Tensor, labels: Tensor) -> float:
    """tr(S_W) / tr(S_B) of the raw features (module docstring); inf if the class means coincide."""
    _check(features, labels)
    x = features.double()
    mu, counts = class_means(x, labels)
    _, inv = torch.unique(labels, return_inverse=True)
    within = (x - mu[inv]).square().sum()
    between = (counts.double() * (mu - x.mean(0)).square().sum(1)).sum()
    return float(within / between) if between > 0 else float("inf")


def logit_spread(logits: Tensor, labels: Tensor) -> float:
    """Class mean of std_{k≠y}(z_y - z_k) over class mean of mean_{k≠y}(z_y - z_k) (module docstring)."""
    _check(logits, labels)
    z = logits.double()
    n, k = z.shape
    if k < 3:
        return 0.0
    wrong = torch.ones_like(z, dtype=torch.bool)
    wrong[torch.arange(n), labels] = False
    gaps = (z.gather(1, labels[:, None]) - z)[wrong].view(n, k - 1)  # z_y - z_k, k ≠ y
    s = gaps.std(1, unbiased=False)
    g = gaps.mean(1)
    s_c, _ = class_means(s[:, None], labels)
    g_c, _ = class_means(g[:, None], labels)
    ok = g_c[:, 0] > 0
    return float((s_c[ok, 0] / g_c[ok, 0]).mean()) if ok.any() else float("nan")


def one_thread() -> contextlib.AbstractContextManager:
    """scikit-learn's BLAS and OpenMP on one thread: on small matrices their threads mostly wait for
    each other, and beside torch's on a busy 2-core machine a 20,000 x 64 logistic regression took
    ~30x longer on 2 threads than on 1 (3.6 s against 0.1 s for the same 4 iterations, AVX512-BF16 Xeon)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def knn_accuracy(features: Tensor, labels: Tensor, k: int = KNN_K, max_n: int = KNN_MAX, seed: int = 0) -> float:
    """Leave-one-out k-NN accuracy, cosine metric, uniform vote (scikit-learn; module docstring)."""
    from sklearn.neighbors import KNeighborsClassifier  # ~1 s to import: only with eval.representation

    _check(features, labels)
    if len(labels) > max_n:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:max_n]
        features, labels = features[keep], labels[keep]
    if len(labels) <= k:
        return float("nan")
    y = labels.numpy()
    with one_thread():
        knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(features.double().numpy(), y)
        return float((knn.predict(None) == y).mean())


def probe_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, c: float = PROBE_C) -> float:
    """Linear-probe accuracy: logistic regression (C, lbfgs) on features standardised with the
    training features' mean and std, fitted on (train_f, train_y), scored on (test_f, test_y)."""
    from sklearn.linear_model import LogisticRegression

    _check(train_f, train_y)
    _check(test_f, test_y)
    x_tr, x_te = train_f.double().numpy(), test_f.double().numpy()
    mean, std = x_tr.mean(0), x_tr.std(0)
    std[std == 0] = 1.0  # a feature constant on the training images carries nothing: left at 0
    with one_thread():
        probe = LogisticRegression(C=c, max_iter=PROBE_MAX_ITER).fit((x_tr - mean) / std, train_y.numpy())
        return float((probe.predict((x_te - mean) / std) == test_y.numpy()).mean())


def representation_metrics(features: Tensor, labels: Tensor, logits: Tensor | None = None,
                           seed: int = 0) -> dict[str, float]:
    """repr/class_separation, repr/within_between, repr/knn_acc (and repr/logit_spread with logits)."""
    out = {"repr/class_separation": class_separation(features, labels),
           "repr/within_between": within_between(features, labels),
           "repr/knn_acc": knn_accuracy(features, labels, seed=seed)}
    if logits is not None:
        out["repr/logit_spread"] = logit_spread(logits, labels)
    return out


# --- a run's splits --------------------------------------------------------------------------------


def held_out_splits(cfg: Config) -> tuple[Split, Split] | None:
    """(training, test) images of the classes data.classes leaves out, labelled 0..m-1 in class
    order; None when no class is left out. For a dataset without a test split (digits) the
    held-out images are split like the kept ones: data.test_size (a fraction; else 20%) of them,
    class-stratified with data.split_seed."""
    from ls_bench.data.readers import DATASETS
    from ls_bench.data.splits import select_classes, split_count, stratified_split

    if cfg.data.classes is None:
        return None
    train, test, classes = DATASETS[cfg.data.name](cfg.data)
    if cfg.data.train_on == "test":
        train, test = test, train
    left_out = [c for c in range(len(classes)) if c not in cfg.data.classes]
    if not left_out:
        return None
    train = select_classes(train, left_out)
    if test is None:
        size = cfg.data.test_size
        rest, held = stratified_split(train.y, split_count(size, len(train)) if 0 < size < 1 else len(train) // 5,
                                      cfg.data.split_seed)
        return train.take(rest), train.take(held)
    return train, select_classes(test, left_out)


def representation_results(cfg: Config, test: Split, test_logits: Tensor,
                           features_of: Callable[[Split], Tensor]) -> dict[str, float]:
    """test/repr/* of the test split's penultimate features (`features_of`: a split -> features
    [N, D]) and, where data.classes leaves classes out, held_out/repr/* of theirs, with
    held_out/repr/transfer_acc (a linear probe fitted on their training images)."""
    t0, seed = time.perf_counter(), cfg.data.split_seed
    y = test.y.cpu()
    out = {f"test/{k}": v for k, v in representation_metrics(features_of(test), y, test_logits, seed).items()}
    splits = held_out_splits(cfg)
    if splits is not None:
        train_h, test_h = (s.to(test.y.device) for s in splits)
        f_train, f_test = features_of(train_h), features_of(test_h)
        y_test = test_h.y.cpu()
        out.update({f"held_out/{k}": v for k, v in representation_metrics(f_test, y_test, seed=seed).items()})
        out["held_out/repr/transfer_acc"] = probe_accuracy(f_train, train_h.y.cpu(), f_test, y_test)
    log.info("representation metrics (%s): %.2f s", "test, held-out classes" if splits else "test",
             time.perf_counter() - t0)
    return out

