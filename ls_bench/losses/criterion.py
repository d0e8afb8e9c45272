"""The configured loss: the name checks, the `Batch` a step sees, the `Criterion` that builds
targets and sums the terms, and `make_criterion`, which assembles it from the config."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ls_bench.config import LossConfig
from ls_bench.errors import ConfigError, invalid
from ls_bench.losses.classwise import SCHEDULES, class_epsilon
from ls_bench.losses.online import OnlineSmoothed
from ls_bench.losses.relaxation import LabelRelaxation
from ls_bench.losses.targets import (
    PRIOR_HELP,
    WEIGHTS_HELP,
    Flipped,
    Smoothed,
    _prior_list,
    _weight_list,
    class_weight_vector,
    prior_vector,
)
from ls_bench.losses.terms import (
    GAMMA_SCHEDULES,
    ConfidencePenalty,
    Distillation,
    LogitNorm,
    MarginPenalty,
    batch_mean,
    flsd53_gamma,
    soft_ce_per_sample,
)

if TYPE_CHECKING:
    from ls_bench.data.mixing import Mixer
    from ls_bench.teacher import Teacher

LOSSES = ("label_smoothing", "label_flip", "focal", "confidence_penalty", "margin", "logit_norm", "distill", "binary",
          "label_relaxation", "online_ls")
PRIORS = ("uniform", "others", "class_prior", "human")


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
    _check_variants(cfg)
    if cfg.name == "binary":
        # y' = (1-ε)y + ε(1-y) puts all of ε on the other class: that is the `others` prior at K = 2.
        if cfg.prior != "others":
            raise invalid("loss.prior", cfg.prior, "must be 'others' with loss=binary, whose target is "
                                                   "y' = (1-ε)y + ε(1-y) (uniform prior at 2ε); or use "
                                                   "loss=label_smoothing on 2 classes")
        if cfg.class_weights is not None:
            raise invalid("loss.class_weights", cfg.class_weights, "null with loss=binary")


def _check_variants(cfg: LossConfig) -> None:
    """The keys of issue 24's variants: FLSD-53's schedule, label relaxation's α, online LS's α, ε's schedule."""
    if cfg.epsilon_schedule is not None and cfg.epsilon_schedule not in SCHEDULES:
        raise invalid("loss.epsilon_schedule", cfg.epsilon_schedule, "null (loss.epsilon as given) or mislas")
    if cfg.name == "online_ls" and not (isinstance(cfg.ols_alpha, (int, float)) and 0 <= cfg.ols_alpha <= 1):
        raise invalid("loss.ols_alpha", cfg.ols_alpha, "must be in [0, 1] (the weight of the one-hot term)")
    if cfg.gamma_schedule is not None:
        if cfg.gamma_schedule not in GAMMA_SCHEDULES:
            raise invalid("loss.gamma_schedule", cfg.gamma_schedule, "null (the fixed loss.gamma) or flsd53")
        if cfg.name != "focal":
            raise invalid("loss.gamma_schedule", cfg.gamma_schedule, f"only with loss=focal (loss={cfg.name} has no γ)")
    if cfg.name == "label_relaxation":
        if not (isinstance(cfg.relax_alpha, (int, float)) and 0 <= cfg.relax_alpha < 1):
            raise invalid("loss.relax_alpha", cfg.relax_alpha, "must be in [0, 1) (0 is cross-entropy)")
        why = "with loss=label_relaxation, which builds its own target from the prediction (loss.relax_alpha)"
        if cfg.epsilon != 0:
            raise invalid("loss.epsilon", cfg.epsilon, f"must be 0 {why}")
        if cfg.epsilon_schedule is not None:
            raise invalid("loss.epsilon_schedule", cfg.epsilon_schedule, f"must be null {why}")


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
    gamma_schedule: Callable[[Tensor, Tensor], Tensor] | None = None  # per-sample γ from (log q, y): FLSD-53
    relax: LabelRelaxation | None = None  # label relaxation: replaces the soft CE
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
    def epsilon(self) -> float | Tensor:
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
        teacher = self.teacher(x, idx, acc_labels) if self.teacher is not None else None  # tallied per epoch
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
        self.target.observe(logq, labels)  # online LS: the step's correct predictions (no-op for the others)
        gamma = self.gamma if self.gamma_schedule is None else self.gamma_schedule(logq, labels)
        per = (soft_ce_per_sample(logq, p, self.weight, gamma) if self.relax is None else
               self.relax(logq, labels, self.weight))
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

    # The run state a target may carry (online LS's S): the loop's per-epoch hook, last.pt, TensorBoard.
    def end_epoch(self) -> None:
        """The loop calls this after every training epoch (online LS: S from the epoch's correct predictions)."""
        self.target.end_epoch()

    @property
    def stateful(self) -> bool:
        """Whether last.pt must hold this criterion's state_dict."""
        return bool(self.target.state_dict())

    def state_dict(self) -> dict[str, Tensor]:
        return self.target.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.target.load_state_dict(state)

    def images(self) -> dict[str, Tensor]:
        return self.target.images()

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


def loss_terms(cfg: LossConfig) -> dict[str, Any]:
    """The Criterion's fields that shape the loss of a step, by loss name (the target aside)."""
    return {"gamma": float(cfg.gamma) if cfg.name == "focal" else 0.0,
            "gamma_schedule": flsd53_gamma if cfg.gamma_schedule == "flsd53" else None,
            "penalties": logit_terms(cfg), "binary": cfg.name == "binary",
            "logit_norm": LogitNorm(float(cfg.tau)) if cfg.name == "logit_norm" else None,
            "relax": LabelRelaxation(float(cfg.relax_alpha)) if cfg.name == "label_relaxation" else None}


def make_target(cfg: LossConfig, num_classes: int, class_counts: Tensor, human: Tensor | None) -> Smoothed:
    """The target builder: smoothing (any prior, a class-wise ε), flipping, online LS."""
    per_image = None
    if cfg.prior == "human":
        if human is None or human.shape[1] != num_classes:
            raise invalid("loss.prior", cfg.prior, "the training images have no human label distribution (loss.human)")
        per_image = human.float()
    prior = per_image.mean(0) if per_image is not None else prior_vector(cfg.prior, num_classes, class_counts)
    eps = class_epsilon(cfg.epsilon, cfg.epsilon_schedule, float(cfg.epsilon_head), float(cfg.epsilon_tail),
                        num_classes, class_counts)
    if cfg.name == "online_ls":
        return OnlineSmoothed.start(num_classes, eps, prior, float(cfg.ols_alpha))
    builder = Flipped if cfg.name == "label_flip" else Smoothed
    return builder(num_classes, eps, prior, per_image)


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
    target = make_target(cfg, num_classes, class_counts, human)
    weight = class_weight_vector(cfg.class_weights, num_classes, class_counts)
    distill = Distillation(float(cfg.kd_alpha), float(cfg.kd_temperature)) if teacher is not None else None
    return Criterion(num_classes, target, weight, **loss_terms(cfg), mixer=mixer, teacher=teacher, distill=distill)
