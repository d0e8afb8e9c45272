"""mixup and CutMix on device batches: mixed inputs and the matching mix of their soft targets.

Both pair sample i with sample j = perm(i) of the same batch and draw one λ ~ Beta(α, α) per batch:
    mixup   x̃ = λ·x_i + (1-λ)·x_j                     (Zhang et al., ICLR 2018, "mixup: Beyond
            Empirical Risk Minimization"; facebookresearch/mixup-cifar10, train.py `mixup_data`)
    CutMix  x̃ = x_i with a box of area ≈ (1-λ)·H·W pasted from x_j; λ is then recomputed from the
            box clipped to the image, λ = 1 - box_area / (H·W)       (Yun et al., ICCV 2019;
            clovaai/CutMix-PyTorch, train.py `rand_bbox` and the training loop)
    targets p̃ = λ·p_i + (1-λ)·p_j, with p [B, K] whatever soft target the loss built (one-hot or
            label-smoothed p'). With one-hot p, -Σ_k p̃_k log q_k = λ·CE(y_i) + (1-λ)·CE(y_j): the
            authors' `mixup_criterion`, by linearity of the soft cross-entropy in its target.
A mixer returns `Mixed(x, p, lam, perm)`; the training loop's accuracy is against the dominant
label, `dominant(y, lam, perm)` = y_i if λ ≥ 1/2 else y_j. An unmixed batch is lam = 1 and the
identity perm, so the same code serves every batch.

Random numbers (all from the CPU generator `g` the caller passes; never the global RNG):
    mixup   r, u, perm                 CutMix   r, u, perm, c_H, c_W
r ~ U[0, 1) decides whether the batch is mixed (r < prob, as the CutMix authors' `r < cutmix_prob`);
u ~ U[0, 1) gives λ = F⁻¹(u) by the Beta(α, α) inverse CDF (scipy.special.betaincinv, exact to
float64; torch's Beta sampler takes no generator); perm = randperm(B); c_H, c_W are the box centre,
uniform over rows then columns (the authors' cx over size[2], then cy over size[3]). Unlike the
authors' loop, which draws λ and the box only for mixed batches, every draw is made whatever r is:
each batch consumes the same numbers at every prob, so with one seed the batches mixed at a lower
prob are a subset of those mixed at a higher one, with the same λ, partners and boxes (paired runs
across prob, like the nested flips in ls_bench.losses). "none" draws nothing.

α ≤ 0 is refused (check_mix) rather than meaning λ = 1 as in the authors' code: no mixing is
mix.name=none, said once, not a second spelling of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from ls_bench.errors import invalid

# Probability that a batch is mixed when mix.prob is null: each method's published CIFAR setting.
# mixup mixes every batch (mixup-cifar10); CutMix 0.5 (clovaai/CutMix-PyTorch, issue #30).
DEFAULT_PROB = {"none": 0.0, "mixup": 1.0, "cutmix": 0.5}


class Mixed(NamedTuple):
    x: Tensor  # [B, C, H, W], same device, dtype and memory format as the input
    p: Tensor  # [B, K] soft targets λ·p_i + (1-λ)·p_perm(i); rows still sum to 1
    lam: float  # weight of sample i (1.0 for an unmixed batch)
    perm: Tensor  # [B] long on the device: the partner j of each i (identity when unmixed)


def dominant(labels: Tensor, lam: float, perm: Tensor) -> Tensor:
    """The label with the larger weight, for training accuracy: y_i if λ ≥ 1/2 else y_perm(i)."""
    return labels if lam >= 0.5 else labels[perm]


def sample_lambda(alpha: float, g: torch.Generator) -> float:
    """λ ~ Beta(α, α) from one float64 uniform of g, by the inverse CDF: exact, and always one draw."""
    from scipy.special import betaincinv  # lazy: ~0.25 s of import, paid only by runs that mix

    u = torch.rand((), dtype=torch.float64, generator=g).item()
    return float(betaincinv(alpha, alpha, u))


def rand_bbox(H: int, W: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The CutMix authors' `rand_bbox` with its centre given: rows y1:y2, columns x1:x2.

    Sides int(H·√(1-λ)) and int(W·√(1-λ)), halved with // on each side of the centre (so an odd
    side loses a pixel) and clipped to the image; the clipped area is what λ is recomputed from.
    (The authors name dim 2 W and dim 3 H; the arithmetic per dimension is the same.)
    """
    cut = math.sqrt(1.0 - lam)
    half_h, half_w = int(H * cut) // 2, int(W * cut) // 2
    y1, y2 = min(max(cy - half_h, 0), H), min(max(cy + half_h, 0), H)
    x1, x2 = min(max(cx - half_w, 0), W), min(max(cx + half_w, 0), W)
    return y1, y2, x1, x2


def _pairs(n: int, alpha: float, g: torch.Generator) -> tuple[float, float, Tensor]:
    """The draws both methods share, in this order: r (mix or not), λ, the partner perm (CPU)."""
    r = torch.rand((), dtype=torch.float64, generator=g).item()
    lam = sample_lambda(alpha, g)
    return r, lam, torch.randperm(n, generator=g)


def no_mix(x: Tensor, p: Tensor, g: torch.Generator, alpha: float, prob: float) -> Mixed:
    """The inputs themselves; consumes no random numbers."""
    return Mixed(x, p, 1.0, torch.arange(len(x), device=x.device))


def mixup(x: Tensor, p: Tensor, g: torch.Generator, alpha: float, prob: float) -> Mixed:
    """x̃ = λ·x + (1-λ)·x[perm] with probability prob (mixup_data of mixup-cifar10 at prob = 1)."""
    r, lam, perm = _pairs(len(x), alpha, g)
    if r >= prob:
        return no_mix(x, p, g, alpha, prob)
    perm = perm.to(x.device, non_blocking=True)
    # lerp(a, b, λ) = a + λ·(b - a): one fused pass instead of three (λ·x, (1-λ)·x_j, their sum),
    # equal to the authors' λ·x + (1-λ)·x[index] up to rounding. x[perm] keeps x's strides and lerp
    # follows them, so channels_last stays channels_last (index_select would not).
    return Mixed(torch.lerp(x[perm], x, lam), torch.lerp(p[perm], p, lam), lam, perm)


def cutmix(x: Tensor, p: Tensor, g: torch.Generator, alpha: float, prob: float) -> Mixed:
    """A box of x[perm] pasted into x with probability prob; λ recomputed from the clipped box."""
    r, lam, perm = _pairs(len(x), alpha, g)
    H, W = x.shape[-2:]
    cy = int(torch.randint(H, (), generator=g))
    cx = int(torch.randint(W, (), generator=g))
    if r >= prob:
        return no_mix(x, p, g, alpha, prob)
    y1, y2, x1, x2 = rand_bbox(H, W, lam, cy, cx)
    lam = 1 - (y2 - y1) * (x2 - x1) / (H * W)  # the pixel ratio actually pasted, as the authors do
    perm = perm.to(x.device, non_blocking=True)
    out = x.clone()  # preserve_format: channels_last stays channels_last; the caller's x is untouched
    out[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]  # one gather of the box, not a per-sample loop
    return Mixed(out, torch.lerp(p[perm], p, lam), lam, perm)


MIXERS: dict[str, Callable[[Tensor, Tensor, torch.Generator, float, float], Mixed]] = {
    "none": no_mix,
    "mixup": mixup,
    "cutmix": cutmix,
}


def _number(value: Any) -> float | None:
    """value as a float, or None if it is not a real number (bools and strings are not)."""
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_mix(name: str, alpha: float, prob: float | None) -> None:
    """One-line ConfigErrors for mix.name, mix.alpha (finite, > 0) and mix.prob (null or in [0, 1])."""
    if not isinstance(name, str) or name not in MIXERS:
        raise invalid("mix.name", name, f"one of {list(MIXERS)}")
    a = _number(alpha)
    if a is None or not math.isfinite(a) or a <= 0:
        raise invalid("mix.alpha", alpha, "a finite number > 0, the α of λ ~ Beta(α, α) "
                                          "(for no mixing use mix.name=none)")
    p = _number(prob)
    if prob is not None and (p is None or not 0 <= p <= 1):
        raise invalid("mix.prob", prob, "null (each method's published setting: mixup 1, cutmix 0.5) "
                                        "or a probability in [0, 1]")


# Losses whose target is not a distribution to mix: binary LS's one sigmoid output, and label_flip,
# whose flipped one-hot label is a draw, not the expected target.
UNMIXABLE = {"binary": "one sigmoid output with its own target", "label_flip": "a flipped one-hot label per visit",
             "label_relaxation": "a target set around one label, built from the prediction",
             "online_ls": "a per-class target learnt from each sample's own label"}


def check_mix_with_loss(mix_name: str, loss_name: str, alpha: float = 1.0, prob: float | None = None) -> None:
    """mix.name other than none is refused with a loss that has no soft target to mix; with
    mix.name=none, a mix.alpha or mix.prob that would do nothing is refused too."""
    if mix_name == "none" and (alpha != 1.0 or prob is not None):
        key, value = ("mix.alpha", alpha) if alpha != 1.0 else ("mix.prob", prob)
        raise invalid(key, value, "has no effect with mix.name=none: choose mix=mixup or mix=cutmix, or leave it out")
    if mix_name != "none" and loss_name in UNMIXABLE:
        raise invalid("mix.name", mix_name, f"none with loss={loss_name} ({UNMIXABLE[loss_name]}); mixing works with "
                                            f"every other loss, whose target is a distribution")


@dataclass(frozen=True)
class Mixer:
    """A named mixing method with its α and prob: `mixer(x, p, g) -> Mixed(x, p, lam, perm)`.

    prob None is the method's published setting (DEFAULT_PROB); construction validates.
    """

    name: str = "none"
    alpha: float = 1.0
    prob: float | None = None

    def __post_init__(self) -> None:
        check_mix(self.name, self.alpha, self.prob)
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "prob", DEFAULT_PROB[self.name] if self.prob is None else float(self.prob))

    def __call__(self, x: Tensor, p: Tensor, g: torch.Generator) -> Mixed:
        return MIXERS[self.name](x, p, g, self.alpha, self.prob)


def make_mixer(name: str, alpha: float = 1.0, prob: float | None = None) -> Mixer:
    return Mixer(name, alpha, prob)
