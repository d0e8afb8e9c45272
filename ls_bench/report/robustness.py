"""The sweep report's evaluation sections (eval.*): selective classification, shift by severity,
OOD detection. Each section appears only when some finished run has its metrics; the numbers are
the same mean ± std [95% CI] over seeds, with the same paired differences, as the main table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ls_bench.config import POSTHOC, SCORES
from ls_bench.report.runs import RunResult, numeric_keys
from ls_bench.report.stats import LEVEL, Baseline, Group, build_groups, value_label
from ls_bench.report.tables import md_table, tables

SELECTIVE = ("test/aurc", "test/eaurc", "test/risk_cov80", "test_ts/aurc", "test/ece_lo", "test/ece_hi",
             "test/ece_floor", "test/dece", "test/smece")
# per severity: shift/s<k>/<key>; *_floor: what a calibrated model scores on as few images (selective.ece_floor)
SHIFT = ("acc", "nll", "ece", "ece_floor", "ts_ece", "ts_ece_floor")
POSTHOC_KEYS = ("acc", "nll", "ece", "aurc")  # per post-hoc method: test_<m>/<key>
SCORE_KEYS = ("aurc", "augrc", "cov_at_5risk")  # per selective score: test/<score>/<key>
# eval.representation: the penultimate features of the test split, and of the classes data.classes left out
REPRESENTATION = (*(f"test/repr/{k}" for k in ("class_separation", "within_between", "logit_spread", "knn_acc")),
                  *(f"held_out/repr/{k}" for k in ("transfer_acc", "class_separation", "within_between", "knn_acc")))
HUMAN = tuple(f"{s}/human/{k}" for s in ("test", "test_ts") for k in ("nll", "kl", "entropy_corr", "top1_agree")
              if not (s == "test_ts" and k == "top1_agree"))  # eval.human (T keeps the argmax: no test_ts top1)
# data.imbalance (ls_bench.evaluate.classwise): the classes in thirds by training count; TS keeps the argmax,
# so accuracy is shown once
IMBALANCE = (*(f"test/{g}_acc" for g in ("head", "medium", "tail")),
             *(f"{s}/{g}_cwece" for s in ("test", "test_ts") for g in ("head", "medium", "tail")))


def section_metrics(runs: Sequence[RunResult]) -> dict[str, list[str]]:
    """{section title: the final.json keys it shows}, for the sections some finished run has."""
    keys = numeric_keys(runs)
    severities = sorted({int(m.group(1)) for k in keys if (m := re.fullmatch(r"shift/s(\d+)/acc", k))})
    sections = {
        "Selective classification and ECE's own uncertainty": [k for k in SELECTIVE if k in keys],
        "Shift: mean over the corruptions, by severity": [f"shift/s{s}/{key}" for s in severities for key in SHIFT
                                                          if f"shift/s{s}/{key}" in keys],
        "OOD detection (AUROC, in-distribution positive)": sorted(k for k in keys if re.fullmatch(r"ood/.+/auroc", k)),
        # only with a method besides ts (metrics.posthoc, ls-bench-eval): today's reports stay as they were
        "Post-hoc calibration (fitted on val; uncalibrated: test/*)": [
            f"test_{m}/{key}" for m in POSTHOC for key in POSTHOC_KEYS if f"test_{m}/{key}" in keys]
        if any(k.startswith(tuple(f"test_{m}/" for m in POSTHOC if m != "ts")) for k in keys) else [],
        "Selective scores (metrics.scores)": [f"test/{s}/{key}" for s in SCORES for key in SCORE_KEYS
                                               if f"test/{s}/{key}" in keys],
        "Human uncertainty (eval.human: the model against CIFAR-10H's label distributions)": [
            k for k in HUMAN if k in keys],
        "Representation (eval.representation: the penultimate features)": [k for k in REPRESENTATION if k in keys],
        "Class imbalance (head / medium / tail: thirds of the classes by training count)": [
            k for k in IMBALANCE if k in keys],
    }
    return {title: ks for title, ks in sections.items() if ks}


def _floor_line(ax, groups: Sequence[Group], key: str) -> bool:
    """The ECE floor of `key` (mean over settings and seeds) as a dashed line: ECEs near it are noise."""
    floors: dict[int, list[float]] = {}
    for g in groups:
        for name, s in g.stats.items():
            if (m := re.fullmatch(rf"shift/s(\d+)/{key}_floor", name)) and s.mean is not None:
                floors.setdefault(int(m.group(1)), []).append(s.mean)
    if floors:
        k = sorted(floors)
        ax.plot(k, [sum(floors[i]) / len(floors[i]) for i in k], "k--", linewidth=1, label="calibrated model's floor")
    return bool(floors)


def markdown_sections(runs: Sequence[RunResult], baseline: Baseline) -> tuple[list[str], dict[str, list[Group]]]:
    """Markdown lines of every section, and each section's groups (for the plots)."""
    lines: list[str] = []
    grouped: dict[str, list[Group]] = {}
    for title, metrics in section_metrics(runs).items():
        groups, keys = build_groups(runs, metrics, baseline)
        grouped[title] = groups
        head, rows, dhead, drows = tables(groups, keys, metrics, with_ci=True, base_label=baseline.label)
        lines += ["", f"## {title}", "", md_table(head, rows)]
        if drows:
            lines += ["", f"Paired difference to {baseline.label} on the same seed: mean ± {LEVEL:.0%} CI "
                          f"half-width.", "", md_table(dhead, drows)]
    return lines, grouped


def plot_shift(groups: Sequence[Group], path: Path) -> bool:
    """shift_vs_severity.png: accuracy, ECE and ECE after temperature scaling against severity,
    mean over seeds with 95% CI bars, a line per setting (ε and the other varying keys)."""
    from matplotlib.figure import Figure


    panels = ("acc", "ece", "ts_ece")
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    drawn = False
    for ax, key in zip(axes, panels):
        for g in groups:
            pts = sorted((int(m.group(1)), s) for name, s in g.stats.items()
                         if (m := re.fullmatch(rf"shift/s(\d+)/{key}", name)) and s.mean is not None)
            if pts:
                drawn = True
                label = ", ".join(f"{k}={value_label(v)}" for k, v in g.labels.items())
                ax.errorbar([k for k, _ in pts], [s.mean for _, s in pts], yerr=[s.ci or 0.0 for _, s in pts],
                            marker="o", capsize=3, label=label)
        drawn |= _floor_line(ax, groups, key)
        ax.set(xlabel="severity", ylabel=key, title={"acc": "accuracy", "ece": "ECE", "ts_ece":
                                                     "ECE after TS (T from clean val)"}[key])
        ax.grid(alpha=0.3)
    if not drawn:
        return False
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", fontsize="small", ncols=min(4, len(names)))
    fig.suptitle("corrupted test split: mean over corruptions and seeds, error bars 95% CI")
    fig.savefig(path, dpi=110)
    return True
