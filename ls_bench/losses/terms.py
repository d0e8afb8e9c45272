"""The soft cross-entropy, its batch mean and the logit terms added to it (confidence penalty,
MbLS margin, LogitNorm's transform, distillation's term)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_ce_per_sample(logq: Tensor, p: Tensor, weight: Tensor | None = None, gamma: float | Tensor = 0.0) -> Tensor:
    """-Σ_k w_k p_k (1 - q_k)^γ log q_k per sample, [B], for the target p and the model's log q = log_softmax(z);
    γ = 0 is the soft cross-entropy; γ may be a [B, 1] tensor, one exponent per sample (FLSD-53).

    Class weights scale every term of the target, both LS terms included (PyTorch's convention).
    Focal loss (Lin et al. 2017, eq. 4 without α) is γ > 0: 1 - q as -expm1(log q) (exact near
    q = 1), floored, since d(x^γ)/dx is infinite at x = 0 for γ < 1 and a confidently right
    sample (q = 1 in float32) would make the gradient NaN.
    """
    wp = p if weight is None else p * weight
    if isinstance(gamma, Tensor) or gamma:
        return -(wp * (-torch.expm1(logq)).clamp_min(1e-12).pow(gamma) * logq).sum(1)
    return -(wp * logq).sum(1)


GAMMA_SCHEDULES = ("flsd53",)  # loss.gamma_schedule's names (null: the fixed loss.gamma)


def flsd53_gamma(logq: Tensor, labels: Tensor) -> Tensor:
    """FLSD-53 (Mukhoti et al., "Calibrating deep neural networks using focal loss", NeurIPS 2020,
    sec. 5): γ = 5 for a sample whose true-class probability p_y < 0.2, else γ = 3, as a [B, 1]
    tensor. p_y is detached, as in the authors' torrvision/focal_calibration
    (Losses/focal_loss_adaptive_gamma.py picks γ from pt.item(): 5 below 0.2, 3 in [0.2, 0.5), and
    its γ = 3 from 0.5 up): γ is a constant of each step, not a path for the gradient."""
    p_y = logq.detach().gather(1, labels.unsqueeze(1)).exp()
    return torch.where(p_y < 0.2, 5.0, 3.0)


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
