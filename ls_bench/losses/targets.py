"""Soft targets and their builders: the priors u, label smoothing p' = (1-ε)·onehot + ε·u
(`Smoothed`), stochastic label flipping (`Flipped`). A builder maps (x, y, g) -> (x, p)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ls_bench.errors import invalid

PRIOR_HELP = "uniform, others, class_prior, human or a list of K non-negative numbers that sum to 1"
WEIGHTS_HELP = "null, balanced or a list of K finite non-negative weights, not all 0"


def _numbers(key: str, value: Any, allowed: str) -> Tensor:
    """A YAML list of finite numbers as a float64 tensor, or a one-line ConfigError."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise invalid(key, value, allowed)
    try:
        x = torch.tensor([float(v) for v in value if not isinstance(v, bool)], dtype=torch.float64)
    except (TypeError, ValueError):
        raise invalid(key, list(value), allowed) from None
    if len(x) != len(value) or not bool(torch.isfinite(x).all()) or (x < 0).any():
        raise invalid(key, list(value), allowed)
    return x


def _prior_list(prior: Any) -> Tensor:
    u = _numbers("loss.prior", prior, PRIOR_HELP)
    if abs(float(u.sum()) - 1) > 1e-6:
        raise invalid("loss.prior", list(prior), f"entries must sum to 1 (they sum to {float(u.sum()):.6g})")
    return u / u.sum()  # exact normalisation after the tolerance check: 0.1 × 10 sums to 0.9999999999999999


def _weight_list(weights: Any) -> Tensor:
    w = _numbers("loss.class_weights", weights, WEIGHTS_HELP)
    if not w.sum() > 0:
        raise invalid("loss.class_weights", list(weights), WEIGHTS_HELP)
    return w


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
        raise invalid("loss.prior", prior, PRIOR_HELP)
    u = _prior_list(prior)
    if len(u) != K:
        raise invalid("loss.prior", list(prior), f"a list of K={K} probabilities, one per class (got {len(u)})")
    return u.float()


def class_weight_vector(weights: Any, num_classes: int, class_counts: Tensor) -> Tensor | None:
    """Per-class loss weights; `balanced` is scikit-learn's N / (K · n_k) (a class with n_k = 0 gets N / K)."""
    if weights is None:
        return None
    if weights == "balanced":
        return (class_counts.sum() / (num_classes * class_counts.clamp_min(1))).float()
    if isinstance(weights, str):
        raise invalid("loss.class_weights", weights, WEIGHTS_HELP)
    w = _weight_list(weights)
    if len(w) != num_classes:
        raise invalid("loss.class_weights", list(weights), f"a list of K={num_classes} weights, one per class "
                                                           f"(got {len(w)})")
    return w.float()


def sample_epsilon(epsilon: float | Tensor, labels: Tensor) -> float | Tensor:
    """ε as a number, or each sample's ε_{y_i} as a [B, 1] column when ε is class-wise ([K])."""
    return epsilon[labels].unsqueeze(1) if isinstance(epsilon, Tensor) else epsilon


def smooth_targets(labels: Tensor, num_classes: int, epsilon: float | Tensor, prior: Tensor | None) -> Tensor:
    """p' = (1-ε)·onehot(y) + ε·u, [B, K]; prior None means `others`: u = (1-onehot)/(K-1); a [K]
    ε is class-wise, each sample smoothed by the ε of its true class."""
    epsilon = sample_epsilon(epsilon, labels)
    onehot = F.one_hot(labels, num_classes).float()
    u = (1 - onehot) / (num_classes - 1) if prior is None else prior.expand_as(onehot)
    return (1 - epsilon) * onehot + epsilon * u


def sample_prior(labels: Tensor, num_classes: int, prior: Tensor | None, g: torch.Generator) -> Tensor:
    """One draw from u per sample (for `others`: uniform over the other K-1 classes; a [B, K]
    prior: one draw from each sample's row)."""
    if prior is None:
        shift = torch.randint(1, num_classes, labels.shape, generator=g, device=g.device)
        return (labels + shift.to(labels.device)) % num_classes
    if prior.dim() == 2:
        return torch.multinomial(prior.to(g.device), 1, generator=g).squeeze(1).to(labels.device)
    return torch.multinomial(prior.to(g.device), len(labels), replacement=True, generator=g).to(labels.device)


def as_multiclass(logits: Tensor) -> Tensor:
    """A single sigmoid logit z as the 2-class logits [0, z]: softmax([0, z])[1] = sigmoid(z)."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits


# --- target builders: (x, y, g) -> (x, p) --------------------------------------------------------


@dataclass(frozen=True)
class Smoothed:
    """Label smoothing: p' = (1-ε)·onehot(y) + ε·u (ε = 0: one-hot)."""

    num_classes: int
    epsilon: float | Tensor  # a [K] tensor: class-wise ε (ls_bench.losses.classwise)
    prior: Tensor | None  # [K] on the run's device; None is the `others` prior
    # loss.prior=human: each training image's own u, [N_train, K], by position in the training split
    # (the batches' idx); `prior` is then its mean, the u of a target asked for without positions.
    per_image: Tensor | None = None

    def prior_of(self, idx: Tensor | None) -> Tensor | None:
        """u for the samples at positions idx: [B, K] per image, else the one [K] prior (None: others)."""
        return self.prior if self.per_image is None or idx is None else self.per_image[idx]

    def expected(self, labels: Tensor, idx: Tensor | None = None) -> Tensor:
        """The (expected) target per sample, [B, K]."""
        return smooth_targets(labels, self.num_classes, self.epsilon, self.prior_of(idx))

    def __call__(self, x: Tensor, labels: Tensor, g: torch.Generator | None,
                 idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, self.expected(labels, idx)

    # Run state and per-step observation: none for a fixed target (online LS overrides them).
    def observe(self, logq: Tensor, labels: Tensor) -> None:
        """Called with each training step's log q = log_softmax(z) and labels."""

    def end_epoch(self) -> None:
        """Called by the loop after each training epoch."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass

    def images(self) -> dict[str, Tensor]:
        """Pictures of the target's state for TensorBoard, by metric name."""
        return {}

    def to(self, device: torch.device) -> "Smoothed":
        return replace(self, prior=None if self.prior is None else self.prior.to(device),
                       per_image=None if self.per_image is None else self.per_image.to(device),
                       epsilon=self.epsilon.to(device) if isinstance(self.epsilon, Tensor) else self.epsilon)


@dataclass(frozen=True)
class Flipped(Smoothed):
    """Stochastic label flipping: p = onehot(ỹ), ỹ a draw from u with probability ε, else y.
    E[onehot(ỹ)] = p', so the expected loss is the label-smoothing loss with the same u and ε."""

    def flip(self, labels: Tensor, g: torch.Generator, idx: Tensor | None = None) -> Tensor:
        # Both draws are made whatever ε is, so one seed gives nested flips across ε (paired runs).
        eps = self.epsilon[labels] if isinstance(self.epsilon, Tensor) else self.epsilon  # class-wise: ε_{y_i}
        mask = torch.rand(labels.shape, generator=g, device=g.device).to(labels.device) < eps
        return torch.where(mask, sample_prior(labels, self.num_classes, self.prior_of(idx), g), labels)

    def __call__(self, x: Tensor, labels: Tensor, g: torch.Generator | None,
                 idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        assert g is not None, "label_flip needs a generator"
        return x, F.one_hot(self.flip(labels, g, idx), self.num_classes).float()
