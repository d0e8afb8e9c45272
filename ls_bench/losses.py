"""Training losses, all over one soft-target machinery: build a target distribution p per
sample, then one soft cross-entropy, plus optional logit terms.

    target builders  (x, y, g) -> (x, p): smoothing with any prior (`Smoothed`), stochastic
                     flipping (`Flipped`); mixing (ls_bench.data.mixing) and a teacher's logits
                     (ls_bench.teacher) compose after them into a `Batch`
    logit transform  LogitNorm's z / (τ·‖z‖₂) before the softmax of the training loss
    soft CE          -Σ_k w_k p_k log q_k, q = softmax(z) (focal: its (1 - q_k)^γ-modulated form)
    logit terms      per-sample penalties added to it (the confidence penalty, the MbLS margin)
    distillation     (1-α)·soft CE + α·T²·KL(teacher ‖ student), per sample
    the batch mean   Σ_i per_i / Σ_i w_{y_i}  (the plain mean without class weights)
Binary LS on one sigmoid output stays its own exact path (`binary_cross_entropy_with_logits`).

Label smoothing (Szegedy et al. 2016; Müller, Kornblith & Hinton 2019) replaces the one-hot
target p by p' = (1-ε)·p + ε·u and trains with the soft cross-entropy
    L' = -Σ_k w_k p'_k log q_k = (1-ε)·H(p, q) + ε·H(u, q)      (w = 1 without class weights).
ε = 0 is one-hot cross-entropy through the same code path. The prior u is
    uniform      u_k = 1/K: PyTorch's `label_smoothing=ε` (true class gets 1-ε+ε/K);
    others       ε spread over the K-1 wrong classes (true class gets 1-ε): "the label is wrong
                 with probability ε" (Mukhoti et al. 2020); uniform ε at K equals others ε·(K-1)/K;
    class_prior  u = class frequencies of the training labels (after any label noise);
    human        u = h(x), the image's own human label distribution (CIFAR-10H, Peterson et al.
                 2019; loss.human), so ε = 1 trains on the human distribution itself;
    a list       any K non-negative numbers that sum to 1.
Class weights follow PyTorch's `F.cross_entropy(weight=w, label_smoothing=ε)`: *both* terms are
weighted per class k of the target, and the batch mean divides by Σ_i w_{y_i}:
    L = -Σ_i Σ_k w_k p'_ik log q_ik / Σ_i w_{y_i}.
(Weighting only the NLL term and not the smoothing term, as a common reference implementation
does, is a bug: it is not PyTorch's loss and it changes the balance of the two terms.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ls_bench.config import LossConfig
from ls_bench.errors import ConfigError, invalid

if TYPE_CHECKING:
    from ls_bench.data.mixing import Mixer
    from ls_bench.teacher import Teacher

LOSSES = ("label_smoothing", "label_flip", "focal", "confidence_penalty", "margin", "logit_norm", "distill", "binary")
PRIORS = ("uniform", "others", "class_prior", "human")
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


def check_loss(cfg: LossConfig) -> None:
    """The checks that need no data (name, prior and weight syntax); K-dependent ones are in make_criterion."""
    if cfg.name not in LOSSES:
        raise invalid("loss.name", cfg.name, f"one of {list(LOSSES)}")
    if isinstance(cfg.prior, str):
        if cfg.prior not in PRIORS:
            raise invalid("loss.prior", cfg.prior, PRIOR_HELP)
    else:
        _prior_list(cfg.prior)
    if isinstance(cfg.class_weights, str):
        if cfg.class_weights != "balanced":
            raise invalid("loss.class_weights", cfg.class_weights, WEIGHTS_HELP)
    elif cfg.class_weights is not None:
        _weight_list(cfg.class_weights)
    if cfg.name == "binary":
        # y' = (1-ε)y + ε(1-y) puts all of ε on the other class: that is the `others` prior at K = 2.
        if cfg.prior != "others":
            raise invalid("loss.prior", cfg.prior, "must be 'others' with loss=binary, whose target is "
                                                   "y' = (1-ε)y + ε(1-y) (uniform prior at 2ε); or use "
                                                   "loss=label_smoothing on 2 classes")
        if cfg.class_weights is not None:
            raise invalid("loss.class_weights", cfg.class_weights, "null with loss=binary")


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


def smooth_targets(labels: Tensor, num_classes: int, epsilon: float, prior: Tensor | None) -> Tensor:
    """p' = (1-ε)·onehot(y) + ε·u, [B, K]; prior None means `others`: u = (1-onehot)/(K-1)."""
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
    epsilon: float
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

    def to(self, device: torch.device) -> "Smoothed":
        return replace(self, prior=None if self.prior is None else self.prior.to(device),
                       per_image=None if self.per_image is None else self.per_image.to(device))


@dataclass(frozen=True)
class Flipped(Smoothed):
    """Stochastic label flipping: p = onehot(ỹ), ỹ a draw from u with probability ε, else y.
    E[onehot(ỹ)] = p', so the expected loss is the label-smoothing loss with the same u and ε."""

    def flip(self, labels: Tensor, g: torch.Generator, idx: Tensor | None = None) -> Tensor:
        # Both draws are made whatever ε is, so one seed gives nested flips across ε (paired runs).
        mask = torch.rand(labels.shape, generator=g, device=g.device).to(labels.device) < self.epsilon
        return torch.where(mask, sample_prior(labels, self.num_classes, self.prior_of(idx), g), labels)

    def __call__(self, x: Tensor, labels: Tensor, g: torch.Generator | None,
                 idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        assert g is not None, "label_flip needs a generator"
        return x, F.one_hot(self.flip(labels, g, idx), self.num_classes).float()


# --- the soft cross-entropy and the logit terms ---------------------------------------------------


def soft_ce_per_sample(logq: Tensor, p: Tensor, weight: Tensor | None = None, gamma: float = 0.0) -> Tensor:
    """-Σ_k w_k p_k (1 - q_k)^γ log q_k per sample, [B], for the target p and the model's log q = log_softmax(z);
    γ = 0 is the soft cross-entropy.

    Class weights scale every term of the target, both LS terms included (PyTorch's convention).
    Focal loss (Lin et al. 2017, eq. 4 without α) is γ > 0: 1 - q as -expm1(log q) (exact near
    q = 1), floored, since d(x^γ)/dx is infinite at x = 0 for γ < 1 and a confidently right
    sample (q = 1 in float32) would make the gradient NaN.
    """
    wp = p if weight is None else p * weight
    if gamma:
        return -(wp * (-torch.expm1(logq)).clamp_min(1e-12).pow(gamma) * logq).sum(1)
    return -(wp * logq).sum(1)


def batch_mean(per: Tensor, labels: Tensor, weight: Tensor | None) -> Tensor:
    """Σ_i per_i / Σ_i w_{y_i} (the plain mean without weights). The denominator uses the *given*
    labels, also for label_flip: then E_flip[loss] equals the weighted LS loss exactly
    (F.cross_entropy(weight=w) on ỹ would divide by Σ w_ỹ, a biased ratio)."""
    return per.mean() if weight is None else per.sum() / weight[labels].sum()


@dataclass(frozen=True)
class ConfidencePenalty:
    """Pereyra et al. 2017, eq. 2: CE - β·H(q), H(q) = -Σ_k q_k log q_k; with class weights the
    penalty of sample i is weighted by w_{y_i}, like its cross-entropy."""

    beta: float

    def __call__(self, logits: Tensor, logq: Tensor, labels: Tensor, weight: Tensor | None) -> Tensor:
        neg_entropy = (logq.exp() * logq).sum(1)
        return self.beta * (neg_entropy if weight is None else neg_entropy * weight[labels])


@dataclass(frozen=True)
class MarginPenalty:
    """Margin-based label smoothing, MbLS (Liu et al., CVPR 2022, eq. 7): CE + λ·mean_{i,k}
    max(0, max_j z_ij - z_ik - m) on the raw logits. Per sample: λ·Σ_k max(0, d_ik - m) / K, so the
    batch mean is the authors' mean over B·K terms (their `F.relu(diff - margin).mean()`): λ's
    effect scales with 1/K. With class weights the term of sample i is weighted by w_{y_i}."""

    margin: float
    weight: float

    def __call__(self, logits: Tensor, logq: Tensor, labels: Tensor, weight: Tensor | None) -> Tensor:
        z = logits.float()
        gaps = z.max(dim=1, keepdim=True).values - z  # d_ik >= 0, 0 for the largest logit
        per = self.weight * F.relu(gaps - self.margin).mean(1)
        return per if weight is None else per * weight[labels]


@dataclass(frozen=True)
class LogitNorm:
    """LogitNorm (Wei et al., ICML 2022, eq. 6): the training loss sees z / (τ·‖z‖₂), with the
    authors' 1e-7 added to the norm; only in training, evaluation scores the raw logits, as in the
    paper. A positive scale per sample, so the argmax (training accuracy) is unchanged."""

    tau: float

    def __call__(self, logits: Tensor) -> Tensor:
        return logits / ((logits.norm(p=2, dim=1, keepdim=True) + 1e-7) * self.tau)


def kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z/T)) per sample, [B] (Hinton, Vinyals & Dean 2015): the T²
    keeps the soft term's gradient on the scale of the hard term's as T changes. Its batch mean
    equals T²·torch.nn.KLDivLoss(reduction="batchmean")(log_softmax(z/T), softmax(z_t/T))."""
    T = temperature
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    log_p = F.log_softmax(student_logits.float() / T, dim=1)
    return T * T * (log_p_t.exp() * (log_p_t - log_p)).sum(1)


@dataclass(frozen=True)
class Distillation:
    """L = (1-α)·H(p'(y), q) + α·T²·KL(softmax(z_t/T) ‖ softmax(z/T)) per sample; with class
    weights the soft term of sample i is weighted by w_{y_i}, like its cross-entropy."""

    alpha: float
    temperature: float

    def combine(self, per_ce: Tensor, logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                weight: Tensor | None) -> Tensor:
        kd = kd_per_sample(logits, teacher_logits, self.temperature)
        return (1 - self.alpha) * per_ce + self.alpha * (kd if weight is None else kd * weight[labels])


class Batch(NamedTuple):
    """A training batch as the loss sees it (Criterion.targets)."""

    x: Tensor  # the model's input, [B, C, H, W] (mixed when the run mixes)
    p: Tensor  # the target distribution per sample, [B, K]
    labels: Tensor  # the given labels, [B]: class weights' denominator Σ_i w_{y_i}
    acc_labels: Tensor  # what training accuracy counts against: the dominant label of a mixed pair
    teacher: Tensor | None = None  # loss=distill: the teacher's logits on x, [B, K]


# --- the configured loss ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """The training loss of a run, assembled once from the config (make_criterion).

    A training step calls `batch = criterion.targets(x, y, g, mix_g, idx)`, runs the model on
    batch.x, then `criterion.loss(logits, batch)`; `criterion(logits, y, g)` does both for an
    unmixed batch without a teacher.
    """

    num_classes: int
    target: Smoothed  # the target builder (Smoothed or Flipped)
    weight: Tensor | None = None  # [K] class weights
    gamma: float = 0.0  # focal exponent (0: cross-entropy)
    penalties: tuple[Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor], ...] = ()
    binary: bool = False  # one sigmoid output, binary LS
    logit_norm: LogitNorm | None = None
    mixer: "Mixer | None" = None
    teacher: "Teacher | None" = None
    distill: Distillation | None = None

    @property
    def num_outputs(self) -> int:
        return 1 if self.binary else self.num_classes

    @property
    def epsilon(self) -> float:
        return self.target.epsilon

    def expected_target(self, labels: Tensor) -> Tensor:
        """The (expected) soft target p' per sample, [B, K]; for label_flip it is E[onehot(ỹ)]."""
        return self.target.expected(labels)

    def targets(self, x: Tensor, labels: Tensor, g: torch.Generator | None, mix_g: torch.Generator | None = None,
                idx: Tensor | None = None) -> Batch:
        """The batch the loss sees: targets from the labels (g: label_flip's draws), mixed with a
        partner (mix_g: the data seed's stream), then the teacher's logits on what the model sees
        (idx: the samples' positions in the training split, for the teacher's cache)."""
        x, p = self.target(x, labels, g, idx)
        acc_labels = labels
        if self.mixer is not None:
            from ls_bench.data.mixing import dominant

            mixed = self.mixer(x, p, mix_g)
            x, p, acc_labels = mixed.x, mixed.p, dominant(labels, mixed.lam, mixed.perm)
            idx = None if mixed.lam < 1 else idx  # a mixed batch is new images: no cached teacher logits
        teacher = self.teacher(x, idx) if self.teacher is not None else None
        return Batch(x, p, labels, acc_labels, teacher)

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """The batch loss; logits [B, K] ([B, 1] for binary)."""
        p, labels = batch.p, batch.labels
        if self.binary:
            # Binary LS, label-noise convention: y' = (1-ε)y + ε(1-y) = p[:, 1] (prior `others` at
            # K = 2), one sigmoid output z; equals softmax LS on logits [0, z] at uniform 2ε.
            return F.binary_cross_entropy_with_logits(logits.float().squeeze(1), p[:, 1])
        z = logits.float() if self.logit_norm is None else self.logit_norm(logits.float())
        logq = F.log_softmax(z, dim=1)
        per = soft_ce_per_sample(logq, p, self.weight, self.gamma)
        for term in self.penalties:
            per = per + term(logits, logq, labels, self.weight)
        if self.distill is not None:
            per = self.distill.combine(per, logits, batch.teacher, labels, self.weight)
        return batch_mean(per, labels, self.weight)

    def __call__(self, logits: Tensor, labels: Tensor, g: torch.Generator | None = None) -> Tensor:
        """The loss of an unmixed batch without a teacher: targets from the labels, then the loss."""
        if self.distill is not None:
            raise TypeError("a distillation criterion needs the teacher's logits: call criterion.loss(logits, "
                            "criterion.targets(x, labels, g, mix_g, idx))")
        _, p = self.target(logits, labels, g)
        return self.loss(logits, Batch(logits, p, labels, labels))

    def to(self, device: torch.device) -> "Criterion":
        """Every constant tensor on `device`, once (a per-step copy would wait for the GPU's queue)."""
        return replace(self, target=self.target.to(device),
                       weight=None if self.weight is None else self.weight.to(device))


def logit_terms(cfg: LossConfig) -> tuple[Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor], ...]:
    if cfg.name == "confidence_penalty":
        return (ConfidencePenalty(float(cfg.beta)),)
    if cfg.name == "margin":
        return (MarginPenalty(float(cfg.margin), float(cfg.margin_weight)),)
    return ()


def make_criterion(cfg: LossConfig, num_classes: int, class_counts: Tensor, mixer: "Mixer | None" = None,
                   teacher: "Teacher | None" = None, human: Tensor | None = None) -> Criterion:
    """Build and check the loss for a dataset with `num_classes` classes; errors are one line.
    The ranges that need no data (ε, γ, β, m, λ, τ, α, T) are checked once, in config.validate;
    mixer (ls_bench.data.mixing.make_mixer) and teacher (ls_bench.teacher.load_teacher) come built;
    human: loss.prior=human's [N_train, K] distributions (ls_bench.data.human.human_tables)."""
    if cfg.name == "binary" and num_classes != 2:
        raise ConfigError(f"loss.name='binary' needs 2 classes but the data has {num_classes}; "
                          f"pick two with data.classes=[a,b]")
    if (cfg.name == "distill") != (teacher is not None):
        raise ValueError("loss=distill needs a teacher, and only loss=distill takes one")
    per_image = None
    if cfg.prior == "human":
        if human is None or human.shape[1] != num_classes:
            raise invalid("loss.prior", cfg.prior, "the training images have no human label distribution (loss.human)")
        per_image = human.float()
    prior = per_image.mean(0) if per_image is not None else prior_vector(cfg.prior, num_classes, class_counts)
    weight = class_weight_vector(cfg.class_weights, num_classes, class_counts)
    builder = Flipped if cfg.name == "label_flip" else Smoothed
    return Criterion(num_classes, builder(num_classes, float(cfg.epsilon), prior, per_image), weight,
                     gamma=float(cfg.gamma) if cfg.name == "focal" else 0.0, penalties=logit_terms(cfg),
                     binary=cfg.name == "binary",
                     logit_norm=LogitNorm(float(cfg.tau)) if cfg.name == "logit_norm" else None,
                     mixer=mixer, teacher=teacher,
                     distill=Distillation(float(cfg.kd_alpha), float(cfg.kd_temperature)) if teacher is not None
                     else None)
