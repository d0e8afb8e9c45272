"""Online label smoothing, OLS (Zhang et al., "Delving deep into label smoothing", IEEE TIP 2021).

The smoothing distribution of class y is learnt from the model itself: a K×K matrix S whose row y
is, at the end of each epoch, the mean softmax (T = 1) of the training samples of class y that the
model classified correctly during that epoch. The next epoch trains with

    L = α·CE(onehot(y), q) + (1-α)·CE(S[y], q) = CE(α·onehot(y) + (1-α)·S[y], q)

one soft cross-entropy over the target p = α·onehot + (1-α)·S[y] (loss.ols_alpha = α, default 0.5,
the authors' 0.5·CE + 0.5·soft CE). Two choices differ from the authors' script
(zhangchbin/OnlineLabelSmoothing, cifar/scripts/train_cifar_all_methods.py), following issue 24:
  - the first epoch's S is label smoothing's, S_0[y] = (1-ε)·onehot(y) + ε·u with ε = loss.epsilon
    and u = loss.prior (ε = 0, the default, is one-hot: the authors' first epoch up to the factor,
    since their S starts at 0 and the soft term vanishes);
  - a class with no correct prediction in an epoch keeps its last row (the authors reset it to
    uniform 1/K).
S is run state: saved in last.pt (Criterion.state_dict) so a resumed run continues bit for bit.
The accumulators are read once per epoch, never per step: no host sync in the loop. Their
index_add_ is deterministic on the CPU, and on CUDA under trainer.deterministic=true
(torch.use_deterministic_algorithms lists it among the ops it makes deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ls_bench.losses.targets import Smoothed, smooth_targets

IMAGE_PIXELS = 240  # the TensorBoard picture of S: each cell a square block, about this many pixels wide


@dataclass(frozen=True)
class OnlineSmoothed(Smoothed):
    """OLS's target builder: p = α·onehot(y) + (1-α)·S[y]; `observe` adds a step's correct
    predictions to this epoch's sums, `end_epoch` turns them into the next S."""

    alpha: float = 0.5
    matrix: Tensor | None = None  # S, [K, K]: row y is class y's smoothing distribution
    sums: Tensor | None = None  # this epoch's Σ softmax of the correctly classified samples, by true class, [K, K]
    counts: Tensor | None = None  # their number per class, [K]

    @classmethod
    def start(cls, num_classes: int, epsilon: float | Tensor, prior: Tensor | None, alpha: float) -> "OnlineSmoothed":
        """S_0 = label smoothing's target of each class (ε, prior), empty accumulators."""
        s0 = smooth_targets(torch.arange(num_classes), num_classes, epsilon, prior)
        return cls(num_classes, epsilon, prior, None, alpha, s0, torch.zeros_like(s0), torch.zeros(num_classes))

    def expected(self, labels: Tensor, idx: Tensor | None = None) -> Tensor:
        onehot = F.one_hot(labels, self.num_classes).float()
        return self.alpha * onehot + (1 - self.alpha) * self.matrix[labels]

    @torch.no_grad()
    def observe(self, logq: Tensor, labels: Tensor) -> None:
        """Add the softmax of each correctly classified sample to its class's row; on the device,
        without reading anything back (a mask, not boolean indexing, which would sync)."""
        q = logq.detach().exp()
        correct = (q.argmax(1) == labels).to(q.dtype)
        self.sums.index_add_(0, labels, q * correct.unsqueeze(1))
        self.counts.index_add_(0, labels, correct)

    @torch.no_grad()
    def end_epoch(self) -> None:
        seen = (self.counts > 0).unsqueeze(1)
        self.matrix.copy_(torch.where(seen, self.sums / self.counts.clamp_min(1).unsqueeze(1), self.matrix))
        self.sums.zero_()
        self.counts.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        return {"ols_matrix": self.matrix.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """S from a checkpoint (written at an epoch's end, so the accumulators start empty)."""
        matrix = state["ols_matrix"]
        if tuple(matrix.shape) != tuple(self.matrix.shape):
            raise ValueError(f"ols_matrix of shape {tuple(matrix.shape)}, this run has {tuple(self.matrix.shape)}")
        self.matrix.copy_(matrix)
        self.sums.zero_()
        self.counts.zero_()

    def images(self) -> dict[str, Tensor]:
        """S as a grey picture for TensorBoard ([H, W] in [0, 1], rows: true classes), one per epoch."""
        cell = max(1, IMAGE_PIXELS // self.num_classes)
        return {"train/ols_matrix": self.matrix.detach().cpu().repeat_interleave(cell, 0).repeat_interleave(cell, 1)}

    def to(self, device: torch.device) -> "OnlineSmoothed":
        return replace(super().to(device), matrix=self.matrix.to(device), sums=self.sums.to(device),
                       counts=self.counts.to(device))
