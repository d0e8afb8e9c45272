"""Temperature scaling (Guo et al. 2017): one scalar T > 0 fitted on the validation split.

q_T = softmax(z / T) keeps the argmax (accuracy unchanged) and only rescales confidence:
T > 1 softens an over-confident model, T < 1 sharpens an under-confident one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _nll(logits: Tensor, labels: Tensor, t: float) -> float:
    return float(F.cross_entropy(logits / t, labels))


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The T minimising validation NLL: LBFGS on log T, then a coarse log-spaced grid as a fallback.

    Never returns a T whose validation NLL is worse than T = 1 (the uncalibrated model).
    """
    if len(labels) == 0:
        raise ValueError("temperature scaling needs a non-empty validation split (data.val_size > 0)")
    logits, labels = logits.double(), labels.long()
    candidates = [1.0] + torch.logspace(-1.5, 1.5, 61, dtype=torch.float64).tolist()  # T in [0.03, 32]
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t_lbfgs = log_t.detach().exp().item()
    if math.isfinite(t_lbfgs) and t_lbfgs > 0:
        candidates.append(t_lbfgs)
    return min(candidates, key=lambda t: (_nll(logits, labels, t), abs(math.log(t))))
