"""Training losses, all over one soft-target machinery.

Label smoothing (Szegedy et al. 2016; Müller, Kornblith & Hinton 2019) replaces the one-hot
target p by p' = (1-ε)·p + ε·u and trains with the soft cross-entropy
    L' = -Σ_k w_k p'_k log q_k = (1-ε)·H(p, q) + ε·H(u, q)      (w = 1 without class weights).
ε = 0 is one-hot cross-entropy through the same code path. The prior u is
    uniform      u_k = 1/K: PyTorch's `label_smoothing=ε` (true class gets 1-ε+ε/K);
    others       ε spread over the K-1 wrong classes (true class gets 1-ε): "the label is wrong
                 with probability ε" (Mukhoti et al. 2020);
    class_prior  u = class frequencies of the training labels;
    a list       any K non-negative numbers that sum to 1.
Class weights follow PyTorch's `F.cross_entropy(weight=w, label_smoothing=ε)`: *both* terms are
weighted per class, and the batch mean divides by Σ_i w_{y_i}. (Weighting only the NLL term and
not the smoothing term, as a common reference implementation does, is a bug.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ls_bench.config import ConfigError, LossConfig, bad

LOSSES = ("label_smoothing", "label_flip", "focal", "confidence_penalty", "binary")


def prior_vector(prior: Any, num_classes: int, class_counts: Tensor | None = None) -> Tensor | None:
    """u as a [K] probability vector; None for `others`, whose u depends on the true class."""
    K = num_classes
    if prior == "uniform":
        return torch.full((K,), 1.0 / K)
    if prior == "others":
        return None
    if prior == "class_prior":
        if class_counts is None:
            raise ValueError("class_prior needs the training class counts")
        return class_counts.double().div(class_counts.sum()).float()
    if isinstance(prior, str):
        raise bad("loss.prior", prior, "uniform, others, class_prior or a list of K probabilities")
    u = torch.tensor([float(p) for p in prior], dtype=torch.float64)
    if len(u) != K:
        raise bad("loss.prior", list(prior), f"a list of K={K} probabilities (got {len(u)})")
    if (u < 0).any() or abs(float(u.sum()) - 1) > 1e-6:
        raise bad("loss.prior", list(prior), "entries must be >= 0 and sum to 1")
    return u.float()


def class_weight_vector(weights: Any, num_classes: int, class_counts: Tensor) -> Tensor | None:
    """Per-class loss weights; `balanced` is scikit-learn's N / (K · n_k)."""
    if weights is None:
        return None
    if weights == "balanced":
        return (class_counts.sum() / (num_classes * class_counts.clamp_min(1))).float()
    if isinstance(weights, str):
        raise bad("loss.class_weights", weights, "null, balanced or a list of K non-negative weights")
    w = torch.tensor([float(x) for x in weights])
    if len(w) != num_classes or (w < 0).any() or w.sum() <= 0:
        raise bad("loss.class_weights", list(weights), f"a list of K={num_classes} non-negative weights, not all 0")
    return w


def smooth_targets(labels: Tensor, num_classes: int, epsilon: float, prior: Tensor | None) -> Tensor:
    """p' = (1-ε)·onehot(y) + ε·u, [B, K]; prior None means `others`: u = (1-onehot)/(K-1)."""
    onehot = F.one_hot(labels, num_classes).float()
    u = (1 - onehot) / (num_classes - 1) if prior is None else prior.to(onehot.device).expand_as(onehot)
    return (1 - epsilon) * onehot + epsilon * u


def sample_prior(labels: Tensor, num_classes: int, prior: Tensor | None, g: torch.Generator) -> Tensor:
    """One draw from u per sample (for `others`: uniform over the other K-1 classes)."""
    if prior is None:
        shift = torch.randint(1, num_classes, labels.shape, generator=g, device=g.device)
        return (labels + shift.to(labels.device)) % num_classes
    return torch.multinomial(prior.to(g.device), len(labels), replacement=True, generator=g).to(labels.device)


def as_multiclass(logits: Tensor) -> Tensor:
    """A single sigmoid logit z as the 2-class logits [0, z]: softmax([0, z])[1] = sigmoid(z)."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits


@dataclass
class Criterion:
    """The configured training loss: call it on (logits, labels, generator)."""

    name: str
    num_classes: int
    epsilon: float
    prior: Tensor | None
    weight: Tensor | None
    gamma: float
    beta: float

    @property
    def num_outputs(self) -> int:
        return 1 if self.name == "binary" else self.num_classes

    def targets(self, labels: Tensor) -> Tensor:
        return smooth_targets(labels, self.num_classes, self.epsilon, self.prior)

    def __call__(self, logits: Tensor, labels: Tensor, g: torch.Generator | None = None) -> Tensor:
        w = self.weight.to(logits.device) if self.weight is not None else None
        if self.name == "binary":
            # Binary LS, label-noise convention: y' = (1-ε)y + ε(1-y), one sigmoid output.
            # Equals uniform-prior softmax LS at K = 2 with ε_softmax = 2ε (true class 1-ε).
            y = labels.float()
            return F.binary_cross_entropy_with_logits(logits.float().squeeze(1), (1 - self.epsilon) * y
                                                      + self.epsilon * (1 - y))
        if self.name == "label_flip":
            # Stochastic label flipping: with probability ε replace y by a draw from u, afresh
            # each time the sample is seen. E[loss] = the label-smoothing loss with the same u.
            assert g is not None, "label_flip needs a generator"
            flip = torch.rand(labels.shape, generator=g, device=g.device).to(labels.device) < self.epsilon
            labels = torch.where(flip, sample_prior(labels, self.num_classes, self.prior, g), labels)
            t = F.one_hot(labels, self.num_classes).float()
        else:
            t = self.targets(labels)
        logq = F.log_softmax(logits.float(), dim=1)
        wt = t if w is None else t * w  # class weights scale every term of the target, both LS terms included
        if self.name == "focal":
            # Focal loss (Lin et al. 2017): -Σ_k t_k (1 - q_k)^γ log q_k; γ = 0 is (smoothed) CE.
            per = -(wt * (1 - logq.exp()).pow(self.gamma) * logq).sum(1)
        else:
            per = -(wt * logq).sum(1)
        if self.name == "confidence_penalty":
            # Confidence penalty (Pereyra et al. 2017): CE - β·H(q), H(q) = -Σ_k q_k log q_k.
            neg_entropy = (logq.exp() * logq).sum(1)
            per = per + self.beta * (neg_entropy if w is None else neg_entropy * w[labels])
        return per.mean() if w is None else per.sum() / w[labels].sum()


def make_criterion(cfg: LossConfig, num_classes: int, class_counts: Tensor) -> Criterion:
    """Build and check the loss for a dataset with `num_classes` classes; errors are one line."""
    if cfg.name not in LOSSES:
        raise bad("loss.name", cfg.name, f"one of {list(LOSSES)}")
    if cfg.name == "binary":
        if num_classes != 2:
            raise ConfigError(f"loss.name='binary' needs 2 classes but the data has {num_classes}; "
                              f"pick two with data.classes=[a,b]")
        if cfg.class_weights is not None:
            raise bad("loss.class_weights", cfg.class_weights, "null with loss=binary")
    if cfg.prior == "others" and num_classes < 2:
        raise bad("loss.prior", cfg.prior, "needs at least 2 classes")
    prior = prior_vector(cfg.prior, num_classes, class_counts)
    weight = class_weight_vector(cfg.class_weights, num_classes, class_counts)
    return Criterion(cfg.name, num_classes, float(cfg.epsilon), prior, weight, float(cfg.gamma), float(cfg.beta))
