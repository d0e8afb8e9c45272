"""Temperature scaling (Guo et al. 2017): one scalar T > 0 fitted on the validation split.

q_T = softmax(z / T) keeps the argmax (accuracy unchanged) and only rescales confidence:
T > 1 softens an over-confident model, T < 1 sharpens an under-confident one.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from ls_bench.errors import ConfigError
from ls_bench.evaluate.metrics import check_inputs

# T is searched in [T_MIN, T_MAX]: a separable validation set drives the NLL optimum to T -> 0
# (or T -> inf when every prediction is wrong); the bounds keep T / logits finite and meaningful.
T_MIN, T_MAX = 1e-2, 1e2


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T in [T_MIN, T_MAX] minimising validation NLL of softmax(logits / T).

    The NLL is convex in 1/T, hence unimodal in s = log T: scipy's bounded Brent search on s finds
    the bounded optimum to |Δs| ~ 1e-9, 1e-7 at a bound (T fitted to logits · c is c · T to 1e-9;
    torch's LBFGS, used before, stopped ~1e-5 short of it). Never returns a T whose validation NLL is worse than
    T = 1 (the uncalibrated model).
    """
    if len(labels) == 0:
        raise ConfigError("metrics.temperature_scaling=true needs a non-empty validation split "
                          "(set data.val_size > 0, or metrics.temperature_scaling=false)")
    check_inputs(logits, labels)
    # Imported here: scipy.optimize costs 1-2 s to import, which every run's start-up would pay (and a
    # Ctrl-C landing inside it leaves scipy half-imported); only the end of a run needs it.
    from scipy.optimize import minimize_scalar

    # float64 copy: a normal tensor even when `logits` came out of torch.inference_mode().
    logits, labels = logits.detach().double().clone(), labels.long()

    def nll(s: float) -> float:
        return float(F.cross_entropy(logits / math.exp(s), labels))

    best = minimize_scalar(nll, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                           options={"xatol": 1e-9})
    return math.exp(best.x) if best.fun <= nll(0.0) else 1.0
