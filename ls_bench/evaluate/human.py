"""Agreement with human labels: the model's predictive distribution against CIFAR-10H's, and the
figures of human labels (confidence against human agreement; the label-noise transition matrix).

With q = softmax(z) (float64) and h the image's human label distribution (Peterson et al., ICCV
2019: ~50 annotators per CIFAR-10 test image), per image, then the mean over images:
- human/nll: the cross-entropy H(h, q) = -Σ_k h_k log q_k, Peterson et al.'s "crossentropy"
  (nats; the one-hot test/nll is its h = onehot(y) case);
- human/kl: KL(h ‖ q) = H(h, q) - H(h), 0 for a model that matches humans exactly (0·log 0 = 0);
- human/entropy_corr: Spearman's rank correlation, over images, of the model's entropy H(q) and
  the humans' H(h): is the model uncertain on the images humans are uncertain about? (scipy's
  spearmanr, average ranks for ties; NaN if either is constant);
- human/top1_agree: the share of images whose model argmax is a class most humans chose (with
  tied majorities, any of the tied classes agrees).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ls_bench.data.human import transition_counts
from ls_bench.evaluate.figures import FigureLogger, _figure, _unit_axes, save_png
from ls_bench.evaluate.metrics import bin_index
from ls_bench.files import atomic_write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def human_metrics(logits: Tensor, human: Tensor) -> dict[str, float]:
    """human/nll, human/kl, human/entropy_corr, human/top1_agree of logits [N, K] against h [N, K]."""
    from scipy.stats import spearmanr

    if logits.shape != human.shape or not len(logits):
        raise ValueError(f"logits {tuple(logits.shape)} and human distributions {tuple(human.shape)} must match")
    logq = F.log_softmax(logits.double(), dim=1)
    h = human.double()
    cross = -(h * logq).sum(1)  # H(h, q)
    h_entropy = -torch.special.xlogy(h, h).sum(1)  # H(h), 0·log 0 = 0
    q_entropy = -(logq.exp() * logq).sum(1)
    majority = h.gather(1, logq.argmax(1, keepdim=True)).squeeze(1) == h.max(1).values
    with warnings.catch_warnings():  # a constant input (e.g. one image) gives NaN, said in the docstring
        warnings.simplefilter("ignore")
        corr = float(spearmanr(q_entropy.numpy(), h_entropy.numpy()).statistic) if len(h) > 1 else float("nan")
    return {"human/nll": float(cross.mean()), "human/kl": float((cross - h_entropy).mean()),
            "human/entropy_corr": corr, "human/top1_agree": float(majority.double().mean())}


def human_evaluation(logits: Tensor, human: Tensor, temperature: float | None) -> dict[str, float]:
    """test/human/* and, with a fitted temperature, test_ts/human/* (the logits divided by T)."""
    out = {f"test/{k}": v for k, v in human_metrics(logits, human).items()}
    if temperature is not None:
        out.update({f"test_ts/{k}": v for k, v in human_metrics(logits / temperature, human).items()})
    return out


# --- figures ----------------------------------------------------------------------------------


def _draw_agreement(ax: "Axes", logits: Tensor, labels: Tensor, human: Tensor, n_bins: int, title: str) -> None:
    """Per equal-width confidence bin (metrics.bin_index): the mean human share of the model's
    predicted class (bars) and the accuracy (dots), against the diagonal conf = agreement."""
    q = torch.softmax(logits.double(), dim=1)
    conf, pred = q.max(1)
    agree = human.double().gather(1, pred[:, None]).squeeze(1)
    idx = bin_index(conf, n_bins)
    count = torch.bincount(idx, minlength=n_bins).double()
    seen = count > 0
    centres = (torch.arange(n_bins, dtype=torch.float64) + 0.5) / n_bins
    def mean(v: Tensor) -> np.ndarray:
        return (torch.bincount(idx, weights=v, minlength=n_bins)[seen] / count[seen]).numpy()

    x = centres[seen].numpy()
    ax.bar(x, mean(agree), width=1 / n_bins, edgecolor="k", alpha=0.7, label="human agreement")
    ax.plot(x, mean((pred == labels).double()), "o", ms=4, color="C3", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    _unit_axes(ax, "model confidence", "share of humans choosing the model's class")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title, fontsize="small")


def agreement_figure(logits: Tensor, labels: Tensor, human: Tensor, n_bins: int,
                     temperature: float | None) -> "Figure":
    """Model confidence against human agreement, binned: before and (with T) after temperature scaling."""
    panels = [("test", logits)] + ([(f"test, T = {temperature:.3g}", logits / temperature)] if temperature else [])
    fig = _figure(4.2 * len(panels), 4.0, left=0.1, wspace=0.3)
    for ax, (title, z) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _draw_agreement(ax, z, labels, human, n_bins, title)
    return fig


def noise_matrix_figure(counts: np.ndarray, classes: Sequence[str], title: str) -> "Figure":
    """The transition matrix true -> given, each row as shares of its class (colour and numbers)."""
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(classes)
    fig = _figure(1.0 + 0.55 * k, 0.8 + 0.5 * k, left=0.2, bottom=0.2, top=0.9, right=0.98)
    ax = fig.subplots()
    ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    if k <= 20:  # the numbers are readable up to about 20 classes
        for i, j in np.ndindex(k, k):
            ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="given label", ylabel="true class")
    ax.set_xticklabels(classes, rotation=90, fontsize=7)
    ax.set_yticklabels(classes, fontsize=7)
    ax.set_title(title, fontsize="small")
    return fig


def write_noise_matrix(path: Path, counts: np.ndarray, classes: Sequence[str]) -> None:
    """label_noise_matrix.csv: per true class (row) its image count n and the share given each label."""
    rows = [["true", "n", *classes]]
    for name, row in zip(classes, counts):
        n = int(row.sum())
        rows.append([name, str(n), *(f"{c / max(n, 1):.6f}" for c in row)])
    atomic_write_text(path, "".join(",".join(r) + "\n" for r in rows))


# --- what finish.finish calls -------------------------------------------------------------------


def _figure_safely(logger: FigureLogger, tag: str, build: Callable[[], "Figure"], png: Path) -> None:
    """One figure to TensorBoard and to a PNG, drawn once (as figures.write_figures does); a
    plotting failure is logged and never loses the run's metrics."""
    try:
        fig = build()
        logger.log_figure(tag, fig)
        save_png(fig, png)
    except Exception as e:
        log.warning("%s failed (%s: %s); metrics are unaffected", png.name, type(e).__name__, e)


def human_results(logits: Tensor, labels: Tensor, human: Tensor, temperature: float | None, n_bins: int,
                  figures: bool, logger: FigureLogger, run_dir: Path) -> dict[str, float]:
    """eval.human: test/human/* and test_ts/human/*, and human_agreement.png (TensorBoard: test/human_agreement)."""
    out = human_evaluation(logits, human, temperature)
    if figures:
        _figure_safely(logger, "test/human_agreement", lambda: agreement_figure(logits, labels, human, n_bins,
                                                                               temperature),
                       run_dir / "human_agreement.png")
    return out


def noise_outputs(clean: Tensor, given: Tensor, classes: Sequence[str], facts: dict, figures: bool,
                  logger: FigureLogger, run_dir: Path) -> None:
    """data.label_noise.kind=human|matched: label_noise_matrix.csv (true -> given on the training
    split) and its picture (label_noise_matrix.png; TensorBoard: train/label_noise_matrix)."""
    counts = transition_counts(clean, given, len(classes))
    write_noise_matrix(run_dir / "label_noise_matrix.csv", counts, classes)
    if figures:
        rate = 1 - np.trace(counts) / max(counts.sum(), 1)
        title = f"training labels: {facts.get('kind')} ({facts.get('labels')}), {rate:.2%} changed"
        _figure_safely(logger, "train/label_noise_matrix", lambda: noise_matrix_figure(counts, classes, title),
                       run_dir / "label_noise_matrix.png")
