"""Label relaxation (Lienen & Hüllermeier, "From label smoothing to label relaxation", AAAI 2021).

Instead of one smoothed target, the label stands for a set of distributions, those with q_y ≥ 1-α.
A prediction inside the set costs nothing; outside it the loss is the KL divergence to its
projection r onto the set's boundary, which keeps the prediction's own shape on the wrong classes:

    L = 0                      if q_y ≥ 1-α
    L = KL(r ‖ q) = Σ_k r_k log(r_k / q_k)  otherwise,   r_y = 1-α,  r_k = α·q_k / Σ_{j≠y} q_j  (k ≠ y)

r is a constant of the step (computed under no_grad, as in the authors' PyTorch code,
julilien/LabelRelaxation). It needs no detach to be right, though: Σ_{k≠y} r_k = α is fixed, so
r's own gradient term Σ_k ∇r_k·(log(r_k/q_k) + 1) vanishes and both give -(1-α)∇log q_y - α∇log Σ_{j≠y} q_j.
α = 0 is cross-entropy (r = onehot). loss.relax_alpha (default 0.1; the paper tunes α per dataset).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LabelRelaxation:
    """The per-sample label-relaxation loss from log q and the labels, [B]; with class weights the
    loss of sample i is weighted by w_{y_i}, like its cross-entropy."""

    alpha: float

    def __call__(self, logq: Tensor, labels: Tensor, weight: Tensor | None) -> Tensor:
        q = logq.exp()
        onehot = F.one_hot(labels, logq.shape[1]).bool()
        with torch.no_grad():
            rest = q.masked_fill(onehot, 0).sum(1, keepdim=True)  # Σ_{j≠y} q_j
            # floored: at q_y = 1 (float32) the sample costs nothing, but 0/0 would put NaN into its gradient
            r = torch.where(onehot, 1 - self.alpha, self.alpha * q / rest.clamp_min(torch.finfo(q.dtype).tiny))
        kl = (torch.xlogy(r, r) - r * logq).sum(1)
        inside = q.gather(1, labels.unsqueeze(1)).squeeze(1) >= 1 - self.alpha
        per = torch.where(inside, torch.zeros_like(kl), kl)
        return per if weight is None else per * weight[labels]
