"""The calibration figures of a run. Each function returns a matplotlib Figure drawn on the Agg
canvas; pyplot is never used, so no figure is registered globally and nothing needs plt.close.

- reliability_diagram: accuracy vs confidence per equal-width bin, gap shaded, bin counts.
- confidence_histogram: share of samples per confidence bin, before/after temperature scaling.
- risk_coverage_curve: selective risk against coverage.
- penultimate_projection: Müller et al. 2019 (When does label smoothing help?), Fig. 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import torch
from torch import Tensor

from ls_bench.evaluate.metrics import calibration_bins, check_inputs, check_n_bins, confidence_correct, ece, mce
from ls_bench.evaluate.selective import optimal_risk, risk_coverage

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


# --- figures -----------------------------------------------------------------------------------


def _figure(width: float, height: float, **margins: float) -> "Figure":
    """A Figure on its own Agg canvas (never through pyplot), with fixed margins in figure
    fractions: constrained layout would triple the drawing time of these small figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(**{"left": 0.15, "right": 0.97, "bottom": 0.12, "top": 0.92, **margins})
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: "Figure", path: str | Path) -> None:
    """Write the figure as PNG, reusing the pixels of its last draw (e.g. by RunLogger.log_figure)."""
    import numpy as np
    from PIL import Image

    canvas = fig.canvas
    if fig.stale or not hasattr(canvas, "renderer"):
        canvas.draw()
    # RGB at zlib level 1: a third of the encoding time of the default, files of ~50 kB.
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(path, format="png", compress_level=1)


def _unit_axes(ax: "Axes", xlabel: str, ylabel: str) -> None:
    """[0, 1] axes with six fixed ticks: tick layout is most of the drawing time of a small figure."""
    ticks = [0, 0.2, 0.4, 0.6, 0.8, 1]
    ax.set(xlim=(0, 1), xticks=ticks, xticklabels=[f"{t:g}" for t in ticks], xlabel=xlabel, ylabel=ylabel)


def reliability_diagram(logits: Tensor, labels: Tensor, n_bins: int = 15, title: str = "") -> "Figure":
    """Accuracy per equal-width confidence bin (bars) with the gap to the bin's mean confidence
    shaded (red: over-confident where it rises above the bar), the diagonal of perfect calibration,
    and the number of samples written above each non-empty bin."""
    check_inputs(logits, labels)
    check_n_bins(n_bins)
    conf, correct = confidence_correct(logits, labels)
    bins = calibration_bins(conf, correct, n_bins)
    fig = _figure(4.2, 4.6, left=0.14, bottom=0.19, top=0.89)
    ax = fig.subplots()
    draw_reliability(ax, bins, counts=True)
    _unit_axes(ax, "confidence", "accuracy")
    ax.set(ylim=(0, 1.1), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1], yticklabels=["0", "0.2", "0.4", "0.6", "0.8", "1"])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize="x-small", frameon=False,
              title="numbers above the bars: samples per bin", title_fontsize="x-small")
    stats = f"ECE {ece(conf, correct, n_bins):.4f}, MCE {mce(conf, correct, n_bins):.4f}, N = {len(conf)}, M = {n_bins}"
    ax.set_title(f"{title or 'reliability'}\n{stats}", fontsize="small")
    return fig


def draw_reliability(ax: "Axes", bins: dict[str, list[float]], counts: bool = True) -> None:
    """Onto `ax`: accuracy per equal-width confidence bin (bars, from calibration_bins), the gap to
    the bin's mean confidence shaded red (above the bar: over-confident), the diagonal of perfect
    calibration and, with `counts`, the number of samples above each non-empty bin. The one
    drawing of a reliability diagram: the run's figures and the sweep report's grid both use it."""
    n_bins = len(bins["acc"])
    width = 1 / n_bins
    filled = [m for m in range(n_bins) if bins["count"][m] > 0]
    left = [m * width for m in filled]
    acc = [bins["acc"][m] for m in filled]
    mean_conf = [bins["conf"][m] for m in filled]
    ax.bar(left, acc, width=width, align="edge", color="tab:blue", edgecolor="black", linewidth=0.5,
           label="accuracy")
    # From the accuracy to the mean confidence of the bin: above the bar = over-confident.
    ax.bar(left, [c - a for a, c in zip(acc, mean_conf)], bottom=acc, width=width, align="edge", color="tab:red",
           alpha=0.3, hatch="//", edgecolor="tab:red", linewidth=0.5, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    if counts:
        for x, a, c, n in zip(left, acc, mean_conf, (int(bins["count"][m]) for m in filled)):
            ax.text(x + width / 2, max(a, c) + 0.01, str(n), ha="center", va="bottom", fontsize=6, rotation=90)


def confidence_histogram(logits: Tensor, labels: Tensor, n_bins: int = 15, temperature: float | None = None,
                         title: str = "") -> "Figure":
    """Share of samples per equal-width confidence bin, accuracy and mean confidence marked (Guo et
    al. 2017, Fig. 1 top); overlaid with the same for softmax(logits / T) when `temperature` is given."""
    check_inputs(logits, labels)
    check_n_bins(n_bins)
    curves = [("before TS: " if temperature is not None else "", 1.0, "tab:blue")]
    if temperature is not None:
        curves.append((f"after TS (T = {temperature:.3g}): ", temperature, "tab:orange"))
    fig = _figure(4.6, 3.4, left=0.13, bottom=0.14, top=0.9)
    ax = fig.subplots()
    edges = [m / n_bins for m in range(n_bins + 1)]
    top = 0.0
    for name, t, color in curves:
        conf, correct = confidence_correct(logits / t, labels)
        share = [c / len(conf) for c in calibration_bins(conf, correct, n_bins)["count"]]
        top = max(top, *share)
        ax.stairs(share, edges, fill=True, alpha=0.35, color=color)
        ax.stairs(share, edges, color=color, linewidth=1.2, label=f"{name}mean confidence {float(conf.mean()):.3f}")
        ax.axvline(float(conf.mean()), color=color, linestyle=":", linewidth=1.5)
    acc = float(correct.mean())  # temperature never changes the argmax
    ax.axvline(acc, color="black", linestyle="--", linewidth=1, label=f"accuracy {acc:.3f}")
    _unit_axes(ax, "confidence", "share of samples")
    ax.set_ylim(0, 1.5 * top)  # head-room for the legend
    ax.legend(loc="upper left", fontsize="x-small")
    ax.set_title(title or "confidence histogram", fontsize="small")
    return fig


def risk_coverage_curve(logits: Tensor, labels: Tensor, temperature: float | None = None, title: str = "",
                        scores: dict[str, Tensor] | None = None) -> "Figure":
    """Selective risk against coverage with the max softmax probability as the confidence
    (Geifman & El-Yaniv 2017), the area under it (AURC) in the legend; the curve of a perfect
    ranking with the same errors (the floor that E-AURC is measured from) dashed; and, with
    `temperature`, the same after temperature scaling, which can reorder samples across classes.
    `scores`: other confidence scores [N] of the same predictions (ls_bench.evaluate.scores), a curve each."""
    check_inputs(logits, labels)
    curves = [("before TS", 1.0, "tab:blue")]
    if temperature is not None:
        curves.append((f"after TS (T = {temperature:.3g})", temperature, "tab:orange"))
    n, errors = len(labels), float((1 - confidence_correct(logits, labels)[1]).sum())  # the same after TS
    fig = _figure(4.6, 3.6, left=0.14, bottom=0.14, top=0.9)
    ax = fig.subplots()
    for name, t, color in curves:
        conf, correct = confidence_correct(logits / t, labels)
        coverage, risk = risk_coverage(conf, correct)
        ax.plot(coverage.numpy(), risk.numpy(), color=color, linewidth=1.2,
                label=f"{name}: AURC {float(risk.mean()):.4f}")
    for (name, s), color in zip((scores or {}).items(), ("tab:green", "tab:red", "tab:purple")):
        coverage, risk = risk_coverage(s, confidence_correct(logits, labels)[1])
        ax.plot(coverage.numpy(), risk.numpy(), color=color, linewidth=1.2,
                label=f"{name}: AURC {float(risk.mean()):.4f}")
    optimal = optimal_risk(n, n - errors)
    coverage = torch.arange(1, n + 1, dtype=torch.float64) / n
    ax.plot(coverage.numpy(), optimal.numpy(), "k--", linewidth=1,
            label=f"perfect ranking: {float(optimal.mean()):.4f}")
    _unit_axes(ax, "coverage", "selective risk (error rate)")
    ax.set_ylim(0, max(0.05, 1.3 * errors / n))
    ax.legend(loc="upper left", fontsize="x-small")
    ax.set_title(title or "risk-coverage", fontsize="small")
    return fig


def select_per_class(labels: Tensor, classes: Sequence[int], per_class: int = 100) -> Tensor:
    """Indices of the first `per_class` samples of each class in `classes` (fewer if the split has fewer)."""
    return torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in classes])


def template_plane(templates: Tensor) -> tuple[Tensor, Tensor]:
    """(origin [D], orthonormal basis [2, D]) of the plane through three class templates [3, D].

    The origin is the templates' centroid; the basis is Gram-Schmidt (QR) of w_2 - w_1, w_3 - w_1.
    """
    if templates.shape[0] != 3:
        raise ValueError(f"the plane needs exactly 3 templates; got {templates.shape[0]}")
    w = templates.double()
    q, r = torch.linalg.qr(torch.stack([w[1] - w[0], w[2] - w[0]], dim=1))  # [D, 2]
    if r.diagonal().abs().min() <= 1e-12 * r.abs().max():
        raise ValueError("the three templates are collinear: they span no plane")
    return w.mean(0), q.T


def project_onto_plane(features: Tensor, origin: Tensor, basis: Tensor) -> Tensor:
    """2-D coordinates [N, 2] of the orthogonal projection of features [N, D] onto the plane."""
    return (features.double() - origin) @ basis.T


def penultimate_projection(features: Tensor, labels: Tensor, templates: Tensor, classes: Sequence[int] = (0, 1, 2),
                           class_names: Sequence[str] | None = None, title: str = "") -> "Figure":
    """Müller et al. 2019, Fig. 1: penultimate activations of three classes projected onto the plane
    through their templates (the rows of the last layer's weight, W[k]); templates drawn as stars.

    `features` [N, D] and `labels` [N] are the samples to draw (see select_per_class); `templates`
    is the full [K, D] weight of the last layer. LS pulls each class into a tight, equidistant cluster.
    """
    if len(classes) != 3 or len(set(classes)) != 3:
        raise ValueError(f"penultimate_projection needs three distinct classes; got {list(classes)}")
    if features.ndim != 2 or templates.ndim != 2 or features.shape[1] != templates.shape[1]:
        raise ValueError(f"features [N, D] and templates [K, D] must share D; got {tuple(features.shape)} "
                         f"and {tuple(templates.shape)}")
    origin, basis = template_plane(templates[list(classes)])
    xy = project_onto_plane(features, origin, basis)
    txy = project_onto_plane(templates[list(classes)], origin, basis)
    names = [str(class_names[c]) if class_names is not None else str(c) for c in classes]
    fig = _figure(4.4, 4.2, left=0.14, bottom=0.12, top=0.92)
    ax = fig.subplots()
    for i, c in enumerate(classes):
        pts = xy[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6, color=f"C{i}", label=f"{names[i]} ({len(pts)})")
        ax.scatter(txy[i, 0], txy[i, 1], s=160, marker="*", color=f"C{i}", edgecolor="black", linewidth=0.8)
    ax.set(xlabel="plane axis 1", ylabel="plane axis 2", aspect="equal")
    ax.margins(0.08)
    ax.legend(fontsize="small", markerscale=2)
    ax.set_title(title or "penultimate layer, plane through the class templates (stars)", fontsize="small")
    return fig


# --- all figures of a run ----------------------------------------------------------------------


class FigureLogger(Protocol):
    def log_figure(self, tag: str, figure: "Figure", step: int = 0) -> None: ...


@dataclass
class SplitFigures:
    """What the end-of-run figures of one split are drawn from."""

    logits: Tensor  # [N, K], before temperature scaling
    labels: Tensor  # [N]
    n_bins: int
    temperature: float | None = None
    # (features [n, D], their labels [n], last-layer weight [K, D], three classes), or None
    penultimate: tuple[Tensor, Tensor, Tensor, Sequence[int]] | None = None
    class_names: Sequence[str] | None = None
    title: str = ""
    scores: dict[str, Tensor] | None = None  # extra confidence scores for risk_coverage.png, by legend name


def write_figures(logger: FigureLogger, run_dir: Path, split: SplitFigures) -> list[str]:
    """The end-of-run figures of one split (the test split in finish.finish): each goes to
    TensorBoard under `test/...` or `test_ts/...` and to `<run_dir>/<name>.png`, drawn once.
    Returns the PNG file names written.
    """
    logits, labels, n_bins = split.logits, split.labels, split.n_bins
    temperature, title = split.temperature, split.title
    class_names, penultimate = split.class_names, split.penultimate
    figs: dict[str, tuple[str, Callable[[], "Figure"]]] = {  # file name: (TensorBoard tag, builder)
        "reliability_test": ("test/reliability", lambda: reliability_diagram(
            logits, labels, n_bins, "test, before temperature scaling")),
        "confidence_hist": ("test/confidence_hist", lambda: confidence_histogram(
            logits, labels, n_bins, temperature, f"test confidence, {title}" if title else "test confidence")),
        "risk_coverage": ("test/risk_coverage", lambda: risk_coverage_curve(
            logits, labels, temperature, f"test risk-coverage, {title}" if title else "test risk-coverage",
            split.scores)),
    }
    if temperature is not None:
        figs["reliability_test_ts"] = ("test_ts/reliability", lambda: reliability_diagram(
            logits / temperature, labels, n_bins, f"test, after temperature scaling (T = {temperature:.3g})"))
    if penultimate is not None:
        feats, feat_labels, weight, classes = penultimate
        figs["penultimate"] = ("test/penultimate", lambda: penultimate_projection(
            feats, feat_labels, weight, classes, class_names, f"test penultimate layer, {title}" if title else ""))
    for name, (tag, build) in figs.items():
        fig = build()
        logger.log_figure(tag, fig)  # draws the figure once on its Agg canvas ...
        save_png(fig, run_dir / f"{name}.png")  # ... and the PNG reuses those pixels
    return [f"{name}.png" for name in figs]
