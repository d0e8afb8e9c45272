"""Temperature scaling (Guo et al. 2017): one scalar T > 0 fitted on the validation split.

q_T = softmax(z / T) keeps the argmax (accuracy unchanged) and only rescales confidence:
T > 1 softens an over-confident model, T < 1 sharpens an under-confident one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ls_bench.errors import ConfigError
from ls_bench.evaluate.metrics import check_inputs

# T is searched in [T_MIN, T_MAX]: a separable validation set drives the NLL optimum to T -> 0
# (or T -> inf when every prediction is wrong); the bounds keep T / logits finite and meaningful.
T_MIN, T_MAX = 1e-2, 1e2


def _nll(logits: Tensor, labels: Tensor, t: float) -> float:
    return float(F.cross_entropy(logits / t, labels))


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The T in [T_MIN, T_MAX] minimising validation NLL of softmax(logits / T).

    LBFGS on s = log T from s = 0 (the NLL is convex in 1/T, hence unimodal in s); if LBFGS
    fails (non-finite, or worse than T = 1) a log-spaced grid of 81 points is searched instead.
    Never returns a T whose validation NLL is worse than T = 1 (the uncalibrated model).
    """
    if len(labels) == 0:
        raise ConfigError("metrics.temperature_scaling=true needs a non-empty validation split "
                          "(set data.val_size > 0, or metrics.temperature_scaling=false)")
    check_inputs(logits, labels)
    # float64 copy: a normal tensor even when `logits` came out of torch.inference_mode().
    logits, labels = logits.detach().double().clone(), labels.long()
    nll_1 = _nll(logits, labels, 1.0)
    t = _lbfgs_temperature(logits, labels, max_iter)
    if t is None or _nll(logits, labels, t) > nll_1:
        grid = torch.logspace(math.log10(T_MIN), math.log10(T_MAX), 81, dtype=torch.float64).tolist()
        t = min(grid, key=lambda g: _nll(logits, labels, g))
    return t if _nll(logits, labels, t) <= nll_1 else 1.0


def _lbfgs_temperature(logits: Tensor, labels: Tensor, max_iter: int) -> float | None:
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may be under no_grad
        opt.step(closure)
    s = log_t.item()
    if not math.isfinite(s):
        return None
    return min(max(math.exp(s), T_MIN), T_MAX)  # unimodal in s, so clamping gives the bounded optimum
