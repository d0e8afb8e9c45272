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

The package, one idea per file: targets.py (priors and target builders), terms.py (the soft
cross-entropy, the logit terms, FLSD-53's γ), classwise.py (a class-wise ε, MiSLAS's schedule),
relaxation.py (label relaxation), online.py (online label smoothing and its run state S),
criterion.py (the configured loss and make_criterion). Negative label smoothing is ε < 0 in the
same target (config.validate holds its range).
"""

from ls_bench.losses.classwise import class_epsilon, mislas_epsilon
from ls_bench.losses.criterion import LOSSES, PRIORS, Batch, Criterion, check_loss, logit_terms, make_criterion
from ls_bench.losses.online import OnlineSmoothed
from ls_bench.losses.relaxation import LabelRelaxation
from ls_bench.losses.targets import (
    PRIOR_HELP,
    WEIGHTS_HELP,
    Flipped,
    Smoothed,
    as_multiclass,
    class_weight_vector,
    prior_vector,
    sample_prior,
    smooth_targets,
)
from ls_bench.losses.terms import (
    ConfidencePenalty,
    Distillation,
    LogitNorm,
    MarginPenalty,
    batch_mean,
    flsd53_gamma,
    kd_per_sample,
    soft_ce_per_sample,
)

__all__ = ["LOSSES", "PRIORS", "PRIOR_HELP", "WEIGHTS_HELP", "Batch", "ConfidencePenalty", "Criterion", "Distillation",
           "Flipped", "LogitNorm", "MarginPenalty", "Smoothed", "as_multiclass", "batch_mean", "check_loss",
           "class_weight_vector", "kd_per_sample", "logit_terms", "make_criterion", "prior_vector", "sample_prior",
           "smooth_targets", "soft_ce_per_sample", "class_epsilon", "mislas_epsilon", "OnlineSmoothed",
           "LabelRelaxation", "flsd53_gamma"]
