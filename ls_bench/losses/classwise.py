"""Class-wise label smoothing: each class its own ε, applied by the sample's true class,
p'_i = (1-ε_{y_i})·onehot(y_i) + ε_{y_i}·u.

loss.epsilon as a list of K numbers gives the ε_k directly. loss.epsilon_schedule=mislas derives
them from the training class counts n_k, as label-aware smoothing does (Zhong et al., "Improving
calibration for long-tailed recognition", CVPR 2021, MiSLAS; their methods.py LabelAwareSmoothing,
shape='concave', the default):

    ε_k = ε_tail + (ε_head - ε_tail)·sin(π/2 · (n_k - n_min) / (n_max - n_min))

so the most frequent class gets ε_head (loss.epsilon_head, 0.3 in their CIFAR-LT configs), the
rarest ε_tail (loss.epsilon_tail, 0.0), and the sine keeps ε high for the head and middle and
falls steeply near the tail. Their loss is (1-ε_y)·NLL + ε_y·mean_k(-log q_k): the uniform prior.
With equal counts (n_max = n_min, where their formula divides by 0) every class is a head class: ε_head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ls_bench.errors import invalid

SCHEDULES = ("mislas",)  # loss.epsilon_schedule's names (null: loss.epsilon as given)


def mislas_epsilon(class_counts: Tensor, head: float, tail: float) -> Tensor:
    """MiSLAS's concave (sine) ε per class from the training counts, [K]."""
    n = class_counts.double()
    span = float(n.max() - n.min())
    if span == 0:
        return torch.full(n.shape, float(head))
    return (tail + (head - tail) * torch.sin((n - n.min()) * math.pi / (2 * span))).float()


def class_epsilon(epsilon: Any, schedule: str | None, head: float, tail: float, num_classes: int,
                  class_counts: Tensor) -> float | Tensor:
    """loss.epsilon as the target builders take it: a float, or a [K] tensor of per-class ε."""
    if schedule == "mislas":
        return mislas_epsilon(class_counts, head, tail)
    if not isinstance(epsilon, (list, tuple)):
        return float(epsilon)
    if len(epsilon) != num_classes:
        raise invalid("loss.epsilon", list(epsilon), f"a list of K={num_classes} values, one per class "
                                                     f"(got {len(epsilon)})")
    return torch.tensor([float(v) for v in epsilon])
