"""Every loss against an independent computation: PyTorch built-ins, hand-computed numbers,
closed forms, and a Monte-Carlo check that label flipping is label smoothing in expectation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ls_bench.config import LossConfig
from ls_bench.errors import ConfigError
from ls_bench.losses import (
    Batch,
    as_multiclass,
    check_loss,
    class_weight_vector,
    make_criterion,
    prior_vector,
    smooth_targets,
)

K = 5
COUNTS = torch.tensor([40, 10, 25, 5, 20])  # an imbalanced training set: N = 100


def crit(counts: torch.Tensor = COUNTS, **kw):
    return make_criterion(LossConfig(**kw), len(counts), counts)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, K, generator=g) * 3, torch.randint(0, K, (32,), generator=g)


# --- targets and priors ------------------------------------------------------------------------


def test_uniform_and_others_targets_follow_their_conventions() -> None:
    y = torch.tensor([2])
    uni = smooth_targets(y, 4, 0.2, prior_vector("uniform", 4))[0]
    oth = smooth_targets(y, 4, 0.2, prior_vector("others", 4))[0]
    assert uni.tolist() == pytest.approx([0.05, 0.05, 0.85, 0.05])  # true class 1-ε+ε/K (PyTorch, Szegedy)
    assert oth.tolist() == pytest.approx([0.2 / 3, 0.2 / 3, 0.8, 0.2 / 3])  # true class 1-ε (Mukhoti et al.)
    # uniform at ε is others at ε·(K-1)/K
    assert smooth_targets(y, 4, 0.2 * 3 / 4, None)[0].tolist() == pytest.approx(uni.tolist())


def test_class_prior_and_list_prior() -> None:
    assert prior_vector("class_prior", K, COUNTS).tolist() == pytest.approx([0.4, 0.1, 0.25, 0.05, 0.2])
    t = smooth_targets(torch.tensor([0, 3]), K, 0.1, prior_vector([0.5, 0.5, 0, 0, 0], K))
    assert torch.allclose(t, torch.tensor([[0.95, 0.05, 0, 0, 0], [0.05, 0.05, 0, 0.9, 0]]))
    # ten entries of 0.1 sum to 0.9999999999999999 in floats: accepted
    assert prior_vector([0.1] * 10, 10).sum().item() == pytest.approx(1)


def test_uniform_ls_equals_pytorch(batch) -> None:
    z, y = batch
    for eps in (0.0, 0.1, 0.3):
        ours = crit(epsilon=eps)(z, y)
        assert ours.item() == pytest.approx(F.cross_entropy(z, y, label_smoothing=eps).item(), rel=1e-6)


@pytest.mark.parametrize("prior", ["others", "class_prior", [0.1, 0.2, 0.3, 0.2, 0.2]])
def test_other_priors_equal_soft_target_cross_entropy(batch, prior) -> None:
    """Against PyTorch's probability-target cross-entropy with the target built by hand."""
    z, y = batch
    eps = 0.2
    if prior == "others":
        u = (1 - F.one_hot(y, K).double()) / (K - 1)
    elif prior == "class_prior":
        u = (COUNTS / COUNTS.sum()).double().expand(len(y), K)
    else:
        u = torch.tensor(prior, dtype=torch.float64).expand(len(y), K)
    target = (1 - eps) * F.one_hot(y, K).double() + eps * u
    ref = F.cross_entropy(z.double(), target)
    assert crit(epsilon=eps, prior=prior)(z, y).item() == pytest.approx(ref.item(), rel=1e-6)


def test_ls_decomposes_into_nll_plus_cross_entropy_to_prior(batch) -> None:
    """L' = (1-ε)·H(p, q) + ε·H(u, q) (Müller et al. 2019, eq. 2 generalised to any u)."""
    z, y = batch
    u = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2])
    logq = z.log_softmax(1)
    ref = 0.7 * F.nll_loss(logq, y) + 0.3 * (-(u * logq).sum(1)).mean()
    assert crit(epsilon=0.3, prior=u.tolist())(z, y).item() == pytest.approx(ref.item(), rel=1e-5)


# --- class weights -----------------------------------------------------------------------------


def test_class_weights_equal_pytorch_with_label_smoothing(batch) -> None:
    z, y = batch
    w = [0.5, 2.0, 1.0, 3.0, 0.25]
    for eps in (0.0, 0.1, 0.4):
        ref = F.cross_entropy(z, y, weight=torch.tensor(w), label_smoothing=eps)
        assert crit(epsilon=eps, class_weights=w)(z, y).item() == pytest.approx(ref.item(), rel=1e-6)
    bal = class_weight_vector("balanced", K, COUNTS)
    ref = F.cross_entropy(z, y, weight=bal, label_smoothing=0.1)
    assert crit(epsilon=0.1, class_weights="balanced")(z, y).item() == pytest.approx(ref.item(), rel=1e-6)


def test_balanced_weights_equal_scikit_learn() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    labels = torch.repeat_interleave(torch.arange(K), COUNTS).numpy()
    ref = compute_class_weight("balanced", classes=np.arange(K), y=labels)
    assert class_weight_vector("balanced", K, COUNTS).tolist() == pytest.approx(ref.tolist())


def test_smoothing_term_is_weighted_too(batch) -> None:
    """The common bug weights only the NLL term: (1-ε)·CE_w + ε·(unweighted smoothing term).

    With every label 0, changing the weight of class 3 cannot touch the NLL term; it must still
    change our loss (and PyTorch's) through the smoothing term, and it leaves the buggy one alone."""
    z, _ = batch
    y = torch.zeros(len(z), dtype=torch.long)
    eps = 0.2

    def buggy(w: torch.Tensor) -> torch.Tensor:
        smooth = -z.log_softmax(1).mean(1).mean()  # ε·H(u, q) without weights, plain batch mean
        return (1 - eps) * F.cross_entropy(z, y, weight=w) + eps * smooth

    w1, w2 = torch.tensor([1.0, 1, 1, 1, 1]), torch.tensor([1.0, 1, 1, 5, 1])
    ours1 = crit(epsilon=eps, class_weights=w1.tolist())(z, y)
    ours2 = crit(epsilon=eps, class_weights=w2.tolist())(z, y)
    assert ours2.item() != pytest.approx(ours1.item(), rel=1e-3)
    assert buggy(w2).item() == pytest.approx(buggy(w1).item())
    assert ours2.item() == pytest.approx(F.cross_entropy(z, y, weight=w2, label_smoothing=eps).item(), rel=1e-6)
    assert ours2.item() != pytest.approx(buggy(w2).item(), rel=1e-3)


def test_weighted_non_uniform_prior_formula(batch) -> None:
    """With weights and any prior: -Σ_i Σ_k w_k p'_ik log q_ik / Σ_i w_{y_i}, computed by hand."""
    z, y = batch
    w = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25], dtype=torch.float64)
    u = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2], dtype=torch.float64)
    logq = z.double().log_softmax(1)
    num = 0.0
    for i in range(len(y)):
        for k in range(K):
            p = 0.75 * (k == y[i]) + 0.25 * u[k]
            num -= w[k] * p * logq[i, k]
    ref = num / w[y].sum()
    ours = crit(epsilon=0.25, prior=u.tolist(), class_weights=w.tolist())(z, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


# --- binary LS ---------------------------------------------------------------------------------


def test_binary_ls_hand_formula_and_softmax_mapping() -> None:
    """Binary ε = others-prior ε at K=2 = half the uniform-prior ε of the 2-class softmax on [0, z]."""
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(64, 1, generator=g) * 2, torch.randint(0, 2, (64,), generator=g)
    counts = torch.tensor([30, 34])
    for eps in (0.0, 0.05, 0.2):
        binary = make_criterion(LossConfig(name="binary", epsilon=eps, prior="others"), 2, counts)
        assert binary.num_outputs == 1
        ours = binary(z, y)
        s, t = torch.sigmoid(z.squeeze(1).double()), (1 - eps) * y.double() + eps * (1 - y.double())
        hand = -(t * s.log() + (1 - t) * (1 - s).log()).mean()
        assert ours.item() == pytest.approx(hand.item(), rel=1e-5)
        softmax_uniform = F.cross_entropy(as_multiclass(z), y, label_smoothing=2 * eps)
        assert ours.item() == pytest.approx(softmax_uniform.item(), rel=1e-5)
        assert binary.expected_target(torch.tensor([1]))[0].tolist() == pytest.approx([eps, 1 - eps])


def test_binary_needs_two_classes_and_the_others_prior() -> None:
    with pytest.raises(ConfigError, match="2 classes"):
        make_criterion(LossConfig(name="binary", prior="others"), 10, torch.ones(10))
    with pytest.raises(ConfigError, match="loss.prior"):
        check_loss(LossConfig(name="binary", prior="uniform"))
    with pytest.raises(ConfigError, match="loss.class_weights"):
        check_loss(LossConfig(name="binary", prior="others", class_weights=[1, 2]))


# --- stochastic label flipping -----------------------------------------------------------------


@pytest.mark.parametrize("prior,weights", [("uniform", None), ("others", None), ("class_prior", None),
                                           ([0.6, 0.1, 0.1, 0.1, 0.1], None), ("uniform", [0.5, 2, 1, 3, 0.25])])
def test_label_flip_is_label_smoothing_in_expectation(prior, weights) -> None:
    """Monte Carlo: the mean of R independent flip losses on fixed logits approaches the LS loss.

    Holds with class weights too, because the flip loss divides by the weights of the *given*
    labels (a constant), so E[Σ_i w_ỹi (-log q_iỹi)] / Σ_i w_yi is the weighted LS loss."""
    g = torch.Generator().manual_seed(2)
    z, y = torch.randn(8, K, generator=g) * 2, torch.randint(0, K, (8,), generator=g)
    eps, R = 0.3, 20000
    flip = crit(name="label_flip", epsilon=eps, prior=prior, class_weights=weights)
    ls = crit(name="label_smoothing", epsilon=eps, prior=prior, class_weights=weights)
    # R copies of the batch flipped in one go are R independent draws of the batch loss.
    draws = _per_copy(flip, z.repeat(R, 1), y.repeat(R), torch.Generator().manual_seed(3), R)
    se = draws.std() / math.sqrt(R)
    assert abs(draws.mean() - ls(z, y)) < 4 * se
    assert se < 0.01 * ls(z, y)  # the test has power: a 4% error in the loss would fail it
    # the batch call is the same estimator: its draws match the per-copy formula exactly
    gen_a, gen_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert flip(z, y, gen_a).item() == pytest.approx(_per_copy(flip, z, y, gen_b, 1).item(), rel=1e-6)


def _per_copy(flip, zz: torch.Tensor, yy: torch.Tensor, gen: torch.Generator, R: int) -> torch.Tensor:
    """Flip all R·B labels in one call, then the loss of each copy of the batch separately."""
    y_tilde = flip.target.flip(yy, gen)
    logq = zz.log_softmax(1)
    w = flip.weight if flip.weight is not None else torch.ones(K)
    per = -(w[y_tilde] * logq.gather(1, y_tilde[:, None]).squeeze(1)).view(R, -1).sum(1)
    return per / w[yy.view(R, -1)].sum(1)


def test_label_flip_draws_match_the_prior() -> None:
    """Flip rate ε and the flipped-to classes follow u; the call itself uses the same draws."""
    crit_ = crit(name="label_flip", epsilon=0.4, prior=[0.6, 0.1, 0.1, 0.1, 0.1])
    y = torch.full((50000,), 2)
    y_t = crit_.target.flip(y, torch.Generator().manual_seed(0))
    freq = torch.bincount(y_t, minlength=K) / len(y)
    assert freq.tolist() == pytest.approx([0.4 * 0.6, 0.04, 0.6 + 0.04, 0.04, 0.04], abs=0.01)
    z = torch.randn(len(y), K)
    a = crit_(z, y, torch.Generator().manual_seed(0))
    assert a.item() == pytest.approx(F.cross_entropy(z, y_t).item(), rel=1e-6)


def test_label_flip_is_seeded() -> None:
    c = crit(name="label_flip", epsilon=0.5)
    y = torch.arange(K).repeat(40)
    a = c.target.flip(y, torch.Generator().manual_seed(7))
    assert torch.equal(a, c.target.flip(y, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, c.target.flip(y, torch.Generator().manual_seed(8)))
    others = crit(name="label_flip", epsilon=0.5, prior="others").target.flip(y, torch.Generator().manual_seed(7))
    assert ((others != y).float().mean() - 0.5).abs() < 0.1  # `others` always lands on another class


def test_label_flip_with_one_seed_is_nested_in_epsilon() -> None:
    """The draws do not depend on ε, so paired runs differing in ε flip nested sets of samples."""
    y = torch.arange(K).repeat(400)
    small = crit(name="label_flip", epsilon=0.1, prior="others").target.flip(y, torch.Generator().manual_seed(9))
    large = crit(name="label_flip", epsilon=0.3, prior="others").target.flip(y, torch.Generator().manual_seed(9))
    a, b = small != y, large != y
    assert (a & ~b).sum() == 0 and b.sum() > a.sum() and torch.equal(small[a], large[a])


# --- focal loss and confidence penalty: hand-computed values -----------------------------------


def test_focal_hand_computed() -> None:
    # logits [0, ln 3] -> q = [1/4, 3/4]; label 1; γ = 2: -(1/4)^2 · ln(3/4)
    z, y = torch.tensor([[0.0, math.log(3)]]), torch.tensor([1])
    c = make_criterion(LossConfig(name="focal", gamma=2.0), 2, torch.ones(2))
    assert c(z, y).item() == pytest.approx(0.0625 * -math.log(0.75), rel=1e-6)  # 0.017981
    # γ = 0 is cross-entropy; smoothing applies to the focal target too: ε=0.2 uniform -> t = [0.1, 0.9]
    c0 = make_criterion(LossConfig(name="focal", gamma=0.0), 2, torch.ones(2))
    assert c0(z, y).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    cs = make_criterion(LossConfig(name="focal", gamma=1.0, epsilon=0.2), 2, torch.ones(2))
    hand = -(0.1 * 0.75 * math.log(0.25) + 0.9 * 0.25 * math.log(0.75))
    assert cs(z, y).item() == pytest.approx(hand, rel=1e-6)


def test_focal_gradient_is_finite_for_gamma_below_one() -> None:
    """(1-q)^γ has an infinite derivative at q = 1 when γ < 1; a saturated sample must not give NaN."""
    z = torch.tensor([[40.0, 0.0, 0.0], [1.0, 2.0, 0.0]], requires_grad=True)
    c = make_criterion(LossConfig(name="focal", gamma=0.5), 3, torch.ones(3))
    c(z, torch.tensor([0, 1])).backward()
    assert torch.isfinite(z.grad).all() and z.grad[0].abs().max() < 1e-6
    ref = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)  # the second sample alone, times 1/2
    c(ref, torch.tensor([1])).backward()
    assert torch.allclose(z.grad[1], ref.grad[0] / 2, atol=1e-6)


def test_confidence_penalty_hand_computed() -> None:
    # q = [1/4, 3/4], label 1, β = 0.5: -ln(3/4) - 0.5·H(q), H(q) = -(¼ ln ¼ + ¾ ln ¾) = 0.562335
    z, y = torch.tensor([[0.0, math.log(3)]]), torch.tensor([1])
    c = make_criterion(LossConfig(name="confidence_penalty", beta=0.5), 2, torch.ones(2))
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert c(z, y).item() == pytest.approx(-math.log(0.75) - 0.5 * entropy, abs=1e-6)  # 0.006515 (float32)


def test_confidence_penalty_against_pytorch_entropy(batch) -> None:
    z, y = batch
    c = crit(name="confidence_penalty", beta=0.3)
    ent = torch.distributions.Categorical(logits=z).entropy().mean()
    assert c(z, y).item() == pytest.approx((F.cross_entropy(z, y) - 0.3 * ent).item(), rel=1e-5)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,key", [
    ({"prior": "gaussian"}, "loss.prior"),
    ({"prior": [0.5, 0.6, 0, 0, 0]}, "sum to 1"),
    ({"prior": [1.2, -0.2, 0, 0, 0]}, "loss.prior"),
    ({"prior": [0.5, float("nan"), 0.5, 0, 0]}, "loss.prior"),
    ({"prior": ["a", 1, 0, 0, 0]}, "loss.prior"),
    ({"prior": 0.5}, "loss.prior"),
    ({"prior": None}, "loss.prior"),
    ({"class_weights": "auto"}, "loss.class_weights"),
    ({"class_weights": [1, -1, 1, 1, 1]}, "loss.class_weights"),
    ({"class_weights": [0, 0, 0, 0, 0]}, "loss.class_weights"),
    ({"class_weights": [1, float("inf"), 1, 1, 1]}, "loss.class_weights"),
    ({"name": "smooth"}, "loss.name"),
])
def test_bad_loss_config_fails_without_data(kw, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        check_loss(LossConfig(**kw))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw", [{"prior": [0.5, 0.5]}, {"class_weights": [1, 2, 3]}])
def test_list_of_wrong_length_fails_once_k_is_known(kw) -> None:
    check_loss(LossConfig(**kw))  # syntax is fine...
    with pytest.raises(ConfigError, match=f"K={K}"):  # ...but K = 5
        crit(**kw)


# --- the rivals: margin (MbLS), LogitNorm, distillation ---------------------------------------------


def test_margin_loss_is_ce_plus_the_mean_of_b_times_k_hinges_by_hand() -> None:
    z = torch.tensor([[1.0, 12.0, 0.0], [5.0, 5.0, -7.0]])
    y = torch.tensor([1, 0])
    c = make_criterion(LossConfig(name="margin", margin=10.0, margin_weight=0.1), 3, torch.ones(3))
    # gaps to the max: [11, 0, 12] and [0, 0, 12]; beyond m = 10: [1, 0, 2] and [0, 0, 2]: 5 over 6 terms
    expected = F.cross_entropy(z, y) + 0.1 * (5 / 6)
    assert float(c(z, y)) == pytest.approx(float(expected), rel=1e-6)
    loose = make_criterion(LossConfig(name="margin", margin=20.0), 3, torch.ones(3))
    assert float(loose(z, y)) == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-6)  # no gap beyond m


def test_logit_norm_divides_by_tau_times_the_norm_in_training_only() -> None:
    z, y = torch.tensor([[3.0, 4.0]]), torch.tensor([1])
    c = make_criterion(LossConfig(name="logit_norm", tau=0.04), 2, torch.ones(2))
    # z / (0.04 · 5) = [15, 20]: CE = log(1 + e^-5)
    assert float(c(z, y)) == pytest.approx(math.log1p(math.exp(-5)), rel=1e-5)
    assert float(c(10 * z, y)) == pytest.approx(float(c(z, y)), rel=1e-5)  # scale-free
    assert c.expected_target(y).tolist() == [[0.0, 1.0]]  # the target is untouched


def test_distillation_term_equals_torch_kldivloss_and_alpha_zero_the_plain_loss() -> None:
    g = torch.Generator().manual_seed(0)
    z, zt = torch.randn(16, 10, generator=g), 3 * torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    batch = Batch(z, F.one_hot(y, 10).float(), y, y, zt)
    for T in (1.0, 2.0, 4.0):
        kd = make_criterion(LossConfig(name="distill", kd_alpha=1.0, kd_temperature=T), 10, torch.ones(10),
                            teacher=lambda x, idx: zt)
        ref = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(z / T, 1), F.softmax(zt / T, 1)) * T * T
        assert float(kd.loss(z, batch)) == pytest.approx(float(ref), rel=1e-5)
    plain = make_criterion(LossConfig(epsilon=0.1), 10, torch.ones(10))
    none = make_criterion(LossConfig(name="distill", epsilon=0.1, kd_alpha=0.0), 10, torch.ones(10),
                          teacher=lambda x, idx: zt)
    q = plain.expected_target(y)
    assert float(none.loss(z, Batch(z, q, y, y, zt))) == float(plain(z, y))
    half = make_criterion(LossConfig(name="distill", epsilon=0.1, kd_alpha=0.3, kd_temperature=2.0), 10,
                          torch.ones(10), teacher=lambda x, idx: zt)
    ref = 0.7 * F.cross_entropy(z, y, label_smoothing=0.1) + 0.3 * 4 * torch.nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(z / 2, 1), F.softmax(zt / 2, 1))
    assert float(half.loss(z, Batch(z, q, y, y, zt))) == pytest.approx(float(ref), rel=1e-5)


def test_a_saturated_teacher_teaches_its_labels() -> None:
    """A teacher whose logits are the one-hot labels × 1000 at T = 1 gives the one-hot target:
    the distillation loss and its gradient are cross-entropy's."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 5, (8,), generator=g)
    zt = 1000.0 * F.one_hot(y, 5).float()
    kd = make_criterion(LossConfig(name="distill", kd_alpha=1.0, kd_temperature=1.0), 5, torch.ones(5),
                        teacher=lambda x, idx: zt)
    loss = kd.loss(z, Batch(z, torch.zeros(8, 5), y, y, zt))  # q unused at α = 1
    (grad,) = torch.autograd.grad(loss, z)
    ce = F.cross_entropy(z, y)
    (ref,) = torch.autograd.grad(ce, z)
    assert loss.item() == pytest.approx(ce.item(), rel=1e-5) and torch.allclose(grad, ref, atol=1e-7)


def test_mixed_targets_are_the_mix_of_the_smoothed_targets_and_the_same_pairs_at_every_epsilon() -> None:
    from ls_bench.data.mixing import make_mixer

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    out = {}
    for eps in (0.0, 0.1):
        c = make_criterion(LossConfig(epsilon=eps), 10, torch.ones(10), mixer=make_mixer("mixup", 1.0))
        out[eps] = c.targets(x, y, None, torch.Generator().manual_seed(7))
        ref = make_mixer("mixup", 1.0)(x, c.expected_target(y), torch.Generator().manual_seed(7))
        assert torch.equal(out[eps].x, ref.x) and torch.allclose(out[eps].p, ref.p)
        p = c.expected_target(y)
        assert torch.allclose(out[eps].p, ref.lam * p + (1 - ref.lam) * p[ref.perm], atol=1e-6)
        dominant = y if ref.lam >= 0.5 else y[ref.perm]
        assert torch.equal(out[eps].acc_labels, dominant) and torch.equal(out[eps].labels, y)
    assert torch.equal(out[0.0].x, out[0.1].x)  # the same λ and partners whatever ε is


# --- issue 24: negative label smoothing (Wei et al., ICML 2022) ---------------------------------------


def gls_reference(z: torch.Tensor, y: torch.Tensor, smooth_rate: float) -> torch.Tensor:
    """The authors' loss_gls (UCSC-REAL/negative-label-smoothing), written out:
    (1 - r)·NLL + r·mean_k(-log q_k), averaged over the batch."""
    logq = F.log_softmax(z.double(), dim=-1)
    nll = -logq.gather(1, y.unsqueeze(1)).squeeze(1)
    return ((1 - smooth_rate) * nll + smooth_rate * -logq.mean(-1)).mean()


def test_negative_smoothing_by_hand_and_against_the_authors_formula(batch) -> None:
    # logits [0, ln 3] -> q = [1/4, 3/4], label 1, ε = -0.2, uniform: target [-0.1, 1.1]
    z, y = torch.tensor([[0.0, math.log(3)]]), torch.tensor([1])
    c = make_criterion(LossConfig(epsilon=-0.2, allow_negative=True), 2, torch.ones(2))
    assert c.expected_target(y).tolist()[0] == pytest.approx([-0.1, 1.1])
    hand = -(-0.1 * math.log(0.25) + 1.1 * math.log(0.75))  # 0.177821
    assert c(z, y).item() == pytest.approx(hand, rel=1e-6)
    zb, yb = batch
    for r in (-0.2, -1.0, -8.0):
        ours = crit(epsilon=r, allow_negative=True)(zb, yb)
        assert ours.item() == pytest.approx(gls_reference(zb, yb, r).item(), rel=1e-5)


@pytest.mark.parametrize("overrides,key,says", [
    (["loss.epsilon=-0.2"], "loss.epsilon", "loss.allow_negative=true"),  # the typo guard still holds
    (["loss.epsilon=-8.5", "loss.allow_negative=true"], "loss.epsilon", "[-8, 1)"),
    (["loss.epsilon=1.0", "loss.allow_negative=true"], "loss.epsilon", "[-8, 1)"),
    (["loss=focal", "loss.epsilon=-0.2", "loss.allow_negative=true"], "loss.allow_negative", "label_smoothing"),
])
def test_negative_smoothing_is_refused_in_one_line_outside_its_range(overrides, key, says) -> None:
    from conftest import make_config

    with pytest.raises(ConfigError) as e:
        make_config(*overrides)
    assert str(e.value).startswith(f"{key}=") and says in str(e.value) and "\n" not in str(e.value)
    assert make_config("loss.epsilon=-8", "loss.allow_negative=true").loss.epsilon == -8.0


# --- issue 24: FLSD-53 (Mukhoti et al. 2020) ----------------------------------------------------------


def flsd53_reference(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The authors' FocalLossAdaptive (torrvision/focal_calibration) at gamma=3, written out: γ from
    pt.item() (5 below 0.2, 3 in [0.2, 0.5), gamma=3 from 0.5), -(1-pt)^γ·log pt, here averaged."""
    logpt = F.log_softmax(z, dim=1).gather(1, y.unsqueeze(1)).view(-1)
    pt = logpt.exp()
    gammas = torch.tensor([5.0 if p.item() < 0.2 else 3.0 if p.item() < 0.5 else 3.0 for p in pt])
    return (-1 * (1 - pt) ** gammas * logpt).mean()


def test_flsd53_by_hand_and_against_the_authors_code() -> None:
    # q_y = 1/10 (< 0.2: γ = 5) and q_y = 3/4 (γ = 3)
    z = torch.tensor([[math.log(9), 0.0], [0.0, math.log(3)]], requires_grad=True)
    y = torch.tensor([1, 1])
    c = make_criterion(LossConfig(name="focal", gamma_schedule="flsd53"), 2, torch.ones(2))
    hand = (-(0.9 ** 5) * math.log(0.1) - (0.25 ** 3) * math.log(0.75)) / 2
    loss = c(z, y)
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    (grad,) = torch.autograd.grad(loss, z)
    g = torch.Generator().manual_seed(3)
    zb, yb = torch.randn(64, 10, generator=g) * 2, torch.randint(0, 10, (64,), generator=g)
    zb.requires_grad_(True)
    c10 = make_criterion(LossConfig(name="focal", gamma_schedule="flsd53"), 10, torch.ones(10))
    ours, ref = c10(zb, yb), flsd53_reference(zb, yb)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    (g_ours,) = torch.autograd.grad(ours, zb)
    (g_ref,) = torch.autograd.grad(ref, zb)  # γ a constant per sample (detached p_y), as in the authors' code
    assert torch.allclose(g_ours, g_ref, atol=1e-6) and torch.isfinite(grad).all()


@pytest.mark.parametrize("kw,says", [({"name": "focal", "gamma_schedule": "flsd35"}, "flsd53"),
                                     ({"gamma_schedule": "flsd53"}, "loss=focal")])
def test_gamma_schedule_is_refused_in_one_line(kw, says) -> None:
    with pytest.raises(ConfigError, match=r"^loss\.gamma_schedule=") as e:
        check_loss(LossConfig(**kw))
    assert says in str(e.value) and "\n" not in str(e.value)


# --- issue 24: label relaxation (Lienen & Hüllermeier, AAAI 2021) ------------------------------------


def test_label_relaxation_by_hand_loss_and_gradient() -> None:
    # q = [0.5, 0.3, 0.2], y = 0, α = 0.1: r = [0.9, 0.06, 0.04]; KL(r ‖ q) = 0.9 ln 1.8 + 0.1 ln 0.2
    # q = [0.95, 0.03, 0.02], y = 0: inside the set (q_y ≥ 0.9), no loss
    z = torch.tensor([[0.5, 0.3, 0.2], [0.95, 0.03, 0.02]]).log().requires_grad_(True)
    y = torch.tensor([0, 0])
    c = make_criterion(LossConfig(name="label_relaxation", relax_alpha=0.1), 3, torch.ones(3))
    loss = c(z, y)
    assert loss.item() == pytest.approx((0.9 * math.log(1.8) + 0.1 * math.log(0.2)) / 2, rel=1e-5)  # 0.183532
    (grad,) = torch.autograd.grad(loss, z)
    # r a constant: d/dz of -Σ r_k log q_k is q - r, halved by the batch mean; the second sample has none
    assert torch.allclose(grad, torch.tensor([[-0.2, 0.12, 0.08], [0.0, 0.0, 0.0]]), atol=1e-6)
    zero = make_criterion(LossConfig(name="label_relaxation", relax_alpha=0.0), 3, torch.ones(3))
    assert zero(z, y).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-6)  # α = 0: cross-entropy


def test_label_relaxation_has_no_nan_gradient_when_saturated() -> None:
    z = torch.tensor([[80.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    make_criterion(LossConfig(name="label_relaxation"), 3, torch.ones(3))(z, torch.tensor([0, 0])).backward()
    assert torch.isfinite(z.grad).all() and z.grad[0].abs().max() == 0


@pytest.mark.parametrize("kw,key", [({"name": "label_relaxation", "relax_alpha": 1.0}, "loss.relax_alpha"),
                                    ({"name": "label_relaxation", "epsilon": 0.1}, "loss.epsilon"),
                                    ({"name": "label_relaxation", "epsilon_schedule": "mislas"},
                                     "loss.epsilon_schedule")])
def test_label_relaxation_bad_values_are_one_line(kw, key) -> None:
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + "=") as e:
        check_loss(LossConfig(**kw))
    assert "\n" not in str(e.value)


# --- issue 24: class-wise ε and MiSLAS's label-aware smoothing (Zhong et al., CVPR 2021) -------------


def mislas_reference(cls_num_list: list[int], smooth_head: float, smooth_tail: float) -> np.ndarray:
    """The authors' LabelAwareSmoothing.__init__, shape='concave' (dvlab-research/MiSLAS), written out."""
    n_1, n_K = max(cls_num_list), min(cls_num_list)
    shape = np.sin((np.array(cls_num_list) - n_K) * np.pi / (2 * (n_1 - n_K)))
    return smooth_tail + (smooth_head - smooth_tail) * shape


def test_class_wise_epsilon_smooths_each_sample_by_its_true_class() -> None:
    # logits [0, ln 3] -> q = [1/4, 3/4]; ε = [0.2, 0.4]: label 1 gets target [0.2, 0.8], label 0 [0.9, 0.1]
    z = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    c = make_criterion(LossConfig(epsilon=[0.2, 0.4]), 2, torch.ones(2))
    assert torch.allclose(c.expected_target(torch.tensor([1, 0])), torch.tensor([[0.2, 0.8], [0.9, 0.1]]))
    hand = (-(0.2 * math.log(0.25) + 0.8 * math.log(0.75)) - (0.9 * math.log(0.25) + 0.1 * math.log(0.75))) / 2
    assert c(z, torch.tensor([1, 0])).item() == pytest.approx(hand, rel=1e-6)
    same = make_criterion(LossConfig(epsilon=[0.1] * 5), K, COUNTS)  # K equal values: the scalar ε
    g = torch.Generator().manual_seed(5)
    zb, yb = torch.randn(16, K, generator=g), torch.randint(0, K, (16,), generator=g)
    assert same(zb, yb).item() == pytest.approx(crit(epsilon=0.1)(zb, yb).item(), rel=1e-6)


def test_mislas_epsilon_and_loss_follow_the_authors_code() -> None:
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT at ρ = 100
    c = make_criterion(LossConfig(epsilon_schedule="mislas", epsilon_head=0.3, epsilon_tail=0.0), 10,
                       torch.tensor(counts))
    ref = mislas_reference(counts, 0.3, 0.0)
    assert c.epsilon.tolist() == pytest.approx(ref.tolist(), abs=1e-6)
    assert c.epsilon[0].item() == pytest.approx(0.3) and c.epsilon[-1].item() == 0  # head 0.3, tail 0
    # by hand for three classes: sin(π/2 · 40/90) · 0.3
    hand = make_criterion(LossConfig(epsilon_schedule="mislas"), 3, torch.tensor([100, 50, 10])).epsilon
    assert hand.tolist() == pytest.approx([0.3, 0.3 * math.sin(math.pi / 2 * 40 / 90), 0.0], abs=1e-6)
    # their forward: (1-ε_y)·NLL + ε_y·mean_k(-log q_k), averaged over the batch
    g = torch.Generator().manual_seed(4)
    z, y = torch.randn(32, 10, generator=g) * 2, torch.randint(0, 10, (32,), generator=g)
    eps = torch.tensor(ref, dtype=torch.float32)[y]
    logq = F.log_softmax(z, 1)
    theirs = ((1 - eps) * -logq.gather(1, y.unsqueeze(1)).squeeze(1) + eps * -logq.mean(1)).mean()
    assert c(z, y).item() == pytest.approx(theirs.item(), rel=1e-5)
    flat = make_criterion(LossConfig(epsilon_schedule="mislas", epsilon_head=0.2), 4, torch.tensor([7, 7, 7, 7]))
    assert flat.epsilon.tolist() == pytest.approx([0.2] * 4)  # no tail: every class is a head class


def test_class_wise_list_of_the_wrong_length_names_k() -> None:
    with pytest.raises(ConfigError, match=r"^loss\.epsilon=\[0\.1, 0\.2\] is invalid: a list of K=5 values") as e:
        crit(epsilon=[0.1, 0.2])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^loss\.epsilon_schedule='sine' is invalid"):
        check_loss(LossConfig(epsilon_schedule="sine"))


@pytest.mark.slow  # a two-job CLI sweep with its report: ~25 s
def test_a_class_wise_list_composes_and_sweeps_with_readable_folders(tmp_path) -> None:
    from conftest import TINY, make_config, run_cli

    eps = "[0.05,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.2]"
    assert make_config(f"loss.epsilon={eps}").loss.epsilon[-1] == 0.2
    r = run_cli("-m", f"loss.epsilon={eps},0.1", *TINY, "data.train_size=192", "metrics.figures=false",
                f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    rest = "trainer.batch_size=64,trainer.epochs=1"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        f"data.train_size=192,loss.epsilon=0.1,{rest}", f"data.train_size=192,loss.epsilon={eps},{rest}"]
    assert (tmp_path / "summary.md").exists()  # the sweep's report reads a list-valued ε too
    info = json.loads((tmp_path / f"data.train_size=192,loss.epsilon={eps},{rest}" / "run_info.json").read_text())
    assert info["class_epsilon"] == pytest.approx([0.05] + [0.1] * 8 + [0.2])  # recorded as trained
