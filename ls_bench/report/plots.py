"""The sweep report's figures: metrics against ε, reliability diagrams of the pooled seeds, and
training curves from metrics.jsonl (matplotlib's Figure, no pyplot state)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from ls_bench.report.runs import RunResult
from ls_bench.report.stats import EPSILON_KEY, LEVEL, Group, value_label

PLOT_METRICS = ("test/acc", "test/nll", "test/ece", "test_ts/ece")  # metrics_vs_epsilon.png, by default
CURVES = ("train/loss", "train/acc", "val/acc")  # per-epoch keys of metrics.jsonl for training_curves.png



def _eps_label(value: Any) -> str:
    return f"{float(value):g}" if _is_number(value) else str(value)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):  # a class-wise ε list (issue 24)
        return False
    return True

def _other_label(labels: dict[str, Any]) -> str:
    return ", ".join(f"{k}={value_label(v)}" for k, v in labels.items() if k != EPSILON_KEY)


def plot_metrics(groups: Sequence[Group], metrics: Sequence[str], path: Path, all_of_them: bool = False) -> None:
    """Each metric against ε, one line per setting of the other varying keys; bars: 95% CI.
    Plots PLOT_METRICS out of `metrics`, or every one of them with `all_of_them`."""
    from matplotlib.figure import Figure

    metrics = list(metrics) if all_of_them else [m for m in PLOT_METRICS if m in metrics] or list(metrics)
    fig = Figure(figsize=(4 * len(metrics), 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    lines: dict[str, list[Group]] = {}
    for g in groups:
        lines.setdefault(_other_label(g.labels), []).append(g)
    for ax, m in zip(axes, metrics):
        for label, gs in lines.items():
            pts = [(float(g.labels[EPSILON_KEY]), g.stats[m]) for g in gs
                   if g.stats[m].mean is not None and _is_number(g.labels[EPSILON_KEY])]  # a class-wise list: no x
            if pts:
                ax.errorbar([x for x, _ in pts], [s.mean for _, s in pts], yerr=[s.ci or 0.0 for _, s in pts],
                            marker="o", capsize=3, label=label or None)
        ax.set(xlabel="ε (loss.epsilon)", ylabel=m, title=m)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if names:  # only when something besides ε varies
        fig.legend(handles, names, loc="outside lower center", fontsize="small")
    fig.suptitle(f"mean over seeds, error bars: {LEVEL:.0%} CI (Student t)")
    fig.savefig(path, dpi=110)


def pooled_bins(runs: Sequence[RunResult], split: str = "test") -> tuple[dict[str, list[float]], float, int] | None:
    """Reliability-diagram bins of the runs' saved predictions pooled together; also the pooled ECE."""
    import torch

    from ls_bench.evaluate.metrics import calibration_bins, confidence_correct, ece

    saved = [p for r in runs if (p := r.predictions(split)) is not None]
    logits, labels = [z for z, _ in saved], [y for _, y in saved]
    if not logits:
        return None
    conf, correct = confidence_correct(torch.cat(logits), torch.cat(labels))
    n_bins = int(runs[0].config.get("metrics.n_bins", 15))
    return calibration_bins(conf, correct, n_bins), ece(conf, correct, n_bins), len(logits)


def plot_reliability(groups: Sequence[Group], path: Path) -> bool:
    """Grid of reliability diagrams on the test split: a row per other setting, a column per ε."""
    from matplotlib.figure import Figure

    from ls_bench.evaluate.figures import draw_reliability

    rows: dict[str, dict[float, Group]] = {}
    for g in groups:
        if g.done and _is_number(g.labels[EPSILON_KEY]):  # a class-wise ε list has no column
            rows.setdefault(_other_label(g.labels), {})[float(g.labels[EPSILON_KEY])] = g
    eps = sorted({e for r in rows.values() for e in r})
    if not eps:
        return False
    fig = Figure(figsize=(max(6.0, 2.8 * len(eps)), 2.9 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), len(eps), squeeze=False, sharex=True, sharey=True)
    for i, (label, by_eps) in enumerate(rows.items()):
        for j, e in enumerate(eps):
            ax = axes[i][j]
            got = pooled_bins(by_eps[e].done) if e in by_eps else None
            if got is None:
                ax.set_axis_off()
                continue
            bins, ece, n = got
            draw_reliability(ax, bins, counts=False)
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
            ax.set_title(f"ε={e:g}: ECE {ece:.4f}\n{n} seed{'s' * (n > 1)} pooled", fontsize="small")
            if j == 0 and label:  # the row's setting, one key per line
                ax.set_ylabel(label.replace(", ", "\n") + "\naccuracy", fontsize="small")
    fig.suptitle("test reliability: seeds pooled, before temperature scaling", fontsize="medium")
    fig.savefig(path, dpi=110)
    return True


def mean_curves(runs: Sequence[RunResult], keys: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """Each key per epoch from the runs' metrics.jsonl (each file read once), averaged over the
    runs at the epochs all of them logged; keys that no run logged are left out."""
    from ls_bench.logs import read_jsonl

    logs = [read_jsonl(r.dir / "metrics.jsonl") if (r.dir / "metrics.jsonl").exists() else [] for r in runs]
    out = {}
    for key in keys:
        per_run = [c for rows in logs
                   if (c := {row["epoch"]: float(row[key]) for row in rows if isinstance(row.get(key), (int, float))})]
        if per_run:
            epochs = sorted(set.intersection(*(set(c) for c in per_run)))
            out[key] = (epochs, [statistics.fmean(c[e] for c in per_run) for e in epochs])
    return out


def plot_curves(groups: Sequence[Group], path: Path, keys: Sequence[str] = CURVES) -> bool:
    """Training curves from metrics.jsonl: a row per other setting, a column per key, a line per
    ε (mean over the finished seeds). Shows whether a schedule trained to a plateau."""
    from matplotlib.figure import Figure

    rows: dict[str, list[Group]] = {}
    for g in groups:
        if g.done:
            rows.setdefault(_other_label(g.labels), []).append(g)
    if not rows:
        return False
    fig = Figure(figsize=(4.2 * len(keys), 3.0 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(keys), squeeze=False)
    for i, (label, gs) in enumerate(rows.items()):
        curves = [(g, mean_curves(g.done, keys)) for g in gs]
        for j, key in enumerate(keys):
            ax = axes[i][j]
            for g, by_key in curves:
                if key in by_key:
                    ax.plot(*by_key[key], label=f"ε={_eps_label(g.labels[EPSILON_KEY])}")
            if key.endswith("loss"):
                ax.set_yscale("log")
            ax.set(xlabel="epoch", title=f"{key}\n{label}" if label else key)
            ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    if names:
        fig.legend(handles, names, loc="outside lower center", ncols=len(names), fontsize="small")
    fig.suptitle("training curves (metrics.jsonl), mean over seeds", fontsize="medium")
    fig.savefig(path, dpi=110)
    return True
